"""The Python API (cci_local.open -> Study, study.frames) is the path the commands
take: a stage called from Python leaves exactly what the command would, so the
command finds it done; and its results come back as DataFrames.  The embedded
model is real; the survey file is written here, built so that the embedded model's
letter habit decides the verdict (a key that always answers B, a letter it picks
rarely)."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import CORPUS_2022, cci

import cci_local

QUESTIONS = [
    ("How often do you eat bread?", "Never;Sometimes;Often;Always"),
    ("What matters most in a diet?", "Protein;Fibre;Calories;Taste"),
    ("Which drink do you have with breakfast?", "Coffee;Tea;Juice;Water"),
    ("How do you feel about counting calories?", "Useful;Tedious;Harmful;Unsure"),
    ("Which fat do you cook with?", "Butter;Olive oil;Coconut oil;None"),
    ("How many meals do you eat a day?", "One;Two;Three;More than three"),
    ("What do you snack on?", "Nuts;Fruit;Cheese;Chips"),
    ("Where do you get nutrition advice?", "Doctors;Reddit;Books;Friends"),
    ("How often do you exercise?", "Daily;Weekly;Rarely;Never"),
    ("What is your view of sugar?", "Avoid it;Limit it;Enjoy it;Not sure"),
    ("Which grain do you eat most?", "Rice;Wheat;Oats;None"),
    ("How do you track your weight?", "Scale;Clothes fit;Photos;I do not"),
    ("What sweetener do you use?", "Sugar;Honey;Stevia;None"),
    ("How long have you followed your diet?", "Weeks;Months;Years;I do not diet"),
    ("Which vegetable do you eat most?", "Spinach;Broccoli;Potatoes;Carrots"),
    ("How do you see fruit?", "Healthy;Too sugary;Fine in moderation;Not sure"),
    ("What breaks a fast for you?", "Any calories;Sugar;Milk in coffee;Nothing"),
    ("Which protein do you eat most?", "Beef;Chicken;Fish;Beans"),
    ("How much water do you drink a day?", "Under a litre;1-2 litres;Over 2 litres;Unsure"),
    ("What is your main goal?", "Weight loss;Health;Performance;Habit"),
    ("How often do you eat out?", "Never;Monthly;Weekly;Daily"),
    ("What do you think of supplements?", "Essential;Sometimes useful;A waste;Unsure"),
    ("How do you feel after a cheat meal?", "Guilty;Fine;Sick;Happy"),
    ("Which diet have you tried?", "Keto;Vegan;Paleo;None"),
]


@pytest.fixture
def all_b(tmp_path):
    path = tmp_path / "all_b.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "question", "options", "ordinal", "r/keto"])
        for i, (question, options) in enumerate(QUESTIONS):
            writer.writerow([f"q{i}", question, options, "no", "B"])
    return path


def _favourite_share(result) -> float:
    chosen = [a.chosen for a in result.answers["base"].values()]
    return max(chosen.count(letter) for letter in "ABCD") / len(chosen)


def test_a_letter_habit_is_named_and_permuting_the_orders_breaks_it(tmp_path, all_b):
    study = cci_local.open(tmp_path / "study.db")
    plain = study.survey(survey_file=all_b, persona=False, aligned=False)
    lines = [line for v in study.frames.verdicts()["sentences"].unique()
             for line in v.split(" | ")]
    accuracy = plain.scores("base", "keto")
    assert accuracy.high < 0.25  # the embedded model rarely says B
    assert any("worse than always answering the most common letter (B, 1.00)" in line
               for line in lines)
    habit = next(line for line in lines if "is below random" in line)
    assert f"{_favourite_share(plain):.0%} of its answers are" in habit
    assert "--scoring text" in habit

    permuted = study.survey(survey_file=all_b, persona=False, aligned=False, permute=4)
    # summed over 4 cyclic orders each option sat at every letter once: the habit
    # no longer picks the answer, and the answers spread over the options
    assert _favourite_share(permuted) < _favourite_share(plain) - 0.2
    assert permuted.scores("base", "keto").value > accuracy.value
    stored = study.db.execute("SELECT count(DISTINCT wording), count(*) FROM survey_answers"
                              ).fetchone()
    assert stored == (2, 2 * len(QUESTIONS))  # both kept, each answer once
    # the CLI takes the same path: everything is read back, nothing is asked again
    calls = study.db.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    out = cci("survey", "--survey", str(all_b), "--no-persona", "--no-aligned",
              "--permute", "4", "--json", db=study.path)
    data = json.loads(out.stdout)
    assert data["communities"]["keto"]["respondents"]["base"]["accuracy"]["value"] == \
        pytest.approx(permuted.scores("base", "keto").value)
    assert study.db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == calls
    power = study.frames.power()
    assert set(power["comparison"]) == {"base - majority letter"}
    assert (power["questions"] == len(QUESTIONS)).all()


def test_stages_from_python_are_done_for_the_cli_and_results_are_frames(tmp_path):
    study = cci_local.open(tmp_path / "study.db")
    report = study.ingest(CORPUS_2022)
    assert report.total("added") > 1000
    assert cci("ingest", str(CORPUS_2022), db=study.path).stdout.count("already ingested") >= 2
    summary = study.topics(embedder="tfidf", reducer="pca", n_topics=12)
    assert not summary.reused
    again = cci("topics", "--embedder", "tfidf", "--reducer", "pca", "--topics", "12",
                db=study.path)
    assert "already fitted with these documents and settings" in again.stdout
    docs = study.frames.documents("r/keto")
    assert len(docs) == study.db.execute("SELECT count(*) FROM documents WHERE community ="
                                         " 'keto'").fetchone()[0]
    assert set(docs["community"]) == {"keto"}
    topics = study.frames.topics()
    assert len(topics) == 12 and topics["size"].sum() == summary.n_documents - summary.n_outliers
    with pytest.raises(TypeError, match="unknown options: n_topic"):
        study.topics(n_topic=3)
    study.close()
