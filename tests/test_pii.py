"""Personal data on ingest: the scrubber's precision and recall on a labelled file,
placeholders, ingest's counts (in process and in worker processes), --keep-pii, and
`cci-local scrub` on a store that kept it."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from cci_local.cli import cli
from cci_local.ingest import ingest
from cci_local.ingest.pii import ENTITIES, PiiScrubber, describe_counts, find_pii
from cci_local.ingest.pii_eval import evaluate, load_labelled, parse_marked
from cci_local.ingest.scrub import PROGRESS_KEY, rescrub
from cci_local.store import open_store

FIXTURE = Path(__file__).parent / "fixtures" / "pii_labelled.jsonl"
# Floors a little under what the scrubber measures on the fixture (docs/method.md):
# a recognizer that gets worse fails here.
FLOORS = {"phone": (0.95, 0.9), "address": (0.95, 0.9), "card": (0.95, 0.9),
          "ip": (0.95, 0.9), "handle": (0.95, 0.9), "age": (0.95, 0.9), "name": (0.9, 0.85)}


def test_precision_and_recall_per_entity_meet_their_floors():
    examples = load_labelled(FIXTURE)
    assert len(examples) >= 150
    result = evaluate(examples, names=True)
    for entity in ENTITIES:
        low_p, low_r = FLOORS[entity]
        figures = result[entity]
        assert figures["labelled"] >= 8, entity  # enough examples for the floor to mean much
        assert figures["precision"] >= low_p, (entity, figures)
        assert figures["recall"] >= low_r, (entity, figures)
    assert "name" not in evaluate(examples)  # names are off by default


def test_hard_negatives_are_left_alone():
    lines = [orjson.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    negatives = [parse_marked(r["marked"])[0] for r in lines if r["kind"] == "negative"]
    assert len(negatives) >= 60
    wrongly = {text: find_pii(text, names=True) for text in negatives}
    assert {text: spans for text, spans in wrongly.items() if spans} == {}


def test_evaluation_counts_a_half_replaced_span_as_missed():
    # The scrubber finds the number, but the label takes "call" too: it is not all covered.
    result = evaluate([parse_marked("please {{phone:call 212-555-0143}} tonight")])
    assert result["phone"]["recall"] == 0.0 and result["phone"]["precision"] == 1.0
    with pytest.raises(ValueError, match="unknown entity 'email'"):
        parse_marked("{{email:a@b.org}}")


def test_placeholders_counts_and_a_second_pass_finds_nothing():
    scrub = PiiScrubber()
    text = ("I'm 34 (34F), text me at (212) 555-0143 or find me on insta @keto_jane. "
            "Card 4111 1111 1111 1111, server 203.0.113.9, I live at 42 Elm Street.")
    out = scrub(text)
    assert out == ("I'm [age] ([age]F), text me at [phone] or find me on insta [handle]. "
                   "Card [card], server [ip], I live at [address].")
    assert scrub.take() == {"age": 2, "phone": 1, "handle": 1, "card": 1, "ip": 1,
                            "address": 1}
    for text, _ in load_labelled(FIXTURE):
        once = scrub(text)
        scrub.take()
        assert scrub(once) == once and not scrub.take(), once
    assert describe_counts({"age": 40, "phone": 12}) == "12 phone, 40 age"
    assert describe_counts({}) == "none"


def _records(n: int = 1) -> list[dict]:
    texts = [
        "I'm 19 and started keto last week, text me at (212) 555-0143 for the group chat",
        "Follow my progress on ig: @ketoqueen_92, I post all my meals there every day",
        "The keto meetup is at 1458 Maple Grove Road every Saturday, all welcome here",
        "I lost 19 lbs in my first month, from 245 to 226, eating 1500 calories a day",
    ]
    return [{"id": f"p{i}", "subreddit": "keto", "author": f"member{i % 7}",
             "created_utc": 1640995200 + i, "body": texts[i % len(texts)]} for i in range(n)]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def _cli(db: Path, *args: str):
    result = CliRunner().invoke(cli, ["--db", str(db), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_ingest_replaces_and_counts_and_keep_pii_keeps(tmp_path):
    path = _write(tmp_path / "keto.ndjson", _records(4))
    db_path = tmp_path / "s.db"
    output = _cli(db_path, "ingest", str(path))
    assert "scrubbed PII: 1 phone, 1 address, 1 handle, 1 age" in output
    db = open_store(db_path)
    texts = [r[0] for r in db.execute("SELECT text FROM documents ORDER BY id")]
    assert texts[0].startswith("I'm [age] and started keto") and "[phone]" in texts[0]
    assert "ig: [handle]," in texts[1] and "at [address] every" in texts[2]
    assert texts[3].startswith("I lost 19 lbs")  # weights, calories: not personal data
    stored = json.loads(db.execute("SELECT pii FROM sources").fetchone()[0])
    assert stored == {"phone": 1, "address": 1, "handle": 1, "age": 1}

    kept_path = tmp_path / "kept.db"
    output = _cli(kept_path, "ingest", "--keep-pii", str(path))
    assert "personal data kept as written (--keep-pii)" in output
    kept = open_store(kept_path)
    assert "(212) 555-0143" in kept.execute("SELECT text FROM documents WHERE id = 't1_p0'"
                                            ).fetchone()[0]
    assert kept.execute("SELECT pii FROM sources").fetchone()[0] is None


def test_scrub_rewrites_a_kept_store_in_place_and_a_second_run_replaces_nothing(tmp_path):
    path = _write(tmp_path / "keto.ndjson", _records(8))
    db_path = tmp_path / "s.db"
    _cli(db_path, "ingest", "--keep-pii", str(path))
    db = open_store(db_path)
    # A template pair copies a post word for word: its answer is scrubbed as well.
    db.execute("INSERT INTO instructions (kind, question, source, split, created_at)"
               " VALUES ('template', 'Post in r/keto', 'template:t1_p0', 'train', 0)")
    text0 = db.execute("SELECT text FROM documents WHERE id = 't1_p0'").fetchone()[0]
    db.execute("INSERT INTO community_answers VALUES (1, 'keto', ?, '[\"t1_p0\"]')", [text0])
    db.conn.commit()
    before = db.execute("SELECT id, community, author, source_id, source_line FROM documents"
                        " ORDER BY id").fetchall()
    db.conn.close()

    output = _cli(db_path, "scrub")
    assert "scrubbed PII: 2 phone, 2 address, 2 handle, 2 age" in output
    assert "documents: 6 of 8 rewritten" in output
    assert "community answers: 1 of 1 rewritten (1 phone, 1 age)" in output
    db = open_store(db_path)
    after = db.execute("SELECT id, community, author, source_id, source_line FROM documents"
                       " ORDER BY id").fetchall()
    assert after == before  # ids, communities, pseudonyms, provenance: all kept
    assert "[phone]" in db.execute("SELECT answer FROM community_answers").fetchone()[0]
    assert json.loads(db.execute("SELECT pii FROM sources").fetchone()[0]) == \
        {"phone": 2, "address": 2, "handle": 2, "age": 2}
    db.conn.close()

    again = json.loads(_cli(db_path, "scrub", "--json"))
    assert again["documents"] == 8 and again["changed"] == 0
    assert set(again["replaced"].values()) == {0} and again["answers_changed"] == 0


def test_an_interrupted_scrub_goes_on_where_it_stopped(tmp_path):
    path = _write(tmp_path / "keto.ndjson", _records(40))
    db_path = tmp_path / "s.db"
    _cli(db_path, "ingest", "--keep-pii", str(path))
    db = open_store(db_path)

    def stop(table, done, total):
        if done >= 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rescrub(db, batch=10, on_batch=stop)
    assert json.loads(db.execute("SELECT value FROM meta WHERE key = ?",
                                 [PROGRESS_KEY]).fetchone()[0])["rowid"] == 10
    first = db.execute("SELECT count(*) FROM documents WHERE text LIKE '%[phone]%'").fetchone()[0]
    rest = rescrub(db, batch=10)
    assert rest.resumed and rest.documents == 30
    assert first + rest.pii["phone"] == 10  # every phone number replaced exactly once
    assert db.execute("SELECT count(*) FROM meta WHERE key = ?", [PROGRESS_KEY]).fetchone()[0] == 0
    assert sum(json.loads(db.execute("SELECT pii FROM sources").fetchone()[0]).values()) == 40


def test_worker_processes_count_what_they_replaced(tmp_path, monkeypatch):
    import cci_local.ingest as ingest_module
    from cci_local.ingest import readers

    monkeypatch.setattr(ingest_module, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(readers, "NDJSON_BLOCK", 16 << 10)  # many chunks, several workers
    path = _write(tmp_path / "dump.ndjson", _records(3000))
    results = []
    for workers in (1, 2):
        db = open_store(tmp_path / f"w{workers}.db")
        db.execute("INSERT INTO meta VALUES ('pseudonym_key', ?)", ["ab" * 32])
        db.conn.commit()
        report = ingest(db, [str(path)], workers=workers)
        assert dict(report.pii()) == {"phone": 750, "address": 750, "handle": 750, "age": 750}
        stored = json.loads(db.execute("SELECT pii FROM sources").fetchone()[0])
        results.append((stored, db.execute("SELECT * FROM documents ORDER BY id").fetchall()))
    assert results[0] == results[1]
