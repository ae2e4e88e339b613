"""Shapes beyond Reddit's own: scraper posts with nested comment trees, mapped CSV and
JSON exports, the community from a file's name, and files that give no record.

Fixtures are written here in the documented shapes, with text from the shared corpora."""

from __future__ import annotations

import csv

import orjson
import pytest
from conftest import CORPUS_POSTS, cci, shared_rows

from cci_local.ingest import BadInput, FieldMap, ingest
from cci_local.ingest.shapes import MappingError, community_from_path, expand
from cci_local.store import open_store

COMMENTS = [r["body"] for r in shared_rows(CORPUS_POSTS / "keto_comments.csv")
            if len(r["body"].split()) >= 8][:60]
POSTS = [(r["title"], r["selftext"]) for r in shared_rows(CORPUS_POSTS / "keto_subs.csv")
         if len(r["selftext"].split()) >= 8][:10]


def write_csv(path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def scraper_post(k: int, depth: int = 3) -> dict:
    """The one-post-per-file shape of a popular scraper: numbers and dates as strings,
    comments nested under `replies` (or `children`), text in `comment` (or `body`)."""
    texts = iter(COMMENTS[k * 6:])

    def comment(level: int, i: int) -> dict:
        node = {"level": level, "score": str(10 - level), "author": f"member_{k}_{level}_{i}",
                ("comment" if i % 2 == 0 else "body"): next(texts)}
        if level < depth:
            node["replies" if level % 2 else "children"] = [comment(level + 1, 0)]
        return node

    title, text = POSTS[k]
    return {"id": f"13ab{k}", "title": title, "author": f"poster_{k}", "score": "183",
            "date": f"{1685809890 + k * 60}.0", "postText": text,
            "url": f"https://www.reddit.com/r/keto/comments/13ab{k}/",
            "comments": [comment(1, 0), comment(1, 1)]}


def test_scraper_posts_with_nested_comment_trees(tmp_path, db):
    folder = tmp_path / "data" / "r-keto"
    folder.mkdir(parents=True)
    for k in range(3):  # one post per file ...
        (folder / f"post_{k}.json").write_bytes(orjson.dumps(scraper_post(k),
                                                             option=orjson.OPT_INDENT_2))
    # ... or a list of them
    (folder / "more.json").write_bytes(orjson.dumps([scraper_post(3), scraper_post(4)]))
    report = ingest(db, [str(tmp_path / "data")])
    assert {s.format for s in report.sources} == {"json"}
    assert all(s.community == "keto" for s in report.sources)
    # a post and two chains of three comments each: 7 records per post
    assert report.total("records") == 5 * 7 and report.total("bad") == 0
    assert report.total("added") == 35
    assert report.total("named") == 35  # no record carries a community: all took r-keto's
    rows = db.execute("SELECT id, kind, community, created_utc, score, link_id, parent_id, author"
                      " FROM documents WHERE id LIKE '%13ab1%' ORDER BY id").fetchall()
    by_id = {r[0]: r for r in rows}
    post = by_id["t3_13ab1"]
    assert post[1:5] == ("submission", "keto", 1685809950, 183) and post[5] is None
    assert post[7] and post[7] != "poster_1"  # pseudonymised
    first, reply, deepest = by_id["t1_13ab1_0"], by_id["t1_13ab1_0.0"], by_id["t1_13ab1_0.0.0"]
    assert first[1] == "comment" and first[4] == 9
    assert first[5:7] == ("t3_13ab1", "t3_13ab1")
    assert reply[5:7] == ("t3_13ab1", "t1_13ab1_0") and reply[4] == 8
    assert deepest[5:7] == ("t3_13ab1", "t1_13ab1_0.0")
    assert len([r for r in rows if r[1] == "comment"]) == 6
    text = db.execute("SELECT text FROM documents WHERE id = 't3_13ab1'").fetchone()[0]
    assert text.startswith(POSTS[1][0]) and POSTS[1][1].split()[0] in text
    again = ingest(db, [str(tmp_path / "data")])  # a re-run adds nothing
    assert again.total("added") == 0


def test_the_same_shape_as_ndjson_lines_expands_too(tmp_path, db):
    path = tmp_path / "keto_posts.jsonl"
    path.write_bytes(b"".join(orjson.dumps(scraper_post(k, depth=2)) + b"\n" for k in range(4)))
    rep = ingest(db, [str(path)]).sources[0]
    assert rep.format == "ndjson" and rep.community == "keto"
    assert (rep.records, rep.added, rep.bad) == (4 * 5, 4 * 5, 0)


def test_expand_keeps_given_ids_and_reads_reddit_style_ids():
    post = {"name": "t3_zz1", "title": "Fasting", "selftext": "a b c d e",
            "comments": [{"id": "c1", "body": "one two three four",
                          "replies": [{"id": "t1_c2", "body": "five six seven eight"}]}]}
    records = list(expand(post))
    assert [r["id"] for r in records] == ["zz1", "c1", "c2"]
    assert [r.get("parent_id") for r in records] == [None, "t3_zz1", "t1_c1"]


def test_files_with_no_records_are_error_lines_and_lose_nothing(tmp_path, db):
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "keto_comments.csv", ["body"], [[c] for c in COMMENTS[:5]])
    numbers = data / "numbers.json"
    numbers.write_text("[1,2,3]")
    other = data / "export.json"
    other.write_bytes(orjson.dumps({"meta": {"v": 1}, "rows": "none"}))
    report = ingest(db, [str(data)])
    by_name = {s.name: s for s in report.sources}
    assert by_name["keto_comments.csv"].added == 5
    for name, shape in (("numbers.json", "an array of 3 numbers"),
                        ("export.json", "top-level keys ['meta', 'rows']")):
        s = by_name[name]
        assert s.status == "no records" and s in report.empty
        assert s.note.startswith("no records found") and shape in s.note, s.note
        assert "expected objects with a text field" in s.note and "--text FIELD" in s.note

    db_path = tmp_path / "cli.db"
    done = cci("ingest", str(data), db=db_path, check=False)
    assert done.returncode == 0  # documents were added; the empty files are error lines
    assert f"error: {numbers}: no records found" in done.stderr
    assert "an array of 3 numbers" in done.stderr
    alone = cci("ingest", str(numbers), db=db_path, check=False)
    assert alone.returncode == 2 and "no records found" in alone.stderr
    strict = cci("ingest", "--strict", str(other), db=db_path, check=False)
    assert strict.returncode == 2 and "--strict" in strict.stderr
    kept = open_store(db_path).execute("SELECT count(*) FROM documents").fetchone()[0]
    assert kept == 5  # what was stored before is still there


