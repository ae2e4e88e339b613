"""The store: one SQLite file holding everything cci-local knows.

Here: opening the store (``open_store``, ``resolve_path``), bringing its schema up
to date (``migrate``), the pseudonym key, communities (``ensure_community``,
``select_communities``, ``community_status``) and the evaluations' kept results
(``save_result``, ``load_results``).

The schema is versioned with ``PRAGMA user_version``.  Each entry of
``MIGRATIONS`` (in cci_local/migrations.py, re-exported here with
``SCHEMA_VERSION``) takes the store from version N-1 to N; opening a store written
by an older cci-local runs the missing migrations in place, each in its own
transaction, so a crash mid-upgrade leaves the store at the last good version.
Later stages add tables by appending a migration, never by editing an old one.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from pathlib import Path

import sqlite_utils

from .errors import CciError
from .migrations import MIGRATIONS, SCHEMA_VERSION

DEFAULT_DB = "cci-local.db"
ENV_DB = "CCI_LOCAL_DB"


class StoreError(CciError):
    """The store cannot be opened or used as asked."""


def save_result(db: sqlite_utils.Database, stage: str, scope: list[str] | str, settings: dict,
                result: dict) -> None:
    """Keep what an evaluation stage found, for `cci-local report`."""
    scope = scope if isinstance(scope, str) else ",".join(scope)
    with db.conn:
        db.conn.execute("INSERT OR REPLACE INTO stage_results VALUES (?, ?, ?, ?, ?)",
                        [stage, scope, json.dumps(settings, sort_keys=True, default=str),
                         json.dumps(result, default=str), time.time()])


def load_results(db: sqlite_utils.Database, stage: str) -> list[dict]:
    """The stored results of ``stage``, oldest first: dicts with scope, settings, result."""
    return [{"scope": scope, "settings": json.loads(settings), "result": json.loads(result),
             "created_at": at}
            for scope, settings, result, at in db.execute(
                "SELECT scope, settings, result, created_at FROM stage_results WHERE stage = ?"
                " ORDER BY created_at", [stage])]


def resolve_path(path: str | os.PathLike | None) -> Path:
    """--db, else $CCI_LOCAL_DB, else ./cci-local.db."""
    return Path(path or os.environ.get(ENV_DB) or DEFAULT_DB)


def schema_version(db: sqlite_utils.Database) -> int:
    """The store's schema version (``PRAGMA user_version``; 0 for a new file)."""
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite_utils.Database, target: int | None = None) -> list[int]:
    """Run the migrations the store lacks, up to ``target``; return the versions applied."""
    # MIGRATIONS and SCHEMA_VERSION are looked up here, in store (tests patch them here).
    target = SCHEMA_VERSION if target is None else target
    current = schema_version(db)
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"{db.conn.execute('PRAGMA database_list').fetchone()[2]} was written by a newer "
            f"cci-local (schema {current}, this one knows {SCHEMA_VERSION}): upgrade cci-local"
        )
    applied = []
    for version in range(current + 1, target + 1):
        db.execute("BEGIN IMMEDIATE")  # one transaction per migration, DDL included
        try:
            MIGRATIONS[version - 1](db)
            db.execute(f"PRAGMA user_version = {version}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        applied.append(version)
    return applied


def open_store(
    path: str | os.PathLike | None = None, *, upgrade: bool = True
) -> sqlite_utils.Database:
    """Open (creating if needed) the store and bring its schema up to date."""
    path = resolve_path(path)
    if path.exists() and path.is_dir():
        raise StoreError(f"{path} is a directory; --db expects a file such as {path / DEFAULT_DB}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(str(path))
        db = sqlite_utils.Database(conn)
        db.execute("PRAGMA journal_mode = WAL")
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path} is not a cci-local store (SQLite said: {e})") from e
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA busy_timeout = 10000")
    # Checkpoint the WAL every ~40 MB rather than 4 MB: bulk ingest rewrites the same
    # index pages over and over, and fewer checkpoints write each of them fewer times.
    db.execute("PRAGMA wal_autocheckpoint = 10000")
    if upgrade:
        migrate(db)
    return db


def get_meta(db: sqlite_utils.Database, key: str) -> str | None:
    """The value kept under ``key`` in the store's ``meta`` table, or None."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return row[0] if row else None


def pseudonym_key(db: sqlite_utils.Database) -> bytes:
    """The store's random key for pseudonymising usernames, made on first use."""
    value = get_meta(db, "pseudonym_key")
    if value is None:
        value = secrets.token_hex(32)
        with db.conn:
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('pseudonym_key', ?)", [value]
            )
        value = get_meta(db, "pseudonym_key")
    return bytes.fromhex(value)


