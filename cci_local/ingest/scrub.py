"""Re-scrub a store: personal data in stored texts -> placeholders, in place.

``rescrub(db)`` runs the scrubber ingest uses (pii.py) over every document's
text, and over the community answers made from them (template pairs copy a post
word for word; the teacher's answers may quote one), so that a store ingested
with ``--keep-pii``, or before ingest scrubbed, holds what a fresh ingest would.
Nothing else changes: ids, communities, authors' pseudonyms, topics, embeddings,
instructions and adapters stay as they are.

Batches of rows, one transaction each; the last row done is kept in the ``meta``
table until the run ends, so an interrupted run goes on from there.  A finished
run removes it, and a second run reads everything again and replaces nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
import sqlite_utils

from .pii import PiiScrubber

BATCH = 2000  # rows per transaction
PROGRESS_KEY = "pii_rescrub"  # meta: {"names": bool, "table": ..., "rowid": n} while running
# What is scrubbed, in order: the table, its text column.
TABLES = (("documents", "text"), ("community_answers", "answer"))


@dataclass
class RescrubReport:
    documents: int = 0  # documents read
    changed: int = 0  # documents whose text changed
    answers: int = 0  # community answers read
    answers_changed: int = 0
    pii: Counter = field(default_factory=Counter)  # replaced in documents, per entity
    answers_pii: Counter = field(default_factory=Counter)  # replaced in answers
    resumed: bool = False  # went on from an interrupted run
    seconds: float = 0.0


def rescrub(db: sqlite_utils.Database, *, names: bool = False, batch: int = BATCH,
            on_batch=None) -> RescrubReport:
    """Replace personal data in stored texts by placeholders; see the module docstring.

    ``names``: person names too (as ``ingest --scrub-names``).  ``on_batch(table,
    rows_done, rows_total)`` is called after each transaction (a progress bar)."""
    started = time.monotonic()
    report = RescrubReport()
    conn = db.conn
    state = _progress(db)
    if state is not None and state.get("names") != names:
        state = None  # another scrubber: start again (a full pass replaces only what is left)
    report.resumed = state is not None
    first = [t for t, _ in TABLES].index(state["table"]) if state is not None else 0
    scrubber = PiiScrubber(names)
    for i, (table, column) in enumerate(TABLES):
        if i < first:
            continue  # done before the interruption
        last = state["rowid"] if state is not None and i == first else 0
        total = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        done = conn.execute(f"SELECT count(*) FROM {table} WHERE rowid <= ?", [last]).fetchone()[0]
        source = ", source_id" if table == "documents" else ", NULL"
        while True:
            rows = conn.execute(
                f"SELECT rowid, {column}{source} FROM {table} WHERE rowid > ?"
                f" ORDER BY rowid LIMIT ?", [last, batch]).fetchall()
            if not rows:
                break
            updates, per_source = [], {}
            for rowid, text, source_id in rows:
                new, found = scrubber.replace(text)
                if found:
                    updates.append((new, rowid))
                    counts = Counter(found)
                    if table == "documents":
                        report.pii.update(counts)
                        per_source.setdefault(source_id, Counter()).update(counts)
                    else:
                        report.answers_pii.update(counts)
            last = rows[-1][0]
            with conn:  # one transaction: the texts, the counts and where this run is
                conn.executemany(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", updates)
                for source_id, counts in per_source.items():
                    if source_id is not None:
                        _add_source_counts(conn, source_id, counts)
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             [PROGRESS_KEY, orjson.dumps({"names": names, "table": table,
                                                          "rowid": last}).decode()])
            done += len(rows)
            if table == "documents":
                report.documents += len(rows)
                report.changed += len(updates)
            else:
                report.answers += len(rows)
                report.answers_changed += len(updates)
            if on_batch is not None:
                on_batch(table, done, total)
    with conn:  # every source's texts are scrubbed now; the run is over
        conn.execute("UPDATE sources SET pii = '{}' WHERE pii IS NULL")
        conn.execute("DELETE FROM meta WHERE key = ?", [PROGRESS_KEY])
    report.seconds = time.monotonic() - started
    return report


def _progress(db: sqlite_utils.Database) -> dict | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [PROGRESS_KEY]).fetchone()
    if row is None:
        return None
    try:
        state = orjson.loads(row[0])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(state, dict) or state.get("table") not in dict(TABLES):
        return None
    return state


def _add_source_counts(conn, source_id: int, counts: Counter) -> None:
    row = conn.execute("SELECT pii FROM sources WHERE id = ?", [source_id]).fetchone()
    if row is None:
        return
    stored = Counter(orjson.loads(row[0])) if row[0] else Counter()
    stored.update(counts)
    conn.execute("UPDATE sources SET pii = ? WHERE id = ?",
                 [orjson.dumps(dict(stored)).decode(), source_id])
