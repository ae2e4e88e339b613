"""A researcher's own survey file: read, checked row by row, stored once, administered."""

from __future__ import annotations

import json

import pytest
from conftest import cci

from cci_local.evaluate.survey_file import (
    SurveyFileError,
    load_survey,
    read_survey_file,
    survey_communities,
    survey_items,
)
from cci_local.store import open_store

GOOD_CSV = """id,question,options,topic,ordinal,r/keto,nutrition
bread,How often do you eat bread?,Never;Sometimes;Often;Always,carbs,yes,A,0.1;0.3;0.4;0.2
fat,Is dietary fat good for you?,Yes;No;It depends,fat,no,0.6;0.3;0.1,20;30;50
sugar,"How often do you eat sugar?",Never;Sometimes;Often;Always,carbs,,A,
"""


def test_csv_letters_and_distributions(tmp_path):
    path = tmp_path / "pew.csv"
    path.write_text(GOOD_CSV)
    name, items = read_survey_file(path)
    assert name == "pew" and [it["item_id"] for it in items] == ["bread", "fat", "sugar"]
    bread, fat, sugar = items
    assert bread["options"] == {"A": "Never", "B": "Sometimes", "C": "Often", "D": "Always"}
    assert bread["answers"] == {"keto": "A", "nutrition": "C"}  # a distribution's top option
    assert bread["distributions"] == {"nutrition": pytest.approx(
        {"A": 0.1, "B": 0.3, "C": 0.4, "D": 0.2})}
    assert fat["distributions"]["nutrition"] == pytest.approx({"A": 0.2, "B": 0.3, "C": 0.5})
    assert fat["answers"] == {"keto": "A", "nutrition": "C"}
    assert not fat["ordinal"] and bread["ordinal"] and sugar["ordinal"]  # default: ordered
    assert sugar["answers"] == {"keto": "A"}  # an empty cell: not asked


def test_every_bad_row_is_named_and_nothing_is_stored(tmp_path, db):
    path = tmp_path / "bad.csv"
    path.write_text(
        "question,options,r/keto,r/nutrition\n"
        "Fine question?,Yes;No,A,B\n"
        "Letter out of range?,Yes;No,C,A\n"
        "Too few shares?,Never;Sometimes;Often,0.5;0.5,A\n"
        "Shares off?,Yes;No,0.7;0.7,A\n"
        ",Yes;No,A,B\n"
        "One option?,Yes,A,A\n"
        "Nobody answers?,Yes;No,,\n"
        "Same options?,Yes;Yes,A,B\n")
    with pytest.raises(SurveyFileError) as e:
        load_survey(db, path)
    message = str(e.value)
    print(message)
    assert message.startswith("7 problem(s) in the survey file")
    for line, what in [(3, "r/keto: answer 'C' is not one of the letters A, B"),
                       (4, "r/keto: distribution has 2 shares for 3 options"),
                       (5, "sum to 1 (or 100); these sum to 1.4"),
                       (6, "the question is empty"),
                       (7, "an item needs 2 to 26 options, this one has 1"),
                       (8, "no community answers this item"),
                       (9, "two options have the same text")]:
        assert f"{path}:{line}: " in message and what in message
    assert f"{path}:2:" not in message
    assert db.execute("SELECT count(*) FROM surveys").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM survey_items").fetchone()[0] == 0


def test_file_level_errors(tmp_path):
    no_columns = tmp_path / "a.csv"
    no_columns.write_text("text,choices\nx,y\n")
    with pytest.raises(SurveyFileError, match=r"a.csv:1: the header needs the columns question "
                                              r"and options \(missing: question, options\)"):
        read_survey_file(no_columns)
    no_community = tmp_path / "b.csv"
    no_community.write_text("question,options\nQ?,Yes;No\n")
    with pytest.raises(SurveyFileError, match="b.csv:1: no community column"):
        read_survey_file(no_community)
    broken = tmp_path / "c.json"
    broken.write_text('[{"question": "Q?",\n "options": ["a" "b"]}]')
    with pytest.raises(SurveyFileError, match=r"c.json:2: not JSON"):
        read_survey_file(broken)
    with pytest.raises(SurveyFileError, match="no such file"):
        read_survey_file(tmp_path / "missing.csv")
    unquoted = tmp_path / "d.csv"
    unquoted.write_text("question,options,r/keto\nQ?,Yes;No,A,B\n")
    with pytest.raises(SurveyFileError, match="d.csv:2: more cells than the header"):
        read_survey_file(unquoted)


