"""Malformed input: each case is skipped, counted, reported as file:line: reason, and
nothing stored before it is lost.  --strict stops at the first one with exit code 2."""

from __future__ import annotations

import gzip

import orjson
import pytest
from click.testing import CliRunner
from conftest import ndjson, real_comments, zstd_long

from cci_local.cli import cli
from cci_local.ingest import BadInput, ingest


def count(db):
    return db.execute("SELECT count(*) FROM documents").fetchone()[0]


GOOD = real_comments(200)
GOOD = [r for r in GOOD if len(r["body"].split()) >= 4][:8]


def lines_with(bad: list[bytes]) -> bytes:
    """good, bad[0], good, bad[1], ..., good: bad record k sits on line 2k + 2."""
    out = [orjson.dumps(GOOD[0])]
    for i, b in enumerate(bad):
        out += [b, orjson.dumps(GOOD[i + 1])]
    return b"\n".join(out) + b"\n"


BAD_RECORDS = [
    (b'{"id": "x1", "subreddit": "keto", "body": "unterminated', "invalid JSON"),
    (b'{"id": "x2", "subreddit": 7, "body": "fine words in this one"}',
     "field 'subreddit': expected a name, got 7"),
    (b'{"id": "x3", "subreddit": "keto", "body": "fine text here", "created_utc": "yesterday"}',
     "field 'created_utc': expected a Unix timestamp or ISO date, got 'yesterday'"),
    (b'{"id": "x4", "subreddit": "keto", "body": 12345}', "field 'body': expected text, got 12345"),
    (b'{"id": "x5", "subreddit": "keto", "author": "someone"}',
     "no text field among its keys ['author', 'id', 'subreddit']; map one with --text FIELD"),
    (b'["not", "an", "object"]', "expected a JSON object, got an array"),
]


def test_each_malformed_record_reported_with_file_and_line(tmp_path, db):
    path = tmp_path / "mixed.ndjson"
    path.write_bytes(lines_with([b for b, _ in BAD_RECORDS]))
    rep = ingest(db, [str(path)]).sources[0]
    assert rep.bad == len(BAD_RECORDS)
    assert rep.added == len(BAD_RECORDS) + 1  # every good record around them
    lines = rep.error_lines()[:5]
    for k, (line, (_, reason)) in enumerate(zip(lines, BAD_RECORDS[:5], strict=True)):
        assert line.startswith(f"{path}:{2 * k + 2}: {reason}"), line
    stored = db.execute("SELECT line, reason FROM ingest_errors ORDER BY line").fetchall()
    assert [r[0] for r in stored] == [2, 4, 6, 8, 10, 12]
    assert stored[5][1] == "expected a JSON object, got an array"


def test_strict_stops_at_first_bad_record_and_keeps_the_rest(tmp_path):
    path = tmp_path / "mixed.ndjson"
    path.write_bytes(lines_with([BAD_RECORDS[2][0]]))
    db_path = tmp_path / "s.db"
    result = CliRunner().invoke(cli, ["--db", str(db_path), "ingest", "--strict", str(path)])
    assert result.exit_code == 2
    assert f"{path}:2: field 'created_utc'" in result.output
    assert "--strict: stopped here; documents stored from this file: 1)" in result.output
    from cci_local.store import open_store
    db = open_store(db_path)
    assert count(db) == 1
    # Without --strict the same file goes through, adding only what is missing.
    result = CliRunner().invoke(cli, ["--db", str(db_path), "ingest", str(path)])
    assert result.exit_code == 0, result.output
    assert count(db) == 2


@pytest.mark.parametrize("compress", ["zst", "gz"])
def test_truncated_compressed_file(tmp_path, db, compress):
    records = real_comments(4000)
    raw = ndjson(records)
    data = zstd_long(raw) if compress == "zst" else gzip.compress(raw)
    path = tmp_path / f"cut.ndjson.{compress}"
    path.write_bytes(data[: int(len(data) * 0.6)])
    rep = ingest(db, [str(path)]).sources[0]
    assert rep.records > 1000 and rep.added > 1000  # everything before the cut is kept
    assert rep.bad >= 1
    reasons = " | ".join(r for _, r in rep.errors)
    assert "truncated file?" in reasons
    # The last error names the line where reading stopped.
    last_line, last_reason = rep.errors[-1]
    assert last_line > rep.records - 2 and "truncated" in last_reason
    assert count(db) == rep.added


