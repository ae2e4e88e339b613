"""Administering instruments: aggregation and bootstrap on answers written out by hand,
then the embedded model answering the example instrument for real."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import cci

from cci_local.evaluate.instruments import load_instrument
from cci_local.evaluate.psychometrics import (
    Administration,
    administer_instrument,
    difference,
    item_messages,
    score_administration,
)
from cci_local.llm import get_backend
from cci_local.store import open_store


@pytest.fixture(scope="module")
def wc():
    return load_instrument("weight-concerns")


def hand_administration(wc, letters_by_prefix: list[dict[str, str]], counts: list[float]):
    """One sampled letter per item and persona prefix (as from a backend without
    log-probabilities), and one count per prefix."""
    admin = Administration("hand")
    for p, letters in enumerate(letters_by_prefix):
        for item, letter in letters.items():
            admin.answers.setdefault(item, []).append((p, 0, letter, None, "sampled"))
        admin.answers.setdefault("LOC1", []).append((p, 0, str(counts[p]), None, "sampled"))
    return admin


def test_majority_then_score_and_a_collapsed_interval(wc):
    # Three prefixes; WC1 answered C, C, E -> majority C (3 -> 50); every other item the
    # same under each prefix; LOC1 counts 1, 2, 6 -> mean 3.
    same = {"WC2": "E", "WC3": "A", "WC4": "B", "WC5": "D", "WC6": "A"}
    admin = hand_administration(wc, [{"WC1": "C"} | same, {"WC1": "C"} | same,
                                     {"WC1": "E"} | same], [1, 2, 6])
    scores = score_administration(wc, admin, resamples=400)
    assert scores.point["WC"] == pytest.approx((50 + 100 + 0 + 100 / 3 + 75 + 100) / 6)
    assert scores.administrations == 3 and scores.rules == {"likely eating disorder": True}
    est = scores.estimate("WC")
    # Resamples can only move WC1 between 50 and 100 (majority C or E).
    assert est.low >= scores.point["WC"] - 1e-9
    assert est.high <= scores.point["WC"] + 50 / 6 + 1e-9
    steady = hand_administration(wc, [{"WC1": "C"} | same] * 3, [2, 2, 2])
    flat = score_administration(wc, steady, resamples=200).estimate("WC")
    assert flat.low == flat.value == flat.high


def test_expected_values_from_distributions(wc):
    admin = Administration("lp")
    for p in range(2):
        for item in ("WC1", "WC2", "WC3", "WC4", "WC5", "WC6"):
            scale = wc.scale_of(item)
            dist = {o.letter: 0.0 for o in scale.options}
            dist["A"], dist[scale.options[-1].letter] = 0.5, 0.5
            admin.answers.setdefault(item, []).append((p, 0, "A", dist, "logprobs"))
        admin.answers.setdefault("LOC1", []).append((p, 0, "0", None, "sampled"))
    # Half on each end of every scale: each item's expected value is its midpoint,
    # 50 after rescaling (WC6 reversed: still 50).
    scores = score_administration(wc, admin, resamples=100)
    assert scores.point["WC"] == pytest.approx(50)
    assert scores.rules == {"likely eating disorder": True}  # 50 >= 47


def test_difference_between_respondents(wc):
    same = {"WC2": "A", "WC3": "A", "WC4": "A", "WC5": "A", "WC6": "E"}
    low = hand_administration(wc, [{"WC1": "A"} | same] * 4, [0, 0, 0, 0])
    high = hand_administration(wc, [{"WC1": "E", "WC2": "E", "WC3": "D", "WC4": "D",
                                     "WC5": "E", "WC6": "A"}] * 4, [9, 9, 9, 9])
    a, b = score_administration(wc, high), score_administration(wc, low)
    d, p = difference(a, b, "WC")
    assert d.value == pytest.approx(100) and d.low == d.high == pytest.approx(100) and p == 0
    d, p = difference(a, a, "WC")
    assert d.value == 0 and p == 1


def test_item_messages_put_preamble_options_and_persona(wc):
    messages = item_messages(wc, "WC3", "Answer for yourself.", "You are in r/keto.")
    assert messages[0] == {"role": "system", "content": "You are in r/keto. Answer for yourself."}
    text = messages[1]["content"]
    assert text.startswith("Think about the past month.\nWhen did you last go on a diet")
    assert "D) I am on a diet now\nAnswer with the letter of one option only." in text
    assert item_messages(wc, "LOC1", "", None)[0]["content"].endswith("Answer with a number only.")


def test_the_embedded_model_answers_and_nothing_is_asked_twice(db, wc):
    backend = get_backend("embedded")
    admin = administer_instrument(db, "base", backend, wc, repeats=2)
    calls = backend.calls
    rows = db.execute("SELECT item, method, distribution, answer FROM instrument_answers"
                      ).fetchall()
    # 6 choice items x 6 prefixes read from log-probabilities, the count item sampled
    # twice per prefix.
    assert len(rows) == 6 * 6 + 6 * 2 and calls == len(rows)
    for item, method, dist, answer in rows:
        if item == "LOC1":
            assert method == "sampled" and dist is None and 0 <= float(answer) <= 100
        else:
            assert method == "logprobs" and sum(json.loads(dist).values()) == pytest.approx(1)
    again = administer_instrument(db, "base", backend, wc, repeats=2)
    assert backend.calls == calls and again.answers == admin.answers
    scores = score_administration(wc, admin)
    est = scores.estimate("WC")
    print(f"embedded base on the example instrument: WC {est}, rules {scores.rules}")
    assert 0 <= est.low <= est.value <= est.high <= 100
    assert np.isfinite(scores.draws["WC"]).all()
    backend.close()


@pytest.mark.slow
def test_psychometrics_command_without_adapters(tmp_path):
    from cci_local.store import ensure_community

    store = tmp_path / "p.db"
    db = open_store(store)
    for c in ("keto", "nutrition"):
        ensure_community(db, c)
    first = cci("psychometrics", "r/keto", "r/nutrition", "--instrument", "weight-concerns",
                "--prefixes", "2", db=store).stdout
    assert "scored like a human respondent, 2 persona prefixes" in first
    # 3 respondents x 7 items x 2 prefixes
    rows = db.execute("SELECT id, answer FROM instrument_answers ORDER BY id").fetchall()
    assert len(rows) == 3 * 7 * 2
    out = cci("psychometrics", "r/keto", "r/nutrition", "--instrument", "weight-concerns",
              db=store).stdout
    # The whole pool of 6: the first two prefixes' answers are reused, not asked again.
    again = db.execute("SELECT id, answer FROM instrument_answers ORDER BY id").fetchall()
    assert len(again) == 3 * 7 * 6 and again[:len(rows)] == rows
    print(out)
    assert "r/keto has no adapter on embedded: run `cci-local train r/keto`" in out
    assert "Weight concerns (cci-local example): scored like a human respondent" in out
    for row in ("base", "persona:keto", "persona:nutrition"):
        assert row in out
    assert "differences between communities (persona models)" in out
    data = json.loads(cci("psychometrics", "keto", "nutrition", "--instrument",
                          "weight-concerns", "--json", db=store).stdout)
    wc_keto = data["respondents"]["persona:keto"]["scores"]["WC"]
    assert wc_keto["low"] <= wc_keto["value"] <= wc_keto["high"]
    assert {d["score"] for d in data["differences"]} == {"WC", "global"}
    bad = cci("psychometrics", "keto", "--instrument", "edeq", db=store, check=False)
    assert bad.returncode == 2 and "have no text: give the item bank CSV (--items FILE)" \
        in bad.stderr
