"""Administering multiple-choice questions to the embedded model."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import SHARED

from cci_local.evaluate.metrics import accuracy
from cci_local.evaluate.survey import ask, normalise, question_messages
from cci_local.llm import NoLogprobs, get_backend
from cci_local.llm.llama_cpp import LlamaCppBackend, embedded_model_path

SCALE = {"A": "Never", "B": "Sometimes", "C": "Often", "D": "Always"}


def items(n: int) -> list[str]:
    with open(SHARED / "instruments" / "eating_disorder_items.csv", newline="",
              encoding="utf-8") as fh:
        return [row["Question"] for row in csv.DictReader(fh)][:n]


@pytest.fixture(scope="module")
def embedded():
    backend = get_backend("embedded")
    yield backend
    backend.close()


def test_base_model_against_a_random_key_sits_near_chance(db, embedded):
    questions = items(48)
    assert len(questions) == 48
    key = list(np.random.default_rng(11).choice(list("ABCD"), len(questions)))
    answers = [ask(db, embedded, question_messages(q, SCALE), SCALE) for q in questions]
    for a in answers:
        assert a.method == "logprobs" and sum(a.distribution.values()) == pytest.approx(1)
        assert a.chosen == max(a.distribution, key=a.distribution.get)
    est = accuracy([a.chosen for a in answers], key)
    print(f"embedded base model vs a random key: accuracy {est}")
    assert est.low <= 0.25 <= est.high and 0.05 < est.value < 0.45
    calls = embedded.calls
    again = [ask(db, embedded, question_messages(q, SCALE), SCALE) for q in questions]
    assert embedded.calls == calls  # the cache answers a repeated survey
    for first, second in zip(answers, again, strict=True):
        assert second.distribution == pytest.approx(first.distribution)


class WithoutLogprobs(LlamaCppBackend):
    """The real embedded model with log-probabilities switched off, as a remote server
    that hides them would be."""

    def option_logprobs(self, messages, options):
        raise NoLogprobs("this server gives no log-probabilities")


def test_sampled_answers_where_a_backend_has_no_logprobs(db):
    backend = WithoutLogprobs(embedded_model_path(), spec="no-logprobs", n_ctx=2048)
    messages = question_messages(items(1)[0], SCALE,
                                 persona="You are a member of the online community r/keto.")
    answer = ask(db, backend, messages, SCALE, samples=8)
    assert answer.method == "sampled" and backend.calls == 8
    assert sum(answer.distribution.values()) == pytest.approx(1)
    assert all(v * 8 == round(v * 8) for v in answer.distribution.values())
    assert messages[0]["role"] == "system" and "r/keto" in messages[0]["content"]
    backend.close()


def test_normalise_leaves_out_mass_off_the_options():
    dist = normalise({"A": np.log(0.2), "B": np.log(0.2), "C": -np.inf, "D": np.log(0.1)})
    assert dist == pytest.approx({"A": 0.4, "B": 0.4, "C": 0.0, "D": 0.2})


def test_commsurvey_items_administered_and_stored_once(db, embedded):
    import json

    from cci_local.evaluate.survey import administer, commsurvey_items
    from cci_local.store import ensure_community

    for name in ("keto", "nutrition"):
        ensure_community(db, name)
    questions = items(6)
    for i, q in enumerate(questions):
        cur = db.execute("INSERT INTO instructions (kind, question, options, source, split,"
                         " split_by_topic, created_at) VALUES ('choice', ?, ?, ?, ?, 'train', 0)",
                         [q, json.dumps(SCALE), f"test:{i}", "test" if i < 4 else "train"])
        db.execute("INSERT INTO community_answers VALUES (?, 'keto', ?, '[]')",
                   [cur.lastrowid, "ABCD"[i % 4]])
        db.execute("INSERT INTO community_answers VALUES (?, 'nutrition', 'A', '[]')",
                   [cur.lastrowid])
    db.conn.commit()
    held = commsurvey_items(db, ["keto", "nutrition"])
    assert [it.question for it in held] == questions[:4]
    assert held[0].answers == {"keto": "A", "nutrition": "A"} and not held[0].discriminating
    assert held[1].discriminating
    assert commsurvey_items(db, ["keto"], split_by="topic") == []
    first = administer(db, "base", embedded, held)
    persona = administer(db, "persona:keto", embedded, held,
                         persona="You are a member of the online community r/keto.")
    assert db.execute("SELECT count(*) FROM survey_answers").fetchone()[0] == 8
    calls = embedded.calls
    again = administer(db, "base", embedded, held)
    assert embedded.calls == calls and {k: a.chosen for k, a in again.items()} == \
        {k: a.chosen for k, a in first.items()}
    assert db.execute("SELECT count(*) FROM survey_answers").fetchone()[0] == 8
    assert any(persona[k].distribution != first[k].distribution for k in first)


def test_survey_command_tables_and_notes(tmp_path):
    import json

    from conftest import cci

    from cci_local.store import ensure_community, open_store

    path = tmp_path / "s.db"
    db = open_store(path)
    for name in ("keto", "nutrition"):
        ensure_community(db, name)
    for i, q in enumerate(items(5)):
        cur = db.execute("INSERT INTO instructions (kind, question, options, source, split,"
                         " split_by_topic, created_at) VALUES ('choice', ?, ?, ?, 'test', 'train',"
                         " 0)", [q, json.dumps(SCALE), f"test:{i}"])
        db.execute("INSERT INTO community_answers VALUES (?, 'keto', ?, '[]')",
                   [cur.lastrowid, "ABCD"[i % 4]])
        db.execute("INSERT INTO community_answers VALUES (?, 'nutrition', 'D', '[]')",
                   [cur.lastrowid])
    db.conn.commit()
    result = cci("survey", db=path)
    out = result.stdout
    assert "survey accuracy: held-out CommSurvey (random split), letter scoring" in out
    for row in ("base", "persona:keto", "persona:nutrition", "majority letter", "random"):
        assert row in out
    assert "cross-community matrix (persona)" in out
    assert "r/keto has no adapter on embedded: run `cci-local train r/keto`" in out
    majority = next(line for line in out.splitlines()
                    if "r/nutrition" in line and "majority letter" in line)
    assert "1.000" in majority  # nutrition always answers D
    assert db.execute("SELECT count(*) FROM survey_answers").fetchone()[0] == 15
    unseen = cci("survey", "--split", "topic", db=path)
    assert "no questions in the held-out CommSurvey (topic split)" in unseen.stdout


def test_parallel_asks_a_server_respondent_many_questions_at_once(db, scripted):
    """--parallel: a concurrent (server) respondent gets several questions at a time;
    the answers are those asked one at a time, stored once, and a re-run asks nothing."""
    import json as _json

    from cci_local.evaluate.survey import Item, administer

    def script(n, messages, schema):  # answers by the question's number, whatever the order
        number = int(messages[-1]["content"].split("question ")[1].split(":")[0])
        return {"answer": "ABCD"[number % 4]}

    items = [Item(f"q:{i}", f"This is question {i}: pick one", {"A": "w", "B": "x", "C": "y",
                                                               "D": "z"}, {"c": "A"})
             for i in range(12)]
    parallel = scripted(script, concurrent=True, delay=0.05)
    answers = administer(db, "aligned:c", parallel, items, samples=2, parallel=4)
    assert parallel.max_active > 1
    assert [answers[it.key].chosen for it in items] == ["ABCD"[i % 4] for i in range(12)]
    assert all(a.method == "sampled" for a in answers.values())
    calls = len(parallel.requests)
    assert calls == 24
    again = administer(db, "aligned:c", parallel, items, samples=2, parallel=4)
    assert len(parallel.requests) == calls and again == answers
    stored = db.execute("SELECT item, chosen, distribution FROM survey_answers").fetchall()
    assert len(stored) == 12
    assert all(_json.loads(d)[c] == 1.0 for _, c, d in stored)
    # the same respondent asked one at a time in another store gives the same answers
    from cci_local.store import open_store

    other = open_store(db.conn.execute("PRAGMA database_list").fetchone()[2] + "-seq.db")
    sequential = scripted(script, concurrent=True)
    assert administer(other, "aligned:c", sequential, items, samples=2) == answers
    assert sequential.max_active == 1
