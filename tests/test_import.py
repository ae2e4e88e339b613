"""`cci-local import`: the Community-Cross-Instruct release's layouts and the tool's
own export formats.  The release's files are third-party data, so these fixtures are
written here in its documented shape (a few rows, our own questions)."""

from __future__ import annotations

import csv
import json

import pytest

from cci_local.export import export
from cci_local.importer import ImportFileError, import_files, split_choice
from cci_local.store import open_store
from cci_local.train.data import training_pairs

SENTENCE = ("Select only one answer that best aligns with your opinions, by stating either A, "
            "B, C, or D. Do not provide any additional explanation or rationale for your choice.")
COMMUNITIES = ["Liberal", "Conservative", "NeutralPolitics"]


def survey_question(question, options):
    return "\n".join([question, *[f"{'ABCD'[i]}. {o}" for i, o in enumerate(options)], SENTENCE])


SURVEY_ROWS = [  # text_chunk_id, topic_id, question, answers..., question_id, split, by topic
    (0, 6, survey_question("Which transit project matters most in your city?",
                           ["Light rail", "Bus lanes", "Road widening", "Bike paths"]),
     "A", "C", "B", 0, "train", "test"),
    (0, 6, survey_question("Who should pay for new stadiums?",
                           ["Team owners", "City taxes", "State grants", "Ticket surcharges"]),
     "A", "", "D", 1, "test", "test"),
    (1, 2, survey_question("How should school boards pick textbooks?",
                           ["Teachers decide", "Parents vote", "State list", "Board members"]),
     "A", "B", "A", 2, "test", "train"),
]
INST_ROWS = [
    (0, 6, "How do you get to work most days?", "Train, mostly, it is quicker.",
     "I drive, the bus never comes.", "Depends on the weather.", 0, "train", "test"),
    (1, 2, "What should a civics class teach first?", "How local government works.",
     "", "The constitution, line by line.", 1, "test", "train"),
]


def write_paper_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text_chunk_id", "topic_id", "question",
                    *[f"answer_{c}" for c in COMMUNITIES], "question_id", "split",
                    "split_by_topic"])
        w.writerows(rows)
    return path


@pytest.fixture
def paper(tmp_path):
    return (write_paper_csv(tmp_path / "comm_inst_politics.csv", INST_ROWS),
            write_paper_csv(tmp_path / "comm_survey_politics.csv", SURVEY_ROWS))


def rows_of(db):
    """Everything an import decides, in a comparable form."""
    return sorted(db.execute(
        "SELECT i.kind, i.question, coalesce(i.options, ''), a.community, a.answer, i.split,"
        " coalesce(i.split_by_topic, '') FROM instructions i JOIN community_answers a"
        " ON a.instruction_id = i.id").fetchall())


def test_split_choice_reads_the_release_survey_question():
    question, options = split_choice(SURVEY_ROWS[0][2])
    assert question == "Which transit project matters most in your city?"
    assert options == {"A": "Light rail", "B": "Bus lanes", "C": "Road widening",
                       "D": "Bike paths"}
    assert split_choice("Just a question?\nNo options here.") is None


def test_release_csvs_import_with_their_splits_and_provenance(tmp_path, paper):
    db = open_store(tmp_path / "s.db")
    inst, survey = paper
    results = import_files(db, [str(inst), str(survey)])
    assert [(r.format, r.rows, r.questions_added, r.answers_added) for r in results] == [
        ("paper-csv", 2, 2, 5), ("paper-csv", 3, 3, 8)]  # blank answers: no row
    choice = db.execute("SELECT question, options, split, split_by_topic FROM instructions"
                        " WHERE kind = 'choice' ORDER BY id").fetchall()
    assert [c[0] for c in choice] == ["Which transit project matters most in your city?",
                                      "Who should pay for new stadiums?",
                                      "How should school boards pick textbooks?"]
    assert all(SENTENCE not in c[0] and "A." not in c[0] for c in choice)
    assert json.loads(choice[1][1])["D"] == "Ticket surcharges"
    assert [(c[2], c[3]) for c in choice] == [("train", "test"), ("test", "test"),
                                              ("test", "train")]
    answers = dict(db.execute(
        "SELECT a.community, a.answer FROM community_answers a JOIN instructions i"
        " ON i.id = a.instruction_id WHERE i.question LIKE 'Who should pay%'").fetchall())
    assert answers == {"Liberal": "A", "NeutralPolitics": "D"}  # Conservative left blank
    # Provenance: each answer's file and line; the second survey record starts on
    # line 8 (the header, then a record of 6 lines).
    lines = db.execute(
        "SELECT m.path, r.line, r.community FROM import_rows r JOIN imports m"
        " ON m.id = r.import_id JOIN instructions i ON i.id = r.instruction_id"
        " WHERE i.question LIKE 'Who should pay%' ORDER BY r.community").fetchall()
    assert lines == [(str(survey), 8, "Liberal"), (str(survey), 8, "NeutralPolitics")]
    assert db.execute("SELECT topic_label FROM instructions WHERE question LIKE 'How do you%'"
                      ).fetchone()[0] == "6"
    # Imported pairs are training data like generated ones.
    assert training_pairs(db, "Liberal", ("open",)) == [
        ("How do you get to work most days?", "Train, mostly, it is quicker.")]


def test_reimporting_adds_nothing(tmp_path, paper):
    db = open_store(tmp_path / "s.db")
    import_files(db, [str(p) for p in paper])
    before = rows_of(db)
    again = import_files(db, [str(p) for p in paper])
    assert sum(r.questions_added + r.answers_added for r in again) == 0
    assert sum(r.already for r in again) == 13
    assert rows_of(db) == before
    assert db.execute("SELECT count(*) FROM imports").fetchone()[0] == 2


