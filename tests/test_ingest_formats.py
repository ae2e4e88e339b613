"""Dump formats: NDJSON plain/.zst/.gz, Reddit JSON threads, directories, content sniffing."""

from __future__ import annotations

import gzip
import io

import orjson
import pytest
import zstandard
from conftest import ndjson, real_comments, zstd_long

from cci_local.ingest import BadInput, ingest
from cci_local.ingest.readers import open_decompressed


def stored(db):
    return db.execute("SELECT id, community, kind, text, created_utc, score, link_id,"
                      " parent_id, author FROM documents ORDER BY id").fetchall()


def test_zst_with_2gib_window(tmp_path, db):
    records = real_comments(3000)
    data = zstd_long(ndjson(records), window_log=31)
    # A decompressor with zstd's default limit refuses these files.
    with pytest.raises(zstandard.ZstdError, match="too much memory"):
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    path = tmp_path / "keto_comments.zst"
    path.write_bytes(data)
    report = ingest(db, [str(path)])
    rep = report.sources[0]
    assert (rep.format, rep.compression, rep.bad, rep.records) == ("ndjson", "zstd", 0, 3000)
    assert rep.added > 2500
    row = db.execute("SELECT id, community, kind, created_utc, score, link_id, parent_id,"
                     " source_line FROM documents WHERE id = 't1_c0000004'").fetchone()
    assert row == ("t1_c0000004", "keto", "comment", 1640995228, 4, "t3_p00000", "t3_p00000", 5)