def test_community_from_the_file_or_folder_name(tmp_path, db):
    assert community_from_path(tmp_path / "AnorexiaNervosa_submission.csv") == "AnorexiaNervosa"
    assert community_from_path(tmp_path / "EDAnonymous_comments.zst") == "EDAnonymous"
    assert community_from_path(tmp_path / "r_Liberal.jsonl.gz") == "Liberal"
    assert community_from_path(tmp_path / "r-keto" / "a" / "x.json", tmp_path) == "keto"
    assert community_from_path(tmp_path / "subr_keto.csv") is None
    assert community_from_path(tmp_path / "posts.csv") is None

    path = tmp_path / "AnorexiaNervosa_submission.csv"
    write_csv(path, ["title", "selftext", "author"],
              [[t, b, f"user{i}"] for i, (t, b) in enumerate(POSTS[:4])])
    rep = ingest(db, [str(path)]).sources[0]
    assert (rep.added, rep.bad, rep.community) == (4, 0, "AnorexiaNervosa")
    assert db.execute("SELECT DISTINCT community FROM documents").fetchall() == \
        [("AnorexiaNervosa",)]
    # --community wins over the name
    winner = ingest(db, [str(path)], community="keto").sources[0]
    assert winner.added == 4
    assert db.execute("SELECT count(*) FROM documents WHERE community = 'keto'").fetchone()[0] == 4
    shown = cci("ingest", str(path), db=tmp_path / "cli.db").stdout
    assert "community r/AnorexiaNervosa from the file or folder name" in shown

    nameless = tmp_path / "export.csv"
    write_csv(nameless, ["title", "selftext"], [list(POSTS[0])])
    with pytest.raises(BadInput, match=r"export.csv: no community: no subreddit column .*"
                                       r"--community NAME"):
        ingest(db, [str(nameless)])