def test_json_items_and_their_errors(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"name": "diet survey", "items": [
        {"id": "q1", "question": "Carbs?", "options": ["Low", "Medium", "High"],
         "answers": {"r/keto": "A", "nutrition": {"A": 10, "B": 60, "C": 30}}},
        {"id": "q2", "question": "Fat?", "options": ["Good", "Bad"],
         "answers": {"keto": [0.9, 0.1]}, "ordinal": False, "topic": "fat"}]}))
    name, items = read_survey_file(path)
    assert name == "diet survey"
    assert items[0]["answers"] == {"keto": "A", "nutrition": "B"}
    assert items[0]["distributions"]["nutrition"] == pytest.approx({"A": .1, "B": .6, "C": .3})
    assert items[1]["answers"] == {"keto": "A"} and not items[1]["ordinal"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([
        {"id": "q1", "question": "Carbs?", "options": ["Low", "High"],
         "answers": {"keto": {"A": 0.5, "Z": 0.5}}},
        "not an item",
        {"id": "q1", "question": "Again?", "options": ["Yes", "No"], "answers": {"keto": "B"}},
        {"id": "q3", "question": "Q?", "options": ["Yes", "No"], "answers": ["A"]}]))
    with pytest.raises(SurveyFileError) as e:
        read_survey_file(bad)
    message = str(e.value)
    assert "item 1 (id q1): r/keto: distribution names options Z" in message
    assert "item 2: expected an object" in message
    assert "item 4 (id q3): answers must be an object" in message
    assert "id 'q1' is used by 2 items" not in message  # the first q1 was rejected
    assert message.startswith("3 problem(s)")


def test_stored_once_per_content(tmp_path, db):
    path = tmp_path / "pew.csv"
    path.write_text(GOOD_CSV)
    first = load_survey(db, path)
    assert load_survey(db, path) == first
    assert db.execute("SELECT count(*) FROM survey_items").fetchone()[0] == 3
    assert survey_communities(db, first) == ["keto", "nutrition"]
    items = survey_items(db, first, ["nutrition"])
    assert [it.key for it in items] == [f"{first}:bread", f"{first}:fat"]
    assert items[0].distributions["nutrition"]["C"] == pytest.approx(0.4)
    assert items[0].topic == "carbs" and not items[1].ordinal


def test_survey_command_on_a_file(tmp_path):
    path = tmp_path / "pew.csv"
    path.write_text(GOOD_CSV)
    store = tmp_path / "s.db"
    result = cci("survey", "--survey", str(path), "--no-aligned", db=store)
    out = result.stdout
    print(out)
    assert "survey accuracy: survey pew, letter scoring" in out
    assert "representativeness" in out and "r/keto's real answers" in out
    assert "accuracy per topic" in out and "carbs" in out
    db = open_store(store)
    answers = db.execute("SELECT count(*) FROM survey_answers").fetchone()[0]
    assert answers == 3 * 3  # base, persona:keto, persona:nutrition x 3 items
    calls = db.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    data = json.loads(cci("survey", "--survey", str(path), "--no-aligned", "--json",
                          db=store).stdout)
    assert db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == calls
    nutrition = data["communities"]["nutrition"]
    assert nutrition["questions"] == 2
    rep = nutrition["respondents"]["persona:nutrition"]["representativeness"]
    assert 0 <= rep["low"] <= rep["value"] <= rep["high"] <= 1 and rep["n"] == 2
    only_keto = json.loads(cci("survey", "r/keto", "--survey", str(path), "--no-aligned",
                               "--no-persona", "--json", db=store).stdout)
    assert list(only_keto["communities"]) == ["keto"]

    bad = tmp_path / "bad.csv"
    bad.write_text("question,options,r/keto\nQ?,Yes;No,Z\n")
    failed = cci("survey", "--survey", str(bad), db=store, check=False)
    assert failed.returncode == 2
    assert f"{bad}:2: r/keto: answer 'Z' is not one of the letters A, B" in failed.stderr
    assert db.execute("SELECT count(*) FROM survey_answers").fetchone()[0] == answers
    unknown = cci("survey", "r/vegan", "--survey", str(path), db=store, check=False)
    assert unknown.returncode == 2 and "has no answers for r/vegan" in unknown.stderr
    template = cci("survey", "--survey", str(path), "--question-template", "{question}",
                   db=store, check=False)
    assert template.returncode == 2 and "must contain {options}" in template.stderr


