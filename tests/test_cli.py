"""The command line, end to end on the real corpora, as a user runs it (subprocess)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import CORPUS_2022
from conftest import cci as run


def test_ingest_then_status(tmp_path):
    db = tmp_path / "cli.db"
    first = run("ingest", str(CORPUS_2022), db=db)
    assert "added 1,943 documents" in first.stdout
    assert "text from 'title' + 'selftext', community from 'subreddit'" in first.stdout
    assert "dropped 838 deleted or removed, 32 bot author" in first.stdout
    again = run("ingest", str(CORPUS_2022), db=db)
    assert "already ingested" in again.stdout and "added 0 documents" in again.stdout
    status = json.loads(run("status", "--json", db=db).stdout)
    rows = {r["community"]: r for r in status["communities"]}
    assert rows["keto"]["documents"] == 1125 and rows["nutrition"]["documents"] == 818
    assert rows["keto"]["submissions"] == 1125 and rows["keto"]["comments"] == 0
    assert rows["keto"]["first_utc"] >= 1640995200
    table = run("status", db=db).stdout
    assert "keto" in table and "1,125" in table and "2022-01-01" in table


def test_usage_errors_exit_2(tmp_path):
    result = run("ingest", str(tmp_path / "missing.csv"), db=tmp_path / "x.db", check=False)
    assert result.returncode == 2 and "missing.csv: no such file or directory" in result.stderr
    result = run("ingest", "--format", "xml", "x", db=tmp_path / "x.db", check=False)
    assert result.returncode == 2


@pytest.mark.slow
def test_ctrl_c_then_rerun_finishes_without_duplicates(tmp_path):
    """A real SIGINT to `cci-local ingest` on a dump big enough for worker processes."""
    from conftest import ndjson, real_comments

    dump = tmp_path / "big.ndjson"
    dump.write_bytes(ndjson(real_comments(150_000)))
    assert dump.stat().st_size > 8 << 20  # the parallel path
    db = tmp_path / "int.db"
    env = {**os.environ, "COLUMNS": "160"}
    proc = subprocess.Popen([sys.executable, "-m", "cci_local", "--db", str(db), "ingest",
                             str(dump)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env,
                            # A suite started in the background (`make test &`, nohup)
                            # ignores SIGINT, and children inherit that: Python then
                            # never raises KeyboardInterrupt.  Give the child the default.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    stored = 0
    while stored == 0 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    stored = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            except sqlite3.OperationalError:
                pass
    assert proc.poll() is None, "ingest finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "interrupted: the store keeps" in err
    with sqlite3.connect(db) as conn:
        partial = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        assert conn.execute("SELECT complete FROM sources").fetchone()[0] == 0
    assert 0 < partial
    run("ingest", str(dump), db=db)
    fresh = tmp_path / "fresh.db"
    run("ingest", str(dump), db=fresh)
    # Each store has its own pseudonym key, so texts differ where they mention a user.
    query = "SELECT id, length(text), source_line FROM documents ORDER BY id"
    with sqlite3.connect(db) as a, sqlite3.connect(fresh) as b:
        ids_a, ids_b = a.execute(query).fetchall(), b.execute(query).fetchall()
    assert ids_a == ids_b and len(ids_a) > partial