def test_csv_malformed_rows(tmp_path, db):
    path = tmp_path / "export.csv"
    path.write_bytes(
        b"subreddit,body,created_utc,score\n"
        b"keto,Bacon and eggs at the caf\xc3\xa9 every morning for a year,1641000000,5\n"
        b"keto,\"Multi-line comment\nthat spans two lines of the file\",1641000001,2\n"
        b"keto,Invalid bytes \xff\xfe inside this row,1641000002,1\n"
        b"keto,Too few columns here\n"
        b"keto,Score that is not a number at all,1641000003,lots\n"
        b"keto,Last row is perfectly fine and stored,2022-01-02T10:00:00Z,7\n")
    rep = ingest(db, [str(path)]).sources[0]
    # UTF-8 (the cafe's e is), with two stray bytes: they become U+FFFD, the row stays
    assert rep.encoding == "" and rep.undecodable == 2
    assert rep.error_lines() == [
        f"{path}:6: expected 4 columns, found 2",
        f"{path}:7: field 'score': expected an integer, got 'lots'",
    ]
    rows = db.execute("SELECT text, created_utc, source_line FROM documents ORDER BY source_line")
    assert rows.fetchall() == [
        ("Bacon and eggs at the caf\u00e9 every morning for a year", 1641000000, 2),
        ("Multi-line comment\nthat spans two lines of the file", 1641000001, 3),
        ("Invalid bytes \ufffd\ufffd inside this row", 1641000002, 5),
        ("Last row is perfectly fine and stored", 1641117600, 8)]


def test_no_text_column_is_refused_and_nothing_is_lost(tmp_path):
    good = tmp_path / "good.ndjson"
    good.write_bytes(ndjson(GOOD))
    bad = tmp_path / "scores.csv"
    bad.write_text("subreddit,author,score\nketo,someone,3\n")
    db_path = tmp_path / "s.db"
    runner = CliRunner()
    assert runner.invoke(cli, ["--db", str(db_path), "ingest", str(good)]).exit_code == 0
    result = runner.invoke(cli, ["--db", str(db_path), "ingest", str(bad), str(good)])
    assert result.exit_code == 2
    assert f"{bad}: no records found: no text column among ['subreddit', 'author', 'score']" \
        in result.output and "--text FIELD" in result.output
    from cci_local.store import open_store
    assert count(open_store(db_path)) == len(GOOD)


def test_missing_file_and_empty_file(tmp_path, db):
    with pytest.raises(BadInput, match="nope.zst: no such file"):
        ingest(db, [str(tmp_path / "nope.zst")])
    (tmp_path / "empty.ndjson").write_bytes(b"")
    with pytest.raises(BadInput, match="the file is empty"):
        ingest(db, [str(tmp_path / "empty.ndjson")])


def test_interrupted_ingest_resumes_without_duplicates(tmp_path, db, monkeypatch):
    # Ctrl-C in the middle of a file: the batches already read stay stored, the
    # source stays incomplete, and the next run adds exactly what is missing.
    import cci_local.ingest as ingest_module
    from cci_local.ingest import readers
    from cci_local.ingest import records as records_module

    monkeypatch.setattr(ingest_module, "BATCH", 100)
    monkeypatch.setattr(ingest_module, "CHUNK_RECORDS", 100)
    monkeypatch.setattr(readers, "NDJSON_BLOCK", 16 << 10)
    path = tmp_path / "big.ndjson.zst"
    path.write_bytes(zstd_long(ndjson(real_comments(2000))))
    real_call = records_module.Converter.__call__
    calls = {"n": 0}

    def interrupting(self, record, fallback=None):
        calls["n"] += 1
        if calls["n"] == 1234:
            raise KeyboardInterrupt
        return real_call(self, record, fallback)

    monkeypatch.setattr(records_module.Converter, "__call__", interrupting)
    with pytest.raises(KeyboardInterrupt):
        ingest(db, [str(path)])
    partial = count(db)
    assert partial > 1000
    assert db.execute("SELECT complete FROM sources").fetchone()[0] == 0
    monkeypatch.setattr(records_module.Converter, "__call__", real_call)
    rep = ingest(db, [str(path)]).sources[0]
    fresh = ingest_module.ingest(__import__("cci_local.store", fromlist=["open_store"])
                                 .open_store(tmp_path / "fresh.db"), [str(path)])
    assert count(db) == fresh.total("added") == partial + rep.added
    assert rep.duplicates == partial