def test_same_records_same_documents_whatever_the_wrapping(tmp_path):
    from cci_local.store import open_store

    records = real_comments(500)
    raw = ndjson(records)
    frames = zstandard.ZstdCompressor().compress(raw[: len(raw) // 2]) + \
        zstandard.ZstdCompressor().compress(raw[len(raw) // 2:])
    variants = {"plain.ndjson": raw, "dump.gz": gzip.compress(raw),
                "frames.zst": frames,  # concatenated frames, as `cat a.zst b.zst` gives
                "no_extension": zstd_long(raw), "misnamed.csv": zstd_long(raw)}
    results = []
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        db = open_store(tmp_path / f"{name}.db")
        report = ingest(db, [str(tmp_path / name)])
        assert report.sources[0].format == "ndjson", name
        # Each store has its own pseudonym key, so compare all but the author.
        results.append([row[:-1] for row in stored(db)])
    assert all(r == results[0] for r in results)
    assert len(results[0]) > 400


def test_submissions_title_and_selftext(tmp_path, db):
    subs = [
        {"id": "abc", "subreddit": "keto", "title": "Down 30 pounds since January",
         "selftext": "Strict under 20g carbs, lots of eggs and butter. AMA!", "author": "x_y",
         "created_utc": "1641000000", "score": 12},
        {"id": "abd", "subreddit": "keto", "title": "Gone", "selftext": "[removed]"},
        {"id": "abe", "subreddit": "keto", "title": "Link post about ketone esters study",
         "selftext": "", "url": "https://example.org/x"},
        {"id": "abf", "subreddit": "keto", "title": "Weekly thread for new members of keto",
         "selftext": "Post your questions here.", "author": "AutoModerator"},
    ]
    path = tmp_path / "keto_submissions"
    path.write_bytes(ndjson(subs))
    report = ingest(db, [str(path)])
    assert report.sources[0].dropped == {"deleted or removed": 1, "bot author": 1}
    rows = {r[0]: r for r in stored(db)}
    assert rows["t3_abc"][2:5] == ("submission", "Down 30 pounds since January\nStrict under 20g "
                                   "carbs, lots of eggs and butter. AMA!", 1641000000)
    assert rows["t3_abe"][3] == "Link post about ketone esters study"


def reddit_thread() -> list:
    def comment(cid, parent, body, replies=""):
        return {"kind": "t1", "data": {
            "id": cid, "name": f"t1_{cid}", "parent_id": parent, "link_id": "t3_post1",
            "subreddit": "nutrition", "author": f"user_{cid}", "body": body,
            "created_utc": 1650000000.0, "score": 3, "replies": replies}}

    def listing(children):
        return {"kind": "Listing", "data": {"children": children}}

    post = {"kind": "t3", "data": {
        "id": "post1", "name": "t3_post1", "subreddit": "nutrition", "author": "op_person",
        "title": "Is oatmeal every morning actually healthy?",
        "selftext": "I eat a big bowl with honey daily, wondering about the sugar.",
        "created_utc": 1649990000.0, "score": 40}}
    deep = comment("c3", "t1_c2", "Steel cut oats keep me full until lunch, no crash.")
    return [
        listing([post]),
        listing([
            comment("c1", "t3_post1", "Oats are fine, watch how much honey you add though.",
                    listing([comment("c2", "t1_c1", "Agreed, swap honey for berries and "
                                     "cinnamon.", listing([deep]))])),
            comment("c4", "t3_post1", "[deleted]"),
            {"kind": "more", "data": {"count": 12, "children": ["c9", "c10"]}},
        ]),
    ]


def test_reddit_json_thread_flattened(tmp_path, db):
    path = tmp_path / "thread.json"
    path.write_bytes(orjson.dumps(reddit_thread(), option=orjson.OPT_INDENT_2))
    report = ingest(db, [str(path)])
    assert report.sources[0].format == "reddit-json"
    assert report.sources[0].dropped == {"deleted or removed": 1}
    rows = db.execute("SELECT id, kind, parent_id, link_id, source_line FROM documents"
                      " ORDER BY source_line").fetchall()
    assert rows == [("t3_post1", "submission", None, None, 1),
                    ("t1_c1", "comment", "t3_post1", "t3_post1", 2),
                    ("t1_c2", "comment", "t1_c1", "t3_post1", 3),
                    ("t1_c3", "comment", "t1_c2", "t3_post1", 4)]


def test_directory_recursive_mixed(tmp_path, db):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "thread.json").write_bytes(orjson.dumps(reddit_thread()))
    (tmp_path / "a" / "b" / "dump.zst").write_bytes(zstd_long(ndjson(real_comments(50))))
    (tmp_path / "a" / "b" / "export.csv").write_text(
        "Subreddit,Text\nketo,Coffee with heavy cream keeps me going all morning\n")
    (tmp_path / "a" / "notes.md").write_text("# just notes\n")
    (tmp_path / "a" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    (tmp_path / "a" / ".hidden.ndjson").write_bytes(ndjson(real_comments(5)))
    report = ingest(db, [str(tmp_path / "a")])
    status = {s.name: s.status + ": " + s.note for s in report.sources}
    assert status["b/dump.zst"] == status["b/export.csv"] == status["thread.json"] == "ingested: "
    assert status["notes.md"].startswith("skipped: no records found: no text column")
    assert status["image.png"].startswith("skipped: this is a binary file")
    assert ".hidden.ndjson" not in status
    assert db.execute("SELECT count(*) FROM documents").fetchone()[0] == 4 + 1 + 50 - sum(
        1 for r in real_comments(50) if len(r["body"].split()) < 4)


def test_community_option_fills_and_filters(tmp_path, db):
    path = tmp_path / "mixed.ndjson"
    records = real_comments(40)
    for i, r in enumerate(records):
        if i % 2:
            del r["subreddit"]
    path.write_bytes(ndjson(records))
    with pytest.raises(BadInput, match="no community"):
        ingest(db, [str(path)], strict=True)
    report = ingest(db, [str(path)], community="r/Keto", force=True)
    # Records without a subreddit join r/Keto; those of r/nutrition are skipped;
    # r/keto and r/Keto are one community.
    assert report.sources[0].dropped["other community"] == sum(
        1 for r in records if r.get("subreddit") == "nutrition")
    assert [r[0] for r in db.execute("SELECT name FROM communities")] == ["keto"]


def test_decompressed_stream_is_flat_in_memory(tmp_path):
    # Reading is streamed: the decompressed file is never held whole.
    data = zstd_long(ndjson(real_comments(20000)))
    (tmp_path / "big.zst").write_bytes(data)
    stream, raw, kind = open_decompressed(tmp_path / "big.zst")
    first = stream.readline()
    assert kind == "zstd" and first.startswith(b"{") and raw.tell() < len(data)
    raw.close()


def test_worker_processes_give_the_same_store(tmp_path, monkeypatch):
    import cci_local.ingest as ingest_module
    from cci_local.ingest import readers
    from cci_local.store import open_store

    monkeypatch.setattr(ingest_module, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(readers, "NDJSON_BLOCK", 32 << 10)  # many blocks, out of order risk
    records = real_comments(3000)
    records[1500]["score"] = "many"  # one malformed record in the middle
    path = tmp_path / "dump.zst"
    path.write_bytes(zstd_long(ndjson(records)))
    results = []
    for workers in (1, 2):
        db = open_store(tmp_path / f"w{workers}.db")
        db.execute("INSERT INTO meta VALUES ('pseudonym_key', ?)", ["ab" * 32])
        db.conn.commit()
        rep = ingest(db, [str(path)], workers=workers).sources[0]
        assert rep.error_lines() == [f"{path}:1501: field 'score': expected an integer, got 'many'"]
        results.append(db.execute("SELECT * FROM documents ORDER BY rowid").fetchall())
    assert results[0] == results[1] and len(results[0]) > 2500

    db = open_store(tmp_path / "strict.db")
    with pytest.raises(BadInput, match=":1501: field 'score'"):
        ingest(db, [str(path)], workers=2, strict=True)
    lines = [r[0] for r in db.execute("SELECT source_line FROM documents")]
    assert max(lines) == 1500 and len(lines) > 1200


def test_limit_reads_at_most_n_records_per_file(tmp_path, db):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.ndjson").write_bytes(ndjson(real_comments(300)))
    (tmp_path / "in" / "b.csv").write_text("subreddit,body\n" + "".join(
        f"keto,comment number {i} about bacon and eggs\n" for i in range(300)))
    report = ingest(db, [str(tmp_path / "in")], limit=120)
    assert [s.records for s in report.sources] == [120, 120]
    assert db.execute("SELECT max(source_line) FROM documents d JOIN sources s"
                      " ON s.id = d.source_id WHERE s.format = 'ndjson'").fetchone()[0] <= 120


def test_ndjson_blocks_cut_only_between_lines(monkeypatch):
    from cci_local.ingest import readers

    lines = [orjson.dumps({"i": i, "body": "x" * (i * 37 % 900)}) for i in range(400)]
    lines[123] = orjson.dumps({"i": 123, "body": "y" * 5000})  # longer than a block
    data = b"\n".join(lines)  # no newline at the very end
    blocks = list(readers.read_ndjson(io.BufferedReader(io.BytesIO(data), 64), block_size=1000))
    assert b"".join(b.data for b in blocks) == data
    assert all(b.data.endswith(b"\n") for b in blocks[:-1])
    starts = [b.first_line for b in blocks]
    assert starts[0] == 1 and starts == sorted(starts)
    for block in blocks:  # each block knows the number of its first line
        first = orjson.loads(block.data.split(b"\n", 1)[0])
        assert first["i"] == block.first_line - 1
    limited = list(readers.read_ndjson(io.BufferedReader(io.BytesIO(data)), limit=130,
                                       block_size=1000))
    assert sum(b.data.count(b"\n") for b in limited) == 130