def ensure_community(db: sqlite_utils.Database, name: str) -> str:
    """Return the stored spelling of a community, adding it if new (case-insensitive)."""
    row = db.execute(
        "SELECT name FROM communities WHERE name = ? COLLATE NOCASE", [name]
    ).fetchone()
    if row:
        return row[0]
    db.execute("INSERT INTO communities (name, first_seen) VALUES (?, ?)", [name, time.time()])
    return name


class UnknownCommunity(StoreError):
    """A community named on the command line is not in the store (bad input)."""


def select_communities(db: sqlite_utils.Database, names: list[str] | None) -> list[str]:
    """Stored spellings of the named communities (all of them when none are named)."""
    if not names:
        found = [r[0] for r in db.execute("SELECT name FROM communities ORDER BY name")]
        if not found:
            raise UnknownCommunity("the store has no documents: run `cci-local ingest` first")
        return found
    out = []
    for name in names:
        stored = find_community(db, name)
        if stored is None:
            known = ", ".join(r[0] for r in db.execute("SELECT name FROM communities")) or "none"
            raise UnknownCommunity(f"no community {name!r} in the store (it has: {known})")
        out.append(stored)
    return sorted(set(out))


def find_community(db: sqlite_utils.Database, name: str) -> str | None:
    """The stored spelling of community ``name`` (any case, with or without r/), or None."""
    name = normalise_community(name)
    row = db.execute(
        "SELECT name FROM communities WHERE name = ? COLLATE NOCASE", [name]
    ).fetchone()
    return row[0] if row else None


def normalise_community(name: str) -> str:
    """'r/keto', '/r/keto/' and 'keto' all name the same community."""
    name = name.strip().strip("/")
    if name.lower().startswith("r/"):
        name = name[2:]
    return name.strip("/")


# Counts that later stages contribute to `status`: (column, table, SQL giving
# community -> count).  A row appears once its table exists in the store.
STAGE_COUNTS: list[tuple[str, str, str]] = [
    # topics of the latest topic run in which the community has documents
    ("topics", "topic_communities",
     "SELECT tc.community, count(*) FROM topic_communities tc JOIN topics t ON t.id = tc.topic_id"
     " WHERE t.run_id = (SELECT max(id) FROM topic_runs) AND tc.documents > 0"
     " GROUP BY tc.community"),
    ("CommInst", "community_answers",
     "SELECT a.community, count(*) FROM community_answers a JOIN instructions i"
     " ON i.id = a.instruction_id WHERE i.kind = 'open' GROUP BY a.community"),
    ("CommSurvey", "community_answers",
     "SELECT a.community, count(*) FROM community_answers a JOIN instructions i"
     " ON i.id = a.instruction_id WHERE i.kind = 'choice' GROUP BY a.community"),
    ("template pairs", "community_answers",
     "SELECT a.community, count(*) FROM community_answers a JOIN instructions i"
     " ON i.id = a.instruction_id WHERE i.kind = 'template' GROUP BY a.community"),
    ("adapters", "adapters",
     "SELECT community, count(*) FROM adapters WHERE status = 'done' GROUP BY community"),
    # of those, the ones `adapters add` brought in (trained elsewhere)
    ("imported adapters", "adapters",
     "SELECT community, count(*) FROM adapters WHERE status = 'done'"
     " AND trainer LIKE 'import:%' GROUP BY community"),
]


def community_status(db: sqlite_utils.Database) -> list[dict]:
    """Per community: documents, kinds, authors, date range, and later stages' counts."""
    rows = db.execute(
        "SELECT c.name, count(d.id), sum(d.kind = 'comment'), sum(d.kind = 'submission'),"
        " count(DISTINCT d.author), min(d.created_utc), max(d.created_utc), "
        " count(DISTINCT d.source_id)"
        " FROM communities c LEFT JOIN documents d ON d.community = c.name"
        " GROUP BY c.name ORDER BY c.name COLLATE NOCASE"
    ).fetchall()
    out = [
        {"community": r[0], "documents": r[1], "comments": r[2] or 0, "submissions": r[3] or 0,
         "authors": r[4], "first_utc": r[5], "last_utc": r[6], "files": r[7]}
        for r in rows
    ]
    tables = set(db.table_names())
    for column, table, sql in STAGE_COUNTS:
        if table in tables:
            counts = dict(db.execute(sql).fetchall())
            for row in out:
                row[column] = counts.get(row["community"], 0)
    return out