def test_a_bad_row_names_its_line_and_stores_nothing_of_its_file(tmp_path, paper):
    db = open_store(tmp_path / "s.db")
    import_files(db, [str(paper[0])])
    kept = rows_of(db)
    bad = list(SURVEY_ROWS)
    bad[1] = (*bad[1][:3], "E", "", "D", 1, "test", "test")  # E is not an option
    bad[2] = (*bad[2][:7], "dev", "train")
    path = write_paper_csv(tmp_path / "bad_survey.csv", bad)
    with pytest.raises(ImportFileError) as e:
        import_files(db, [str(path), str(paper[1])])
    message = str(e.value)
    assert f"{path}:8: answer of Liberal is not one of A, B, C, D" in message
    assert f"{path}:14: split is 'dev'; expected train or test" in message
    assert "2 bad rows; nothing from" in message
    assert rows_of(db) == kept  # neither file stored anything; what was there stays


def test_per_subreddit_json_files_merge_into_one_question(tmp_path):
    db = open_store(tmp_path / "s.db")
    paths = []
    for community, letter in (("Liberal", "A"), ("AskThe_Donald", "C")):
        items = [{"instruction": SURVEY_ROWS[0][2], "input": "", "output": letter,
                  "topic": 6, "split": "test", "split_by_topic": "test"},
                 {"instruction": INST_ROWS[0][2], "input": "",
                  "output": f"{community} answer", "topic": 6, "split": "train",
                  "split_by_topic": "test"}]
        path = tmp_path / f"instructions_{community}_multi_choice_test.json"
        path.write_text(json.dumps(items))
        paths.append(str(path))
    results = import_files(db, paths)
    assert [r.format for r in results] == ["paper-json"] * 2
    assert [r.communities for r in results] == [["Liberal"], ["AskThe_Donald"]]
    merged = db.execute("SELECT i.kind, count(*) FROM instructions i JOIN community_answers a"
                        " ON a.instruction_id = i.id GROUP BY i.id ORDER BY i.id").fetchall()
    assert merged == [("choice", 2), ("open", 2)]
    bad = tmp_path / "instructions_Liberal_open_ended_train.json"
    bad.write_text(json.dumps([{"instruction": "Q?", "output": "x", "split": "holdout"}]))
    with pytest.raises(ImportFileError, match=r"item 1: split is 'holdout'"):
        import_files(db, [str(bad)])
    with pytest.raises(ImportFileError, match="cannot tell the community"):
        other = tmp_path / "pairs.json"
        other.write_text("[]")
        import_files(db, [str(other)], fmt="paper-json")


@pytest.mark.parametrize("fmt", ["csv", "mlx", "openai", "sharegpt"])
def test_export_then_import_gives_the_same_pairs(tmp_path, paper, fmt):
    source = open_store(tmp_path / "source.db")
    import_files(source, [str(p) for p in paper])
    with source.conn:  # a template pair too: a real post as the answer
        iid = source.conn.execute(
            "INSERT INTO instructions (kind, question, source, split, split_by_topic,"
            " created_at) VALUES ('template', 'What is r/Liberal talking about?',"
            " 'template:d1', 'train', 'train', 0)").lastrowid
        source.conn.execute("INSERT INTO community_answers VALUES (?, 'Liberal',"
                            " 'Zoning reform, again.', '[\"d1\"]')", [iid])
    export(source, fmt, tmp_path / "out")
    fresh = open_store(tmp_path / "fresh.db")
    import_files(fresh, [str(tmp_path / "out")])
    if fmt == "csv":  # every kind, options, answers and both splits
        assert rows_of(fresh) == rows_of(source)
    else:  # training pairs (open and template) and the random split
        def pairs(db):
            return sorted(db.execute(
                "SELECT i.question, a.community, a.answer, i.split FROM instructions i JOIN"
                " community_answers a ON a.instruction_id = i.id"
                " WHERE i.kind IN ('open', 'template')").fetchall())
        assert pairs(fresh) == pairs(source)
    assert sum(r.questions_added + r.answers_added for r in
               import_files(fresh, [str(tmp_path / "out")])) == 0


def test_the_report_says_where_training_pairs_came_from(tmp_path, paper):
    from cci_local.report import write_report

    db = open_store(tmp_path / "s.db")
    import_files(db, [str(p) for p in paper])
    path = tmp_path / "report.json"
    write_report(db, path, "json", communities=["Liberal", "Conservative"])
    data = json.loads(path.read_text())["training_data"]
    assert {(p["community"], p["origin"], p["pairs"]) for p in data["pairs"]} == {
        ("Liberal", "imported", 1), ("Conservative", "imported", 1)}
    assert [(f["path"], f["format"]) for f in data["imported_files"]] == [
        (str(paper[0]), "paper-csv"), (str(paper[1]), "paper-csv")]


def test_training_on_the_unseen_topic_split_leaves_held_out_topics_out(tmp_path, paper):
    db = open_store(tmp_path / "s.db")
    import_files(db, [str(p) for p in paper])
    # Row 1 is train in the random split but its topic is held out; row 2 the reverse.
    assert training_pairs(db, "Liberal", ("open",)) == [
        ("How do you get to work most days?", "Train, mostly, it is quicker.")]
    assert training_pairs(db, "Liberal", ("open",), split_by="topic") == [
        ("What should a civics class teach first?", "How local government works.")]
