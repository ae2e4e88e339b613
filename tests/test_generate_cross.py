"""Community-Cross-Instruct generation: teacher rows, checks, retries, resume, exports.

The end-to-end tests use the real embedded teacher (SmolLM2-135M through
llama-cpp-python).  The tests of the retry and resume logic use a scripted
teacher behind the same Backend interface: they need replies of an exact
shape (cut-off JSON, repeated options, a crash on the second call) that no real
model can be made to give on cue; everything else in them (store, cache,
schema validation, checks, splits) is the real code.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import CORPUS_2022, ScriptedBackend, cci

from cci_local.export import export
from cci_local.generate import CrossOptions, build_messages, cross_instruct
from cci_local.generate.cross import _Row, fit_prompt
from cci_local.generate.rows import _REFERS_TO_SOURCE
from cci_local.ingest import ingest
from cci_local.llm import BackendError, get_backend
from cci_local.store import open_store
from cci_local.topics import TopicParams, fit_topics

_KETO = CORPUS_2022 / "subr_keto.csv"
VOCAB = sorted({w for w in re.findall(r"[a-z]{4,}", _KETO.read_text(
    encoding="utf-8", errors="ignore").lower() if _KETO.is_file() else "")
    if not _REFERS_TO_SOURCE.search(w)})


def _words(seed: str, n: int) -> str:
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16))
    return " ".join(rng.choice(VOCAB, n, replace=False))


def good_reply(communities: list[str], seed: str, n_open=3, n_choice=2, letters=None) -> dict:
    """A reply that passes every check: questions of distinct random words."""
    letters = letters or {c: "ABCD"[i % 4] for i, c in enumerate(communities)}
    return {
        "open_ended": [{"question": f"How {_words(seed + f'o{k}', 8)}?",
                        "answers": {c: f"We {_words(seed + c + str(k), 5)}." for c in communities}}
                       for k in range(n_open)],
        "multiple_choice": [{"question": f"Which {_words(seed + f'c{k}', 8)}?",
                             "options": {x: _words(seed + x + str(k), 2) for x in "ABCD"},
                             "answers": dict(letters)} for k in range(n_choice)]}


class ScriptedTeacher(ScriptedBackend):
    """A teacher whose reply to the n-th call is ``script(n, messages, communities)``
    (the communities the row's JSON schema asks answers of)."""

    spec = "scripted-teacher"

    def __init__(self, script, concurrent=False, delay=0.0):
        def reply(n, messages, schema):
            return script(n, messages, schema["properties"]["open_ended"]["items"][
                "properties"]["answers"]["required"])
        super().__init__(reply, concurrent=concurrent, delay=delay)


@pytest.fixture
def topics_db(db):
    ingest(db, [str(CORPUS_2022)])
    fit_topics(db, params=TopicParams(embedder="tfidf", reducer="pca", n_topics=12))
    return db


def test_retries_tell_the_teacher_what_was_wrong(topics_db):
    def script(n, messages, communities):
        if n == 0:
            return '{"open_ended": [{"question": "How do you'  # cut off at max tokens
        if n == 1:
            reply = good_reply(communities, "second")
            reply["open_ended"][0]["question"] = "What do the comments say about breakfast?"
            for item in reply["multiple_choice"]:
                item["options"]["B"] = item["options"]["A"]  # options repeat
            return reply
        return good_reply(communities, "third")

    teacher = ScriptedTeacher(script)
    report = cross_instruct(topics_db, None, teacher, CrossOptions(max_rows=1))
    assert teacher.calls == 3 and report.calls == 3
    prompts = [m[-1]["content"] for m in teacher.requests]
    assert "rejected" not in prompts[0]
    assert "not complete, valid JSON" in prompts[1]
    assert "options repeat" in prompts[2] and "question refers to the source texts" in prompts[2]
    assert report.accepted == 1 and report.retries == 2
    assert report.kept == {"open": 3, "choice": 2}  # 2 open from the 2nd reply, then the 3rd
    assert report.dropped["options repeat"] == 2
    assert report.dropped["question refers to the source texts"] == 1
    row = topics_db.execute("SELECT status, attempts, call_ids, kept_open, kept_choice"
                            " FROM teacher_rows").fetchone()
    assert row[:2] == ("accepted", 3) and row[3:] == (3, 2)
    first, *_ = json.loads(row[2])
    status, error, raw = topics_db.execute("SELECT status, error, response FROM llm_calls"
                                           " WHERE id = ?", [first]).fetchone()
    assert status == "invalid" and error.startswith("not JSON") and raw.startswith('{"open')


def test_a_raw_control_character_inside_a_string_is_accepted(topics_db):
    # llama.cpp's JSON grammar lets a raw tab or newline through inside a string; the
    # reply is otherwise valid and must not cost a second teacher call.
    def script(n, messages, communities):
        reply = json.dumps(good_reply(communities, "tab"))
        return reply.replace('"How ', '"How\t', 1).replace('"We ', '"We\n', 1)

    teacher = ScriptedTeacher(script)
    raw = script(0, None, ["keto", "nutrition"])
    with pytest.raises(json.JSONDecodeError, match="control character"):
        json.loads(raw)  # what the strict parser said before
    report = cross_instruct(topics_db, None, teacher, CrossOptions(max_rows=1))
    assert teacher.calls == 1 and report.accepted == 1 and report.retries == 0
    question = topics_db.execute("SELECT question FROM instructions WHERE kind = 'open'"
                                 " ORDER BY rowid LIMIT 1").fetchone()[0]
    assert question.startswith("How ")  # kept, its whitespace tidied as every question's
    again = cross_instruct(topics_db, None, ScriptedTeacher(lambda n, m, c: 1 / 0),
                           CrossOptions(max_rows=1))  # the stored reply reads back
    assert again.calls == 0 and again.rows_done_before == 1


def test_a_row_that_never_passes_is_rejected_with_its_reason(topics_db):
    teacher = ScriptedTeacher(lambda n, m, c: "Sure! Here are some questions:")
    report = cross_instruct(topics_db, None, teacher, CrossOptions(max_rows=2, max_attempts=2))
    assert teacher.calls == 4 and report.tried == 2 and report.accepted == 0
    assert report.rejected == {"reply not valid JSON (cut off?)": 2}
    assert topics_db.execute("SELECT count(*) FROM instructions").fetchone()[0] == 0
    again = cross_instruct(topics_db, None, ScriptedTeacher(lambda n, m, c: 1 / 0),
                           CrossOptions(max_rows=2, max_attempts=2))
    assert again.calls == 0 and again.rows_done_before == 2 and again.tried == 0


def test_a_crash_mid_row_resumes_without_asking_again(topics_db):
    def crashing(n, messages, communities):
        if n == 0:
            return good_reply(communities, "only-open", n_choice=0) | {"multiple_choice": [
                {"question": "Which one is best?", "options": {x: "same" for x in "ABCD"},
                 "answers": {c: "A" for c in communities}}] * 2}
        raise KeyboardInterrupt  # Ctrl-C during the retry

    with pytest.raises(KeyboardInterrupt):
        cross_instruct(topics_db, None, ScriptedTeacher(crashing), CrossOptions(max_rows=1))
    assert topics_db.execute("SELECT count(*) FROM teacher_rows").fetchone()[0] == 0
    resumed = ScriptedTeacher(lambda n, m, c: good_reply(c, "retry"))
    report = cross_instruct(topics_db, None, resumed, CrossOptions(max_rows=1))
    # The first attempt is read back from the store; only the retry is asked.
    assert resumed.calls == 1 and report.cached == 1
    assert "options repeat" in resumed.requests[0][-1]["content"]
    assert report.kept == {"open": 3, "choice": 2}


def test_parallel_server_teacher_splits_and_provenance(topics_db):
    teacher = ScriptedTeacher(lambda n, m, c: good_reply(c, f"p{n}", letters={
        c[0]: "A", c[-1]: "A" if n % 2 else "C"}), concurrent=True, delay=0.2)
    report = cross_instruct(topics_db, None, teacher, CrossOptions(parallel=4, seed=3))
    rows = topics_db.execute("SELECT count(*) FROM chunk_rows").fetchone()[0]
    assert report.tried == report.accepted == rows and teacher.max_active > 1
    assert report.kept == {"open": 3 * rows, "choice": 2 * rows}
    assert 0 < report.non_discriminating < 2 * rows  # flagged, kept
    held_rows = {r[0] for r in topics_db.execute(
        "SELECT unit_id FROM holdouts WHERE unit = 'chunk_row'")}
    held_topics = {r[0] for r in topics_db.execute(
        "SELECT unit_id FROM holdouts WHERE unit = 'topic'")}
    assert len(held_rows) == round(0.15 * rows) and len(held_topics) == 2
    for iid, kind, row_id, topic_id, source, split, by_topic, disc, options in topics_db.execute(
            "SELECT id, kind, chunk_row_id, topic_id, source, split, split_by_topic,"
            " discriminating, options FROM instructions"):
        assert split == ("test" if row_id in held_rows else "train")
        assert by_topic == ("test" if topic_id in held_topics else "train")
        call = int(source.split(":")[1])
        assert topics_db.execute("SELECT status FROM llm_calls WHERE id = ?",
                                 [call]).fetchone()[0] == "ok"
        assert (disc is None) == (kind == "open") and (options is None) == (kind == "open")
        for community, doc_ids in topics_db.execute(
                "SELECT community, doc_ids FROM community_answers WHERE instruction_id = ?",
                [iid]):
            chunk = json.loads(topics_db.execute(
                "SELECT doc_ids FROM chunks WHERE chunk_row_id = ? AND community = ?",
                [row_id, community]).fetchone()[0])
            shown = json.loads(doc_ids)
            assert shown and set(shown) <= set(chunk)  # the documents the teacher saw
    # The topic-held-out rows are a whole-topic split, independent of the row split.
    assert {r[0] for r in topics_db.execute(
        "SELECT DISTINCT topic_id FROM instructions WHERE split_by_topic = 'test'")} <= held_topics


def test_single_community_mode(topics_db):
    teacher = ScriptedTeacher(lambda n, m, c: good_reply(c, f"s{n}"))
    report = cross_instruct(topics_db, ["r/keto"], teacher, CrossOptions(max_rows=2))
    assert report.accepted == 2
    prompt = teacher.requests[0][-1]["content"]
    assert "one online community, r/keto" in prompt and "r/nutrition" not in prompt
    assert {r[0] for r in topics_db.execute("SELECT community FROM community_answers")} == {
        "keto"}
    # One community: a letter cannot tell communities apart, so nothing is flagged either way.
    assert topics_db.execute("SELECT count(*) FROM instructions WHERE kind = 'choice'"
                             " AND discriminating IS NOT NULL").fetchone()[0] == 0


def test_the_prompt_fits_the_teachers_context(topics_db):
    teacher = get_backend("embedded")
    row_id, topic_id, keywords = topics_db.execute(
        "SELECT r.id, t.id, t.keywords FROM chunk_rows r JOIN topics t ON t.id = r.topic_id"
        " LIMIT 1").fetchone()
    docs = {}
    for community, ids in topics_db.execute(
            "SELECT community, doc_ids FROM chunks WHERE chunk_row_id = ?", [row_id]):
        ids = json.loads(ids)
        docs[community] = [(i, topics_db.execute("SELECT text FROM documents WHERE id = ?",
                                                 [i]).fetchone()[0]) for i in ids]
    for context in (1800, 8192):
        row = _Row(row_id, topic_id, json.loads(keywords), sorted(docs), docs, "train", "train")
        fit_prompt(teacher, row, CrossOptions(), context)
        assert teacher.count_tokens(row.messages) + row.max_tokens + 200 <= context
        for community, shown in row.shown.items():
            order = [i for i, _ in docs[community]]
            assert shown and shown == sorted(shown, key=order.index)  # chunk order kept
            for i in shown[:3]:
                text = dict(docs[community])[i]
                assert " ".join(text.split()[:20]) in row.messages[-1]["content"]
        prompt = row.messages[-1]["content"]
        assert "### Posts from r/keto" in prompt and "### Posts from r/nutrition" in prompt
    small = _Row(row_id, topic_id, json.loads(keywords), sorted(docs), docs, "train", "train")
    with pytest.raises(BackendError, match="context"):
        fit_prompt(teacher, small, CrossOptions(), 1000)
    teacher.close()


def test_build_messages_states_the_task():
    messages = build_messages(["fasting", "hunger"], {"keto": ["Fasting is easy now."],
                                                      "nutrition": ["Eat regular meals."]},
                              3, 2, 40, feedback=["2 question(s) were rejected: options repeat."])
    text = messages[-1]["content"]
    assert "keywords: fasting, hunger" in text and "3 open-ended" in text
    assert "2 multiple-choice" in text and "at most 40 words" in text
    assert "- Fasting is easy now." in text.split("### Posts from r/nutrition")[0]
    assert "would answer differently" in text and "Never mention posts, comments" in text
    assert "options repeat" in text


def test_unreachable_teacher_is_an_error_that_says_what_to_do(tmp_path):
    db = tmp_path / "g.db"
    cci("ingest", str(CORPUS_2022), db=db)
    cci("topics", "--embedder", "tfidf", "--reducer", "pca", "--topics", "8", db=db)
    result = cci("generate", "--teacher", "ollama:llama3.1:8b", db=db, check=False,
                 env={"OLLAMA_HOST": "127.0.0.1:9"})
    assert result.returncode == 1 and "ollama serve" in result.stderr
    no_topics = tmp_path / "n.db"
    cci("ingest", str(CORPUS_2022), db=no_topics)
    result = cci("generate", db=no_topics, check=False)
    assert result.returncode == 2 and "cci-local topics r/keto r/nutrition" in result.stderr


# --------------------------------------------------------------------------- real teacher


def _count(path, sql, args=()):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


@pytest.mark.slow
def test_embedded_teacher_end_to_end_with_kill_and_resume(tmp_path):
    db = tmp_path / "g.db"
    cci("ingest", str(CORPUS_2022), db=db)
    cci("topics", "--embedder", "tfidf", "--reducer", "pca", "--topics", "12",
        # chunks of 4-8 documents: the prompts stay short (the teacher reads every one)
        "--chunk-docs", "4", "8", db=db)
    args = [sys.executable, "-m", "cci_local", "--db", str(db), "generate", "--max-rows", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 400
    while not _count(db, "SELECT count(*) FROM sqlite_master WHERE name = 'teacher_rows'")[0][0] \
            or _count(db, "SELECT count(*) FROM teacher_rows")[0][0] < 1:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # kill -9 in the middle of generation
    proc.wait()
    done = dict(_count(db, "SELECT chunk_row_id, call_ids FROM teacher_rows"))
    assert len(done) == 1
    last_call = _count(db, "SELECT coalesce(max(id), 0) FROM llm_calls")[0][0]

    result = cci("generate", "--max-rows", "2", db=db)
    calls = int(re.search(r"([\d,]+) model calls", result.stdout).group(1))
    new_calls = {r[0] for r in _count(db, "SELECT id FROM llm_calls WHERE id > ?", [last_call])}
    assert calls == len(new_calls) > 0  # every model call is in the log
    rows = dict(_count(db, "SELECT chunk_row_id, call_ids FROM teacher_rows"))
    assert len(rows) == 2
    for row_id, call_ids in done.items():
        assert rows[row_id] == call_ids  # finished rows kept, not asked again
    unfinished_calls = {c for r, ids in rows.items() if r not in done for c in json.loads(ids)}
    assert new_calls <= unfinished_calls
    # The rejection table explains the result; rows landed for both communities.
    assert "teacher rows" in result.stdout and "tried now" in result.stdout
    assert re.search(rf"done before\s+{len(done)}\b", result.stdout)
    assert _count(db, "SELECT count(*) FROM teacher_rows WHERE status = 'accepted'")[0][0] >= 1
    assert not _count(db, "SELECT chunk_row_id, question FROM instructions WHERE kind != "
                          "'template' GROUP BY 1, 2 HAVING count(*) > 1")
    instructions = _count(db, "SELECT id, kind, options FROM instructions")
    assert instructions
    for iid, kind, options in instructions:
        answers = dict(_count(db, "SELECT community, answer FROM community_answers"
                                  " WHERE instruction_id = ?", [iid]))
        assert set(answers) == {"keto", "nutrition"} and all(answers.values())
        if kind == "choice":
            assert set(json.loads(options)) == set("ABCD")
            assert set(answers.values()) <= set("ABCD")
    status = json.loads(cci("status", "--json", db=db).stdout)["communities"]
    assert all(c["CommInst"] + c["CommSurvey"] > 0 for c in status)

    again = cci("generate", "--max-rows", "2", db=db)
    assert "\n0 model calls" in again.stdout and re.search(r"tried now\s+0\b", again.stdout)

    out = tmp_path / "csv"
    export(open_store(db), "csv", out)
    with open(out / "instructions.csv", newline="", encoding="utf-8") as fh:
        exported = list(csv.DictReader(fh))
    assert len(exported) == len(instructions)  # one row per question
    assert all(r["answer_keto"] and r["answer_nutrition"] for r in exported)
    assert {r["kind"] for r in exported} <= {"open", "choice"}
