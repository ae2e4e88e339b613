"""The store: WAL, foreign keys, versioned schema upgraded in place."""

from __future__ import annotations

import sqlite3

import pytest
from click.testing import CliRunner

from cci_local import store
from cci_local.cli import cli
from cci_local.store import SCHEMA_VERSION, StoreError, migrate, open_store


def test_new_store_is_current_wal_with_foreign_keys(tmp_path):
    db = open_store(tmp_path / "a.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.schema_version(db) == SCHEMA_VERSION
    assert {"documents", "communities", "sources", "ingest_errors", "meta"} <= set(db.table_names())
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        db.execute("INSERT INTO documents (id, community, kind, text) VALUES "
                   "('t1_x', 'nowhere', 'comment', 'text')")


def test_older_store_is_upgraded_in_place(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    db = open_store(path)
    store.ensure_community(db, "keto")
    db.execute("INSERT INTO documents (id, community, kind, text) VALUES "
               "('t1_a', 'keto', 'comment', 'bacon and eggs again')")
    db.conn.commit()
    db.conn.close()

    def next_version(db):
        db.execute("CREATE TABLE future_stage (id INTEGER PRIMARY KEY, keywords TEXT)")
        db.execute("ALTER TABLE documents ADD COLUMN future_id INTEGER"
                   " REFERENCES future_stage(id)")

    monkeypatch.setattr(store, "MIGRATIONS", [*store.MIGRATIONS, next_version])
    monkeypatch.setattr(store, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    db = open_store(path)
    assert store.schema_version(db) == SCHEMA_VERSION + 1
    assert "future_stage" in db.table_names()
    assert db.execute("SELECT id, text, future_id FROM documents").fetchall() == [
        ("t1_a", "bacon and eggs again", None)]


def test_failed_migration_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "s.db"
    open_store(path).conn.close()

    def broken(db):
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "MIGRATIONS", [*store.MIGRATIONS, broken])
    monkeypatch.setattr(store, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="disk on fire"):
        open_store(path)
    db = open_store(path, upgrade=False)
    assert store.schema_version(db) == SCHEMA_VERSION
    assert "half_done" not in db.table_names()


def test_store_from_newer_version_is_refused(tmp_path):
    db = open_store(tmp_path / "new.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    with pytest.raises(StoreError, match="newer cci-local"):
        migrate(db)


def test_not_a_store(tmp_path):
    (tmp_path / "x.db").write_bytes(b"this is not sqlite at all" * 100)
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "x.db"), "status"])
    assert result.exit_code == 1
    assert "is not a cci-local store" in result.output


def test_db_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CCI_LOCAL_DB", str(tmp_path / "env.db"))
    result = CliRunner().invoke(cli, ["status"])
    assert "no store at" in result.output and str(tmp_path / "env.db") in result.output
    db = open_store(None)
    assert (tmp_path / "env.db").exists() and db is not None


def test_pseudonym_key_is_made_once(tmp_path):
    db = open_store(tmp_path / "k.db")
    key = store.pseudonym_key(db)
    assert len(key) == 32 and store.pseudonym_key(open_store(tmp_path / "k.db")) == key


def test_store_from_the_first_release_gets_every_later_table(tmp_path):
    import sqlite3 as sq

    import sqlite_utils

    path = tmp_path / "v1.db"
    old = sqlite_utils.Database(sq.connect(path))
    migrate(old, target=1)  # the schema issue 2 shipped
    store.ensure_community(old, "keto")
    old.execute("INSERT INTO documents (id, community, kind, text) VALUES "
                "('t1_a', 'keto', 'comment', 'bacon and eggs again')")
    old.conn.commit()
    old.conn.close()
    db = open_store(path)
    assert store.schema_version(db) == SCHEMA_VERSION
    assert {"llm_calls", "file_hashes", "embeddings", "topic_runs", "chunks"} <= set(
        db.table_names())
    assert db.execute("SELECT count(*) FROM documents").fetchone()[0] == 1
