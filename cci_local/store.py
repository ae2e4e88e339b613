"""The store: one SQLite file holding everything cci-local knows.

The schema is versioned with ``PRAGMA user_version``.  Each entry of
``MIGRATIONS`` takes the store from version N-1 to N; opening a store written by
an older cci-local runs the missing migrations in place, each in its own
transaction, so a crash mid-upgrade leaves the store at the last good version.
Later stages add tables by appending a migration, never by editing an old one.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from .errors import CciError

DEFAULT_DB = "cci-local.db"
ENV_DB = "CCI_LOCAL_DB"


class StoreError(CciError):
    """The store cannot be opened or used as asked."""


def _v1_documents(db: sqlite_utils.Database) -> None:
    # Plain SQL, not sqlite-utils' create(): it commits on its own, which would
    # break the one-transaction-per-migration rule.
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("CREATE TABLE communities (name TEXT PRIMARY KEY NOT NULL, first_seen REAL)")
    db.execute(
        "CREATE TABLE sources ("
        " id INTEGER PRIMARY KEY,"
        " path TEXT NOT NULL,"
        " fingerprint TEXT NOT NULL,"
        " size INTEGER,"
        " format TEXT,"
        " started_at REAL,"
        " finished_at REAL,"
        " complete INTEGER NOT NULL DEFAULT 0,"
        " records INTEGER NOT NULL DEFAULT 0,"
        " added INTEGER NOT NULL DEFAULT 0,"
        " bad INTEGER NOT NULL DEFAULT 0,"
        " UNIQUE (path, fingerprint))"
    )
    db.execute(
        "CREATE TABLE documents ("
        " id TEXT PRIMARY KEY,"
        " community TEXT NOT NULL REFERENCES communities(name),"
        " kind TEXT NOT NULL CHECK (kind IN ('comment', 'submission')),"
        " text TEXT NOT NULL,"
        " created_utc INTEGER,"
        " score INTEGER,"
        " link_id TEXT,"
        " parent_id TEXT,"
        " author TEXT,"
        " source_id INTEGER REFERENCES sources(id),"
        " source_line INTEGER)"
    )
    db.execute("CREATE INDEX idx_documents_community ON documents(community)")
    db.execute(
        "CREATE TABLE ingest_errors ("
        " id INTEGER PRIMARY KEY,"
        " source_id INTEGER NOT NULL REFERENCES sources(id),"
        " line INTEGER,"
        " reason TEXT NOT NULL)"
    )


def _v2_llm_calls(db: sqlite_utils.Database) -> None:
    # The prompt cache and the log of every model call.  A successful call is
    # stored once per key; failures (with the raw output and the reason) are kept
    # as a log but never answer a later call.
    db.execute(
        "CREATE TABLE llm_calls ("
        " id INTEGER PRIMARY KEY,"
        " key TEXT NOT NULL,"
        " kind TEXT NOT NULL CHECK (kind IN ('chat', 'logprobs')),"
        " model TEXT NOT NULL,"
        " identity TEXT NOT NULL,"
        " request TEXT NOT NULL,"
        " response TEXT,"
        " status TEXT NOT NULL CHECK (status IN ('ok', 'invalid', 'error')),"
        " error TEXT,"
        " prompt_tokens INTEGER,"
        " completion_tokens INTEGER,"
        " seconds REAL,"
        " created_at REAL NOT NULL)"
    )
    db.execute("CREATE UNIQUE INDEX idx_llm_calls_ok ON llm_calls(key) WHERE status = 'ok'")
    db.execute("CREATE INDEX idx_llm_calls_key ON llm_calls(key)")
    # Hashes of model files, so a 5 GB GGUF is hashed once, not at every start.
    db.execute(
        "CREATE TABLE file_hashes ("
        " path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
        " sha256 TEXT NOT NULL, PRIMARY KEY (path, size, mtime_ns))"
    )


def _v3_topics(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE embeddings ("
        " embedder TEXT NOT NULL,"
        " doc_id TEXT NOT NULL REFERENCES documents(id),"
        " vector BLOB NOT NULL,"
        " PRIMARY KEY (embedder, doc_id)) WITHOUT ROWID"
    )
    # One topic model fitted over a set of communities with one set of parameters.
    db.execute(
        "CREATE TABLE topic_runs ("
        " id INTEGER PRIMARY KEY,"
        " key TEXT NOT NULL UNIQUE,"
        " communities TEXT NOT NULL,"
        " params TEXT NOT NULL,"
        " n_documents INTEGER NOT NULL,"
        " n_outliers INTEGER NOT NULL,"
        " silhouette REAL,"
        " silhouette_shuffled REAL,"
        " chunking TEXT,"
        " created_at REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE topics ("
        " id INTEGER PRIMARY KEY,"
        " run_id INTEGER NOT NULL REFERENCES topic_runs(id) ON DELETE CASCADE,"
        " number INTEGER NOT NULL,"
        " keywords TEXT NOT NULL,"
        " size INTEGER NOT NULL,"
        " UNIQUE (run_id, number))"
    )
    db.execute(
        "CREATE TABLE doc_topics ("
        " run_id INTEGER NOT NULL REFERENCES topic_runs(id) ON DELETE CASCADE,"
        " doc_id TEXT NOT NULL REFERENCES documents(id),"
        " topic_id INTEGER NOT NULL REFERENCES topics(id) ON DELETE CASCADE,"
        " PRIMARY KEY (run_id, doc_id)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX idx_doc_topics_topic ON doc_topics(topic_id)")
    db.execute(
        "CREATE TABLE topic_communities ("
        " topic_id INTEGER NOT NULL REFERENCES topics(id) ON DELETE CASCADE,"
        " community TEXT NOT NULL REFERENCES communities(name),"
        " documents INTEGER NOT NULL,"
        " PRIMARY KEY (topic_id, community))"
    )
    # A chunk row: for one topic, one chunk of on-topic documents per community;
    # the teacher sees a whole row at once (the "cross" in Community-Cross-Instruct).
    db.execute(
        "CREATE TABLE chunk_rows ("
        " id INTEGER PRIMARY KEY,"
        " topic_id INTEGER NOT NULL REFERENCES topics(id) ON DELETE CASCADE,"
        " row_number INTEGER NOT NULL,"
        " UNIQUE (topic_id, row_number))"
    )
    db.execute(
        "CREATE TABLE chunks ("
        " chunk_row_id INTEGER NOT NULL REFERENCES chunk_rows(id) ON DELETE CASCADE,"
        " community TEXT NOT NULL REFERENCES communities(name),"
        " doc_ids TEXT NOT NULL,"
        " PRIMARY KEY (chunk_row_id, community))"
    )


def _v4_instructions(db: sqlite_utils.Database) -> None:
    # Held-out units, seeded: 15% of chunk rows at random and, separately, 15% of
    # topics (the unseen-topic test); template pairs are held out per document.
    db.execute(
        "CREATE TABLE holdouts ("
        " run_id INTEGER NOT NULL REFERENCES topic_runs(id) ON DELETE CASCADE,"
        " unit TEXT NOT NULL CHECK (unit IN ('chunk_row', 'topic')),"
        " unit_id INTEGER NOT NULL,"
        " PRIMARY KEY (run_id, unit, unit_id))"
    )
    # One question, answered once per community.  kind: 'open' (CommInst),
    # 'choice' (CommSurvey, options + a letter per community) or 'template' (a
    # real post as the answer to a templated instruction; no teacher).
    db.execute(
        "CREATE TABLE instructions ("
        " id INTEGER PRIMARY KEY,"
        " kind TEXT NOT NULL CHECK (kind IN ('open', 'choice', 'template')),"
        " question TEXT NOT NULL,"
        " options TEXT,"
        " topic_id INTEGER REFERENCES topics(id) ON DELETE SET NULL,"
        " chunk_row_id INTEGER REFERENCES chunk_rows(id) ON DELETE SET NULL,"
        " source TEXT NOT NULL,"
        " discriminating INTEGER,"
        " split TEXT NOT NULL CHECK (split IN ('train', 'test')),"
        " split_by_topic TEXT CHECK (split_by_topic IN ('train', 'test')),"
        " created_at REAL NOT NULL)"
    )
    db.execute("CREATE INDEX idx_instructions_kind ON instructions(kind, split)")
    # source: what made it ('template:<doc id>' or 'teacher:<llm call id>'), unique so
    # a re-run never stores the same instruction twice.
    db.execute("CREATE UNIQUE INDEX idx_instructions_source ON instructions(source, question)")
    db.execute(
        "CREATE TABLE community_answers ("
        " instruction_id INTEGER NOT NULL REFERENCES instructions(id) ON DELETE CASCADE,"
        " community TEXT NOT NULL REFERENCES communities(name),"
        " answer TEXT NOT NULL,"
        " doc_ids TEXT NOT NULL,"
        " PRIMARY KEY (instruction_id, community))"
    )
    db.execute("CREATE INDEX idx_answers_community ON community_answers(community)")


def _v5_teacher_rows(db: sqlite_utils.Database) -> None:
    # One finished teacher row: a chunk row put to a teacher with one set of
    # generation settings (``settings`` hashes teacher identity, communities and
    # prompt settings).  Written in the same transaction as its instructions, so a
    # row is either wholly stored or not at all; a re-run skips every row here.
    db.execute(
        "CREATE TABLE teacher_rows ("
        " id INTEGER PRIMARY KEY,"
        " chunk_row_id INTEGER NOT NULL REFERENCES chunk_rows(id) ON DELETE CASCADE,"
        " settings TEXT NOT NULL,"
        " teacher TEXT NOT NULL,"
        " communities TEXT NOT NULL,"
        " status TEXT NOT NULL CHECK (status IN ('accepted', 'rejected')),"
        " attempts INTEGER NOT NULL,"
        " call_ids TEXT NOT NULL,"
        " doc_ids TEXT NOT NULL,"
        " kept_open INTEGER NOT NULL,"
        " kept_choice INTEGER NOT NULL,"
        " dropped TEXT NOT NULL,"
        " reason TEXT,"
        " created_at REAL NOT NULL,"
        " UNIQUE (chunk_row_id, settings))"
    )


def _v6_adapters(db: sqlite_utils.Database) -> None:
    # One LoRA training run per (community, base, data, settings): ``key`` hashes
    # them, so a re-run resumes or reuses it.  The adapter is registered when done.
    db.execute(
        "CREATE TABLE adapters ("
        " id INTEGER PRIMARY KEY,"
        " key TEXT NOT NULL UNIQUE,"
        " community TEXT NOT NULL REFERENCES communities(name),"
        " base TEXT NOT NULL,"
        " base_identity TEXT NOT NULL,"
        " trainer TEXT NOT NULL,"
        " data_hash TEXT NOT NULL,"
        " examples INTEGER NOT NULL,"
        " settings TEXT NOT NULL,"
        " status TEXT NOT NULL CHECK (status IN ('training', 'done')),"
        " steps INTEGER,"
        " total_steps INTEGER,"
        " final_loss REAL,"
        " path TEXT NOT NULL,"
        " gguf TEXT,"
        " modelfile TEXT,"
        " created_at REAL NOT NULL,"
        " finished_at REAL)"
    )
    db.execute(
        "CREATE TABLE training_curve ("
        " adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,"
        " step INTEGER NOT NULL,"
        " loss REAL NOT NULL,"
        " lr REAL,"
        " tokens_per_s REAL,"
        " PRIMARY KEY (adapter_id, step))"
    )


def _v7_survey_answers(db: sqlite_utils.Database) -> None:
    # One model's answer to one multiple-choice item.  respondent: 'base',
    # 'persona:<community>' or 'aligned:<community>'; identity: the model (and
    # adapter) hashes; wording: a hash of the persona and question template; item:
    # 'commsurvey:<instruction id>' or '<survey file hash>:<item id>'.
    db.execute(
        "CREATE TABLE survey_answers ("
        " id INTEGER PRIMARY KEY,"
        " respondent TEXT NOT NULL,"
        " model TEXT NOT NULL,"
        " identity TEXT NOT NULL,"
        " wording TEXT NOT NULL,"
        " item TEXT NOT NULL,"
        " instruction_id INTEGER REFERENCES instructions(id) ON DELETE CASCADE,"
        " chosen TEXT NOT NULL,"
        " distribution TEXT NOT NULL,"
        " method TEXT NOT NULL CHECK (method IN ('logprobs', 'sampled')),"
        " created_at REAL NOT NULL,"
        " UNIQUE (respondent, identity, wording, item))"
    )


def _v8_outside_surveys(db: sqlite_utils.Database) -> None:
    # A researcher's own survey file (``survey --survey FILE``), loaded once per
    # content hash.  Per item: options (letter -> text), the answer letter per
    # community and, where the file gives them, the answer distributions.
    db.execute(
        "CREATE TABLE surveys ("
        " id TEXT PRIMARY KEY,"
        " name TEXT NOT NULL,"
        " path TEXT NOT NULL,"
        " items INTEGER NOT NULL,"
        " loaded_at REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE survey_items ("
        " survey_id TEXT NOT NULL REFERENCES surveys(id) ON DELETE CASCADE,"
        " item_id TEXT NOT NULL,"
        " position INTEGER NOT NULL,"
        " question TEXT NOT NULL,"
        " options TEXT NOT NULL,"
        " topic TEXT,"
        " ordinal INTEGER NOT NULL,"
        " answers TEXT NOT NULL,"
        " distributions TEXT NOT NULL,"
        " PRIMARY KEY (survey_id, item_id))"
    )
    # How the answer was read: 'letter' (log-probability of each option's letter) or
    # 'text' (of each option's whole text as the reply).
    db.execute("ALTER TABLE survey_answers ADD COLUMN scoring TEXT NOT NULL DEFAULT 'letter'")


def _v9_instrument_answers(db: sqlite_utils.Database) -> None:
    # Every raw answer to a psychometric instrument: one row per respondent, model,
    # instrument (a hash of its file and item texts), item, persona prefix and repeat.
    # answer: the chosen letter, or the number for count items; distribution: the
    # option probabilities (log-probability scoring) or null.
    db.execute(
        "CREATE TABLE instrument_answers ("
        " id INTEGER PRIMARY KEY,"
        " respondent TEXT NOT NULL,"
        " model TEXT NOT NULL,"
        " identity TEXT NOT NULL,"
        " instrument TEXT NOT NULL,"
        " instrument_name TEXT NOT NULL,"
        " wording TEXT NOT NULL,"
        " item TEXT NOT NULL,"
        " persona INTEGER NOT NULL,"
        " repeat INTEGER NOT NULL,"
        " answer TEXT NOT NULL,"
        " distribution TEXT,"
        " method TEXT NOT NULL CHECK (method IN ('logprobs', 'sampled')),"
        " created_at REAL NOT NULL,"
        " UNIQUE (respondent, identity, instrument, wording, item, persona, repeat))"
    )


def _v10_fidelity(db: sqlite_utils.Database) -> None:
    # One fidelity run per (community, base, settings); its generated texts (why any
    # was dropped before scoring) and its figures, each with a 95% interval.
    db.execute(
        "CREATE TABLE fidelity_runs ("
        " id INTEGER PRIMARY KEY,"
        " key TEXT NOT NULL UNIQUE,"
        " community TEXT NOT NULL,"
        " base TEXT NOT NULL,"
        " settings TEXT NOT NULL,"
        " perplexity_cap REAL,"
        " confusion TEXT,"
        " created_at REAL NOT NULL,"
        " finished_at REAL)"
    )
    db.execute(
        "CREATE TABLE fidelity_texts ("
        " run_id INTEGER NOT NULL REFERENCES fidelity_runs(id) ON DELETE CASCADE,"
        " model TEXT NOT NULL,"
        " idx INTEGER NOT NULL,"
        " instruction_id INTEGER REFERENCES instructions(id) ON DELETE SET NULL,"
        " question TEXT NOT NULL,"
        " text TEXT NOT NULL,"
        " call_id INTEGER,"
        " perplexity REAL,"
        " copy_rouge REAL,"
        " kept INTEGER,"
        " drop_reason TEXT,"
        " PRIMARY KEY (run_id, model, idx))"
    )
    db.execute(
        "CREATE TABLE fidelity_metrics ("
        " run_id INTEGER NOT NULL REFERENCES fidelity_runs(id) ON DELETE CASCADE,"
        " model TEXT NOT NULL,"
        " metric TEXT NOT NULL,"
        " value REAL,"
        " low REAL,"
        " high REAL,"
        " n INTEGER,"
        " PRIMARY KEY (run_id, model, metric))"
    )


def _v11_fidelity_judgments(db: sqlite_utils.Database) -> None:
    # Toxicity and harm scores of each judged text (a run's generated texts by idx, its
    # real half as model 'real (split half)'), per scorer, with the judge's reason.
    db.execute(
        "CREATE TABLE fidelity_judgments ("
        " run_id INTEGER NOT NULL REFERENCES fidelity_runs(id) ON DELETE CASCADE,"
        " model TEXT NOT NULL,"
        " idx INTEGER NOT NULL,"
        " criterion TEXT NOT NULL CHECK (criterion IN ('toxicity', 'harm')),"
        " scorer TEXT NOT NULL,"
        " score REAL NOT NULL CHECK (score BETWEEN 0 AND 1),"
        " reason TEXT,"
        " call_id INTEGER,"
        " PRIMARY KEY (run_id, model, idx, criterion, scorer))"
    )
    db.execute("ALTER TABLE fidelity_runs ADD COLUMN scorers TEXT")


def _v12_stage_results(db: sqlite_utils.Database) -> None:
    # What each evaluation printed, as JSON: the report reads these, never a model.  One
    # row per (stage, scope); a newer result for the same scope replaces it.
    db.execute(
        "CREATE TABLE stage_results ("
        " stage TEXT NOT NULL,"
        " scope TEXT NOT NULL,"  # e.g. 'keto,nutrition' or 'keto'
        " settings TEXT NOT NULL,"
        " result TEXT NOT NULL,"
        " created_at REAL NOT NULL,"
        " PRIMARY KEY (stage, scope))"
    )
    # One row per `cci-local run`: the stages it ran or found done, for the report.
    db.execute(
        "CREATE TABLE pipeline_runs ("
        " id INTEGER PRIMARY KEY,"
        " communities TEXT NOT NULL,"
        " settings TEXT NOT NULL,"
        " stages TEXT,"
        " model_calls INTEGER,"
        " seconds REAL,"
        " status TEXT NOT NULL,"
        " created_at REAL NOT NULL)"
    )


def _v13_asked(db: sqlite_utils.Database) -> None:
    # Questions put with `ask` (open or multiple-choice) and `chat` turns: who answered
    # (respondent, model spec, adapter), with what sampling, and what it said.  The
    # model's call itself is in llm_calls (call_id); asking again adds no row.
    db.execute(
        "CREATE TABLE asked ("
        " id INTEGER PRIMARY KEY,"
        " kind TEXT NOT NULL CHECK (kind IN ('open', 'choice', 'chat')),"
        " session INTEGER,"  # chat: the conversation
        " turn INTEGER,"  # chat: the turn within it
        " question TEXT NOT NULL,"
        " options TEXT,"  # choice: JSON {letter: option}
        " respondent TEXT NOT NULL,"
        " model TEXT NOT NULL,"
        " adapter TEXT,"
        " sampling TEXT NOT NULL,"
        " text TEXT,"
        " distribution TEXT,"  # choice: JSON {letter: probability}
        " call_id INTEGER,"
        " created_at REAL NOT NULL)"
    )
    db.execute("CREATE UNIQUE INDEX idx_asked_once ON asked (kind, question, coalesce(options,"
               " ''), respondent, model, sampling, coalesce(session, 0), coalesce(turn, 0))")


# Append only.  MIGRATIONS[i] upgrades a store from version i to version i + 1.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1_documents, _v2_llm_calls, _v3_topics, _v4_instructions,
    _v5_teacher_rows, _v6_adapters, _v7_survey_answers,
    _v8_outside_surveys, _v9_instrument_answers, _v10_fidelity,
    _v11_fidelity_judgments, _v12_stage_results, _v13_asked]
SCHEMA_VERSION = len(MIGRATIONS)


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
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite_utils.Database, target: int | None = None) -> list[int]:
    """Run the migrations the store lacks, up to ``target``; return the versions applied."""
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
