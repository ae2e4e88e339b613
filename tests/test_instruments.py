"""Instrument files and scoring, on respondents computed by hand.

The fidelity paper's released scoring code had index and logic errors, so every
rule is checked here against numbers worked out on paper: item ids (not
positions) pick the items, an item may sit in two subscales, reverse coding uses
the scale's own ends, rescaling maps the scale's ends to the target's, flags
compare the scored value, and rules combine flags with any/all.
"""

from __future__ import annotations

import pytest
from conftest import SHARED

from cci_local.evaluate.instruments import (
    InstrumentError,
    aggregate,
    item_value,
    load_instrument,
    load_item_bank,
    score,
)

BANK = SHARED / "instruments" / "eating_disorder_items.csv"
DAYS = "ABCDEFG"  # the EDE-Q's 0-6 scales: letter A is 0, G is 6


@pytest.fixture(scope="module")
def edeq():
    return load_instrument("edeq", BANK)


@pytest.fixture(scope="module")
def wc():
    return load_instrument("weight-concerns")


def test_edeq_texts_come_from_the_item_bank(edeq):
    bank = load_item_bank(BANK)
    assert len(edeq.items) == 28
    assert edeq.item("EDEQ11").text == bank["EDEQ11"] == "Have you felt fat?"
    assert edeq.scale_of("EDEQ20").options[6].text == "Every time"
    assert edeq.scale_of("EDEQ13").kind == "count"


def test_edeq_subscales_and_global_by_hand(edeq):
    # Item i (1-28) answered with value i % 7; counts (13-18) answered too, unused.
    raw = {f"EDEQ{i}": float(i % 7) for i in range(1, 29)}
    s = score(edeq, raw)
    # Restraint 1-5: 1 2 3 4 5 -> 3.
    assert s.subscales["Restraint"] == pytest.approx(3.0)
    # Eating Concern 7, 9, 19, 20, 21: 0 2 5 6 0 -> 13/5.
    assert s.subscales["Eating Concern"] == pytest.approx(2.6)
    # Shape Concern 6, 8, 10, 11, 23, 26, 27, 28: 6 1 3 4 2 5 6 0 -> 27/8.
    assert s.subscales["Shape Concern"] == pytest.approx(3.375)
    # Weight Concern 8, 12, 22, 24, 25: 1 5 1 3 4 -> 14/5 (item 8 is in both).
    assert s.subscales["Weight Concern"] == pytest.approx(2.8)
    assert s.global_score == pytest.approx((3 + 2.6 + 3.375 + 2.8) / 4)
    assert s.flags == {"global >= 4": False} and s.rules == {"clinical range": False}
    high = score(edeq, {k: 6.0 if k not in {f"EDEQ{i}" for i in range(13, 19)} else 0.0
                        for k in raw})
    assert high.global_score == 6 and high.rules == {"clinical range": True}
    # A missing subscale item is an error, not a silently shorter mean.
    with pytest.raises(ValueError, match="subscale Restraint: no answer to EDEQ3"):
        score(edeq, {k: v for k, v in raw.items() if k != "EDEQ3"})
    with pytest.raises(ValueError, match="does not have"):
        score(edeq, raw | {"EDEQ99": 1.0})


def test_screener_style_rescaling_reverse_coding_and_flags(wc):
    compare, diet, importance, satisfaction = (wc.scale_of(i) for i in ("WC1", "WC3", "WC4",
                                                                         "WC6"))
    assert [o.letter for o in compare.options] == list("ABCDE")
    # Respondent 1 by hand (rescaled to 0-100 on each item's own scale):
    #   WC1 C = 3 on 1-5 -> 50;  WC2 E = 5 on 1-5 -> 100;  WC3 A = 1 on 1-4 -> 0;
    #   WC4 B = 2 on 1-4 -> 33.33;  WC5 D = 4 on 1-5 -> 75;
    #   WC6 A = 1 (very dissatisfied), reversed to 5 on 1-5 -> 100;
    #   WC = 358.33 / 6 = 59.72 >= 47; LOC1 = 2 < 4.
    letters = {"WC1": "C", "WC2": "E", "WC3": "A", "WC4": "B", "WC5": "D", "WC6": "A"}
    raw = {i: wc.scale_of(i).value(k) for i, k in letters.items()} | {"LOC1": 2.0}
    s = score(wc, raw)
    assert s.items["WC4"] == pytest.approx(100 / 3) and s.items["WC6"] == pytest.approx(100)
    assert s.subscales["WC"] == pytest.approx((50 + 100 + 0 + 100 / 3 + 75 + 100) / 6)
    assert s.global_score == pytest.approx(s.subscales["WC"])
    assert s.flags == {"high weight concern": True, "loss-of-control eating": False}
    assert s.rules == {"likely eating disorder": True}
    # Respondent 2: no weight concern at all (WC6 "very satisfied" reverses to 0), but
    # loss-of-control eating on 6 occasions: the other flag fires the same rule.
    calm = {i: wc.scale_of(i).value("A") for i in letters} | {"WC6": 5.0, "LOC1": 6.0}
    s2 = score(wc, calm)
    assert s2.subscales["WC"] == 0
    assert s2.flags == {"high weight concern": False, "loss-of-control eating": True}
    assert s2.rules == {"likely eating disorder": True}
    # Respondent 3: right at the threshold fires (>=), just below does not.
    assert item_value(wc, "WC3", diet.value("B")) == pytest.approx(100 / 3)
    assert item_value(wc, "WC6", satisfaction.value("C")) == pytest.approx(50)
    assert importance.low == 1 and importance.high == 4


