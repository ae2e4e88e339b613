"""The migrations of the evaluation stages' tables: survey answers, outside surveys,
instrument answers, fidelity and the privacy audit.  Plain SQL, as in
``cci_local.migrations``, which holds the ordered list they belong to."""

from __future__ import annotations

import sqlite_utils


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


def _v16_audits(db: sqlite_utils.Database) -> None:
    # The privacy audit of an adapter (``cci-local audit``): one row per audit run with
    # its figures, and one per measured text and model, so a re-run asks no model again.
    # ``test`` is 'extract' (value 1.0 when greedy decoding reproduced the next m tokens
    # after a k-token prefix, detail: tokens matched) or 'loss' (mean per-token loss of
    # the answer).  Texts are named by instruction id and, for template pairs, by the
    # document id they were made from; never by author.
    db.execute(
        "CREATE TABLE audit_items ("
        " adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,"
        " params TEXT NOT NULL,"  # the settings the value depends on, e.g. 'k=32,m=32'
        " test TEXT NOT NULL CHECK (test IN ('extract', 'loss')),"
        " model TEXT NOT NULL CHECK (model IN ('aligned', 'base')),"
        " instruction_id INTEGER NOT NULL REFERENCES instructions(id) ON DELETE CASCADE,"
        " split TEXT NOT NULL CHECK (split IN ('train', 'test')),"
        " value REAL NOT NULL,"
        " detail INTEGER,"
        " PRIMARY KEY (adapter_id, params, test, model, instruction_id))"
    )
    db.execute(
        "CREATE TABLE audits ("
        " id INTEGER PRIMARY KEY,"
        " adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,"
        " community TEXT NOT NULL REFERENCES communities(name),"
        " settings TEXT NOT NULL,"  # JSON
        " result TEXT NOT NULL,"  # JSON: the figures the report and the gate show
        " extractable INTEGER NOT NULL,"  # training texts the aligned model reproduced
        " created_at REAL NOT NULL)"
    )
