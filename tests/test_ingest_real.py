"""Ingest of the real shared corpora (../shared/data/reddit)."""

from __future__ import annotations

import csv

from conftest import CORPUS_2022, CORPUS_POSTS, all_text, read_csv_rows, tokens

from cci_local.ingest import ingest
from cci_local.ingest.clean import REMOVED_MARKERS, clean_text
from cci_local.ingest.pii import PiiScrubber


def doc_count(db, community=None):
    if community:
        return db.execute("SELECT count(*) FROM documents WHERE community = ?",
                          [community]).fetchone()[0]
    return db.execute("SELECT count(*) FROM documents").fetchone()[0]


def test_pushshift_submission_csvs(db):
    report = ingest(db, [str(CORPUS_2022)])
    by_name = {s.path.rsplit("/", 1)[-1]: s for s in report.sources}
    keto, nutrition = by_name["subr_keto.csv"], by_name["subr_nutrition.csv"]
    for name, rep in (("subr_keto.csv", keto), ("subr_nutrition.csv", nutrition)):
        rows = read_csv_rows(CORPUS_2022 / name)
        removed = sum(r["selftext"].strip() in REMOVED_MARKERS for r in rows)
        assert rep.records == len(rows) == 2000
        assert rep.bad == 0
        assert rep.dropped["deleted or removed"] == removed
        assert rep.records == rep.added + rep.duplicates + sum(rep.dropped.values())
        assert rep.layout == "text from 'title' + 'selftext', community from 'subreddit'"
    # Measured on the shared files: 838 / 1,173 removed posts, AutoModerator and
    # DietTrackerBot posts, a few exact reposts.
    assert (keto.added, nutrition.added) == (1125, 818)
    assert keto.dropped["bot author"] == 32
    assert doc_count(db, "keto") == 1125 and doc_count(db, "nutrition") == 818
    kinds = db.execute("SELECT DISTINCT kind FROM documents").fetchall()
    assert kinds == [("submission",)]
    assert db.execute("SELECT min(created_utc) FROM documents").fetchone()[0] >= 1640995200


def test_posts_and_comments_csvs_with_other_columns(db):
    report = ingest(db, [str(CORPUS_POSTS)])
    skipped = [s for s in report.sources if s.status == "skipped"]
    assert [s.name for s in skipped] == ["LICENSE"]
    assert skipped[0].note.startswith("no records found: no text column among ['MIT License']")
    layouts = {s.path.rsplit("/", 1)[-1]: s.layout for s in report.sources if s.layout}
    assert layouts["keto_comments.csv"] == "text from 'body', community from 'subreddit'"
    assert layouts["nutrition_subs.csv"].startswith("text from 'title' + 'selftext'")
    counts = dict(db.execute(
        "SELECT community || '/' || kind, count(*) FROM documents GROUP BY 1").fetchall())
    assert counts == {"keto/comment": 3876, "keto/submission": 3841,
                      "nutrition/comment": 4043, "nutrition/submission": 3068}
    # Every comment row is either stored, too short, or an exact repeat of a stored one.
    rep = next(s for s in report.sources if s.path.endswith("keto_comments.csv"))
    assert rep.records == len(read_csv_rows(CORPUS_POSTS / "keto_comments.csv"))
    assert rep.added + rep.duplicates + rep.dropped["empty or too short"] == rep.records


def test_reingest_adds_nothing(db):
    ingest(db, [str(CORPUS_2022)])
    before = doc_count(db)
    again = ingest(db, [str(CORPUS_2022)])
    assert {s.status for s in again.sources} == {"already ingested"}
    forced = ingest(db, [str(CORPUS_2022)], force=True)
    assert forced.total("added") == 0
    assert forced.total("records") == 4000
    assert doc_count(db) == before
    assert db.execute("SELECT count(*) FROM sources").fetchone()[0] == 2


def test_no_raw_username_in_store(tmp_path, db):
    ingest(db, [str(CORPUS_2022)])
    authors = set()
    for name in ("subr_keto.csv", "subr_nutrition.csv"):
        authors |= {r["author"] for r in read_csv_rows(CORPUS_2022 / name)}
    authors.discard("[deleted]")
    assert len(authors) > 3000
    stored = tokens(all_text(tmp_path / "store.db"))
    leaked = sorted(a for a in authors if a in stored)
    assert leaked == []
    # Pseudonyms are stable: one author, one pseudonym.
    n_authors = db.execute("SELECT count(DISTINCT author) FROM documents").fetchone()[0]
    assert 1000 < n_authors < len(authors)


def test_provenance_points_at_the_row(db):
    ingest(db, [str(CORPUS_2022 / "subr_nutrition.csv")])
    with open(CORPUS_2022 / "subr_nutrition.csv", newline="", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    checked = 0
    for doc_text, line in db.execute("SELECT text, source_line FROM documents"):
        # The row starts at that physical line; its (cleaned) title opens the document.
        row = next(csv.reader([lines[line - 1]]))
        assert row[0].isdigit() and row[-1] == "nutrition" or len(row) < 11, (line, row)
        if len(row) >= 2 and clean_text(row[1]):
            # Personal data is scrubbed on ingest: a title may open with "25F" -> "[age]F".
            title = PiiScrubber()(clean_text(row[1]))
            assert doc_text.startswith(title.split()[0]), (line, row[:2])
            checked += 1
    assert checked == 818