# ------------------------------------------- the Community-Cross-Instruct release's layout

RELEASE_SENTENCE = ("Select only one answer that best aligns with your opinions, by stating "
                    "either A, B, C, or D. Do not provide any additional explanation or "
                    "rationale for your choice.")


def release_survey(tmp_path, rows=None):
    """A CommSurvey CSV in the release's documented shape, our own questions."""
    import csv

    def question(text, options):
        return "\n".join([text, *[f"{'ABCD'[i]}. {o}" for i, o in enumerate(options)],
                          RELEASE_SENTENCE])

    rows = rows or [
        (0, 6, question("Which diet do you follow?", ["Keto", "Vegan", "Paleo", "None"]),
         "A", "D", 0, "test", "train"),
        (0, 6, question("How often do you eat bread?", ["Never", "Rarely", "Often", "Daily"]),
         "A", "C", 1, "train", "test"),
        (1, 2, question("Do you count calories?", ["Always", "Sometimes", "Never", "Unsure"]),
         "", "B", 2, "test", "test"),
    ]
    path = tmp_path / "comm_survey_fitness.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text_chunk_id", "topic_id", "question", "answer_keto", "answer_nutrition",
                    "question_id", "split", "split_by_topic"])
        w.writerows(rows)
    return path


def test_release_commsurvey_is_read_as_it_is(tmp_path):
    path = release_survey(tmp_path)
    name, items = read_survey_file(path)  # --split random: the split column's test rows
    assert name == "comm_survey_fitness (random split, held-out rows)"
    assert [it["question"] for it in items] == ["Which diet do you follow?",
                                                "Do you count calories?"]
    assert items[0]["options"] == {"A": "Keto", "B": "Vegan", "C": "Paleo", "D": "None"}
    assert items[0]["answers"] == {"keto": "A", "nutrition": "D"}
    assert items[1]["answers"] == {"nutrition": "B"}  # a blank cell: no answer
    assert items[0]["topic"] == "6" and not items[0]["ordinal"]
    _, by_topic = read_survey_file(path, split="topic")
    assert [it["question"] for it in by_topic] == ["How often do you eat bread?",
                                                   "Do you count calories?"]


def test_release_commsurvey_errors_name_the_line(tmp_path):
    rows = [(0, 6, "What do you think of fasting?", "Good idea.", "Risky.", 0, "test", "test"),
            (0, 6, "Pick one\nA. Eggs\nB. Oats\n" + RELEASE_SENTENCE, "A", "C", 1, "test",
             "test")]
    path = release_survey(tmp_path, rows)
    with pytest.raises(SurveyFileError) as e:
        read_survey_file(path)
    assert f"{path}:2: not a multiple-choice question" in str(e.value)
    assert f"{path}:3: answer of nutrition is not one of A, B" in str(e.value)


def test_release_commsurvey_through_the_survey_command(tmp_path):
    path = release_survey(tmp_path)
    store = tmp_path / "s.db"
    data = json.loads(cci("survey", "--survey", str(path), "--no-aligned", "--json",
                          db=store).stdout)
    assert data["communities"]["keto"]["questions"] == 1
    assert data["communities"]["nutrition"]["questions"] == 2
    topic = json.loads(cci("survey", "--survey", str(path), "--no-aligned", "--json",
                           "--split", "topic", db=store).stdout)
    assert topic["communities"]["keto"]["questions"] == 1  # the bread question
    db = open_store(store)
    assert db.execute("SELECT count(*) FROM surveys").fetchone()[0] == 2  # one per split
