"""The survey verdict in words (evaluate/verdict.py) and SimBench's TV score, on
answers whose outcome is known."""

from __future__ import annotations

import pytest

from cci_local.evaluate.items import Item
from cci_local.evaluate.metrics import Estimate, simbench_score
from cci_local.evaluate.power import min_detectable_difference, questions_needed
from cci_local.evaluate.survey import Answer, SurveyResult
from cci_local.evaluate.verdict import community_verdict, compare


def result_with(keys: list[str], chosen: dict[str, list[str]]) -> SurveyResult:
    items = [Item(f"q{i}", f"Question {i}?", {"A": "a", "B": "b", "C": "c", "D": "d"},
                  {"liberal": k}) for i, k in enumerate(keys)]
    answers = {r: {f"q{i}": Answer(c, {c: 1.0}, "logprobs") for i, c in enumerate(letters)}
               for r, letters in chosen.items()}
    return SurveyResult("test", items, answers, [])


def test_no_claim_when_the_interval_includes_zero():
    assert compare("aligned", "persona", Estimate(0.12, 0.04, 0.20, 40)) == \
        "aligned beats persona by 0.12 [0.04, 0.20]"
    assert compare("aligned", "persona", Estimate(-0.1, -0.2, -0.03, 40)) == \
        "persona beats aligned by 0.10 [0.03, 0.20]"
    text = compare("aligned", "persona", Estimate(0.05, -0.02, 0.12, 40))
    assert "not distinguishable" in text and "beats" not in text and "includes 0" in text


def test_a_respondent_that_knows_the_key_beats_everything():
    keys = list("ABCD" * 10)
    other = ["B" if k == "A" else "A" for k in keys]  # never right
    r = result_with(keys, {"base": ["A"] * 40, "persona:liberal": other,
                           "aligned:liberal": keys})
    lines = community_verdict(r, "liberal")["lines"]
    assert lines[0].startswith("r/liberal (40 questions): beats always answering the most "
                               "common letter (A, 0.25): aligned:liberal by 0.75")
    assert lines[1] == ("r/liberal (40 questions): worse than always answering the most common "
                        "letter (A, 0.25): persona:liberal by 0.25 [0.12, 0.40]")
    assert lines[2].startswith("r/liberal (40 questions): not distinguishable from always "
                               "answering the most common letter (the interval includes 0): "
                               "base +0.00")
    assert any("aligned beats persona by 1.00 [1.00, 1.00]" in line for line in lines)
    assert any("base beats persona by 0.25" in line for line in lines)  # base: right 1 in 4
    assert not any("changed no answer" in line for line in lines)


def test_a_letter_habit_is_worse_than_the_majority_and_below_random():
    # the key always answers C, a letter this respondent rarely picks
    keys = ["C"] * 30
    r = result_with(keys, {"base": ["A"] * 27 + ["C"] * 3})
    v = community_verdict(r, "liberal")
    assert v["lines"][0].startswith("r/liberal (30 questions): worse than always answering "
                                    "the most common letter (C, 1.00): base by 0.90")
    assert not any("distinguishable" in line for line in v["lines"])
    below = v["lines"][1]
    assert below.startswith("r/liberal (30 questions): base is below random (0.10 against "
                            "chance 0.25")
    assert "90% of its answers are A, a letter habit" in below and "--scoring text" in below
    assert v["comparisons"]["base - random"]["high"] < 0


def test_always_the_same_letter_is_indistinguishable_and_an_idle_persona_is_flagged():
    keys = list("AABACADA" * 3)
    r = result_with(keys, {"base": ["A"] * 24, "persona:liberal": ["A"] * 24})
    v = community_verdict(r, "liberal")
    assert v["lines"][0] == ("r/liberal (24 questions): no respondent is distinguishable from "
                             "always answering the most common letter (A, accuracy 0.62)")
    assert "persona and base are not distinguishable" in v["lines"][1]
    assert v["lines"][2].endswith("the persona prompt changed no answer of the base model")
    assert v["persona_changes_nothing"] is True


def test_simbench_score():
    human = [[0.7, 0.1, 0.1, 0.1]]
    assert simbench_score(human, human).value == pytest.approx(100)
    assert simbench_score([[0.25] * 4], human).value == pytest.approx(0)
    assert simbench_score([[0, 1, 0, 0]], human).value < 0  # worse than uniform
    assert simbench_score([[0.25] * 4], [[0.25] * 4]).n == 0  # uniform humans: no room


def test_the_report_shows_only_the_communities_it_covers(tmp_path):
    """A survey of r/keto and r/nutrition, reported for r/keto alone: r/keto's answer key
    and verdict, not r/nutrition's."""
    from cci_local.report import write_report
    from cci_local.store import ensure_community, open_store, save_result

    db = open_store(tmp_path / "s.db")
    for c in ("keto", "nutrition"):
        ensure_community(db, c)
    est = {"value": 0.5, "low": 0.3, "high": 0.7, "n": 10}
    key = {"questions": 10, "respondents": {"base": {
        "accuracy": est, "discriminating": est, "representativeness": None}},
        "majority_letter": est, "random": 0.25}
    save_result(db, "survey", ["keto", "nutrition"], {"base": "embedded"}, {
        "source": "survey s", "scoring": "letter", "items": 10, "notes": [],
        "communities": {"keto": key, "nutrition": key},
        "verdict": [{"community": c, "questions": 10, "lines": [f"r/{c}: nothing beats chance"]}
                    for c in ("keto", "nutrition")]})
    path = tmp_path / "report.md"
    write_report(db, path, "md", communities=["keto"])
    text = path.read_text()
    assert "r/keto: nothing beats chance" in text and "| r/keto | base |" in text
    assert "r/nutrition" not in text
    write_report(db, path, "md")
    assert "r/nutrition: nothing beats chance" in path.read_text()


def test_each_comparison_says_what_its_questions_can_show():
    # aligned and persona split on half of 40 questions: Connor's MDD at p_d = 0.5;
    # persona and base never split: priced at the assumed share, and said so
    keys = list("ABCD" * 10)
    half = [k if i % 2 else ("B" if k == "A" else "A") for i, k in enumerate(keys)]
    r = result_with(keys, {"base": half, "persona:liberal": half, "aligned:liberal": keys})
    rows = {row["comparison"]: row for row in community_verdict(r, "liberal")["power"]}
    assert list(rows)[:2] == ["persona:liberal - base", "aligned:liberal - persona:liberal"]
    split = rows["aligned:liberal - persona:liberal"]
    assert split["questions"] == 40 and split["discordance"] == 0.5
    assert split["min_detectable"] == round(min_detectable_difference(40, 0.5), 3)
    assert split["questions_needed"] == questions_needed(0.10, 0.5)
    same = rows["persona:liberal - base"]
    assert same["discordance"] == 0.0 and same["discordance_used"] == 0.5
    assert {f"{r} - majority letter" for r in ("base", "persona:liberal",
                                               "aligned:liberal")} <= set(rows)
    more = result_with(keys * 4, {"base": half * 4})  # the same answers, 4 times the questions
    bigger = {row["comparison"]: row for row in community_verdict(more, "liberal")["power"]}
    small, big = rows["base - majority letter"], bigger["base - majority letter"]
    assert big["discordance"] == small["discordance"]
    assert small["min_detectable"] / 2.2 < big["min_detectable"] < small["min_detectable"] / 1.8
