"""The store's schema, as an ordered list of migrations.

The schema is versioned with ``PRAGMA user_version``.  ``MIGRATIONS[i]`` takes a
store from version i to version i + 1 and ``SCHEMA_VERSION`` is the version a fresh
store gets; ``store.migrate()`` runs the ones a store lacks, each in its own
transaction.  Each migration is plain SQL (see ``_v1_documents``), so it never
commits on its own.  Append only: a later stage adds tables by appending a
migration, never by editing an old one.  ``cci_local.store`` re-exports
``MIGRATIONS`` and ``SCHEMA_VERSION``; docs/schema.sql is what they make.  The
evaluation stages' migrations live in ``migrations_evaluate.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

from .migrations_evaluate import (
    _v7_survey_answers,
    _v8_outside_surveys,
    _v9_instrument_answers,
    _v10_fidelity,
    _v11_fidelity_judgments,
    _v16_audits,
)


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


def _v14_topic_settings(db: sqlite_utils.Database) -> None:
    # What the clustering actually did (min cluster size used, selection, a
    # degenerate topic split and into how many), with the notes the user was shown.
    db.execute("ALTER TABLE topic_runs ADD COLUMN settings TEXT")


def _v15_imports(db: sqlite_utils.Database) -> None:
    # Instruction data and surveys imported from files (``cci-local import``): one
    # row per file content, and per answer the file line it came from.  An imported
    # question keeps the file's own topic (topic_label; topic_id is for this
    # store's topics) and its source is 'import:<hash of kind, question, options>'.
    db.execute(
        "CREATE TABLE imports ("
        " id TEXT PRIMARY KEY,"  # sha256 of the file's bytes
        " path TEXT NOT NULL,"
        " format TEXT NOT NULL,"
        " rows INTEGER NOT NULL,"
        " imported_at REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE import_rows ("
        " import_id TEXT NOT NULL REFERENCES imports(id) ON DELETE CASCADE,"
        " line INTEGER NOT NULL,"  # CSV/JSONL line where the record starts; JSON: item number
        " instruction_id INTEGER NOT NULL REFERENCES instructions(id) ON DELETE CASCADE,"
        " community TEXT NOT NULL REFERENCES communities(name),"
        " PRIMARY KEY (import_id, line, community))"
    )
    db.execute("ALTER TABLE instructions ADD COLUMN topic_label TEXT")


def _v17_source_pii(db: sqlite_utils.Database) -> None:
    # Personal data replaced by placeholders per source file (docs/method.md#pii-on-ingest):
    # JSON {entity: count}, set by ingest for its read of the file and added to by
    # `cci-local scrub`; NULL while the file's texts are stored as read (--keep-pii).
    db.execute("ALTER TABLE sources ADD COLUMN pii TEXT")


# Append only.  MIGRATIONS[i] upgrades a store from version i to version i + 1.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1_documents, _v2_llm_calls, _v3_topics, _v4_instructions,
    _v5_teacher_rows, _v6_adapters, _v7_survey_answers,
    _v8_outside_surveys, _v9_instrument_answers, _v10_fidelity,
    _v11_fidelity_judgments, _v12_stage_results, _v13_asked,
    _v14_topic_settings, _v15_imports, _v16_audits, _v17_source_pii]
SCHEMA_VERSION = len(MIGRATIONS)