def test_all_rule_and_count_flags(tmp_path):
    path = tmp_path / "both.toml"
    path.write_text("""
name = "both"
[scales.yn]
options = [{text = "No", value = 0}, {text = "Yes", value = 1}]
[[items]]
id = "a"
text = "A?"
scale = "yn"
[[items]]
id = "b"
text = "B?"
scale = "yn"
[[flags]]
name = "a"
score = "a"
op = "=="
threshold = 1
[[flags]]
name = "b"
score = "b"
op = "=="
threshold = 1
[[rules]]
name = "both"
all = ["a", "b"]
[[rules]]
name = "either"
any = ["a", "b"]
""")
    inst = load_instrument(path)
    assert score(inst, {"a": 1, "b": 0}).rules == {"both": False, "either": True}
    assert score(inst, {"a": 1, "b": 1}).rules == {"both": True, "either": True}
    assert score(inst, {"a": 0, "b": 0}).rules == {"both": False, "either": False}


def test_aggregating_repeated_administrations(wc, edeq):
    # Majority option; a tie goes to the lower value (C=3 vs D=4 twice each).
    assert aggregate(wc, "WC1", ["C", "D", "D", "C", "A"]) == 3
    assert aggregate(wc, "WC1", ["E", "E", "A"]) == 5
    assert aggregate(wc, "WC1", ["E", "E", "A"], how="mean") == pytest.approx(11 / 3)
    # Counts average; distributions by their expected value.
    assert aggregate(wc, "LOC1", [2, 3, 10]) == pytest.approx(5)
    assert aggregate(edeq, "EDEQ1", [{"A": 0.5, "G": 0.5}, {"B": 1.0}]) == pytest.approx(2)
    with pytest.raises(ValueError, match="no answers"):
        aggregate(wc, "WC1", [])


def test_instrument_errors_name_the_place(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("""
name = "bad"
[scales.yn]
options = [{text = "No", value = 0}]
[scales.ok]
options = [{text = "No", value = 0}, {text = "Yes", value = 1}]
[[items]]
id = "q1"
scale = "ok"
text = "Q1?"
[[items]]
id = "q2"
scale = "missing"
text = "Q2?"
[subscales.S]
items = ["q1", "q9"]
[[flags]]
name = "f"
score = "T"
op = ">="
threshold = 1
""")
    with pytest.raises(InstrumentError) as e:
        load_instrument(bad)
    message = str(e.value)
    assert f"{bad}: scales.yn: Value error, a choice scale needs 2 to 26 options, not 1" \
        in message
    bad.write_text(bad.read_text().replace("options = [{text = \"No\", value = 0}]\n",
                                           "options = [{text = \"No\", value = 0}, "
                                           "{text = \"Yes\", value = 1}]\n", 1))
    with pytest.raises(InstrumentError) as e:
        load_instrument(bad)
    message = str(e.value)
    for what in ("item q2: no scale 'missing'", "subscale S: no item 'q9'",
                 "flag 'f': no score 'T'"):
        assert what in message
    typo = tmp_path / "typo.toml"
    typo.write_text('name = "t"\n[scales.ok]\noptions = [{text = "a", value = 0}, '
                    '{text = "b", value = 1}]\n[[items]]\nid = "q1"\nscale = "ok"\n'
                    'text = "Q?"\nrevers = true\n')
    with pytest.raises(InstrumentError, match=r"items.0.revers \(id q1\): Extra inputs"):
        load_instrument(typo)
    no_text = tmp_path / "no_text.toml"
    no_text.write_text('name = "t"\n[scales.ok]\noptions = [{text = "a", value = 0}, '
                       '{text = "b", value = 1}]\n[[items]]\nid = "EDEQ1"\nscale = "ok"\n')
    with pytest.raises(InstrumentError, match="items EDEQ1 have no text: give the item bank"):
        load_instrument(no_text)
    assert load_instrument(no_text, BANK).items[0].text.startswith("Have you been")
    with pytest.raises(InstrumentError, match="not TOML"):
        (tmp_path / "x.toml").write_text("name = ")
        load_instrument(tmp_path / "x.toml")
    with pytest.raises(InstrumentError, match="nor a shipped instrument"):
        load_instrument("nonesuch")