def test_mapped_csv_and_json(tmp_path, db):
    path = tmp_path / "export.csv"
    write_csv(path, ["pid", "headline", "postText", "when", "who", "votes", "forum"],
              [[i, t, b, f"2023-06-0{i + 1}T10:00:00Z", f"user{i}", str(i * 3), "Fasting"]
               for i, (t, b) in enumerate(POSTS[:3])])
    with pytest.raises(BadInput, match="no community: no subreddit column"):
        ingest(db, [str(path)])  # postText is a known name; 'forum' is not
    fields = FieldMap(text=("headline", "postText"), created="when", author="who", id="pid",
                      score="votes", community="forum")
    rep = ingest(db, [str(path)], fields=fields).sources[0]
    assert (rep.records, rep.added, rep.bad) == (3, 3, 0)
    assert rep.layout.startswith("mapped: text from 'headline' + 'postText'")
    row = db.execute("SELECT id, community, created_utc, score, text FROM documents"
                     " WHERE id = 't3_1'").fetchone()
    assert row[:4] == ("t3_1", "Fasting", 1685700000, 3)
    # "I'm 23, ..." is a stated age: ingest stores it as "I'm [age], ..." (pii.py).
    assert row[4].startswith(POSTS[1][0]) and POSTS[1][1][:20].replace("23", "[age]") in row[4]
    with pytest.raises(BadInput, match=r"no column 'body_text' among"):
        ingest(db, [str(path)], fields=FieldMap(text=("body_text",)))

    # the same from the command line, with a mapping file for JSON lines
    db_path = tmp_path / "cli.db"
    done = cci("ingest", str(path), "--text", "headline", "--text", "postText", "--created",
               "when", "--id", "pid", "--community-field", "forum", db=db_path)
    assert "mapped: text from 'headline' + 'postText'" in done.stdout
    lines = tmp_path / "r_Fasting.jsonl"
    lines.write_bytes(b"".join(orjson.dumps({"msg": c, "ts": str(1700000000 + i),
                                             "reply_to": f"t3_x{i}"}) + b"\n"
                               for i, c in enumerate(COMMENTS[:6])))
    toml = tmp_path / "map.toml"
    toml.write_text('text = "msg"\ncreated = "ts"\nparent = "reply_to"\n')
    cci("ingest", str(lines), "--fields", str(toml), db=db_path)
    rows = open_store(db_path).execute(
        "SELECT community, kind, count(*), min(created_utc), max(parent_id) FROM documents"
        " GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    assert rows == [("Fasting", "comment", 6, 1700000000, "t3_x5"),
                    ("Fasting", "submission", 3, 1685613600, None)]
    bad = tmp_path / "bad.toml"
    bad.write_text('txt = "msg"\n')
    with pytest.raises(MappingError, match="unknown keys"):
        FieldMap.from_file(bad)


def test_only_the_communities_asked_for(tmp_path, db):
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "keto_comments.csv", ["body"], [[c] for c in COMMENTS[:4]])
    write_csv(data / "nutrition_comments.csv", ["body"], [[c] for c in COMMENTS[4:8]])
    write_csv(data / "mixed.csv", ["subreddit", "body"],
              [["keto" if i % 2 else "nutrition", c] for i, c in enumerate(COMMENTS[8:14])])
    report = ingest(db, [str(data)], only=["r/keto"])
    status = {s.name: s.status for s in report.sources}
    assert status == {"keto_comments.csv": "ingested", "nutrition_comments.csv": "left",
                      "mixed.csv": "ingested"}
    mixed = next(s for s in report.sources if s.name == "mixed.csv")
    assert mixed.added == 3 and mixed.dropped["other community"] == 3
    assert db.execute("SELECT DISTINCT community FROM documents").fetchall() == [("keto",)]
    # asking for the other community later reads the shared file again for its records
    later = ingest(db, [str(data)], only=["nutrition"])
    assert {s.name: s.added for s in later.sources} == {
        "keto_comments.csv": 0, "nutrition_comments.csv": 4, "mixed.csv": 3}
