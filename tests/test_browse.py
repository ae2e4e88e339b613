"""`cci-local browse`: the store in a real Datasette, every table described and the
canned queries answering over HTTP on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import CORPUS_2022, free_port
from test_generate_cross import good_reply

import cci_local
from cci_local.browse import QUERIES, TABLES, metadata
from cci_local.store import open_store


def test_every_table_is_described_and_every_query_runs_on_a_fresh_store(tmp_path):
    db = open_store(tmp_path / "fresh.db")
    assert set(db.table_names()) == set(TABLES)  # a new table needs its description
    meta = metadata(db, "fresh")["databases"]["fresh"]
    assert set(meta["tables"]) == set(TABLES) and set(meta["queries"]) == set(QUERIES)
    for query in QUERIES.values():
        db.execute(query["sql"]).fetchall()  # valid SQL over the real schema


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{url}: {e.code} {json.loads(e.read()).get('error')!r}") from None


@pytest.fixture
def surveyed(tmp_path, scripted):
    def script(n, messages, schema):
        props = schema["properties"]
        communities = props["open_ended"]["items"]["properties"]["answers"]["required"]
        return good_reply(communities, f"call{n}",
                          letters={c: "ABCD"[(n + i) % 4] for i, c in enumerate(communities)})

    study = cci_local.open(tmp_path / "s.db")
    study.ingest(CORPUS_2022)
    study.topics(embedder="tfidf", reducer="pca", n_topics=12)
    study.generate(teacher=scripted(script), max_rows=20)
    study.survey(scoring="text", persona=False)
    return study


def test_browse_serves_the_store_with_descriptions_and_queries(surveyed, tmp_path):
    port = free_port()
    log = tmp_path / "datasette.log"
    proc = subprocess.Popen([sys.executable, "-m", "cci_local", "--db", str(surveyed.path),
                             "browse", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(base + "/-/versions.json")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        meta = _get(base + "/-/metadata.json")["databases"]["s"]
        assert "pseudonym" in meta["tables"]["documents"]["columns"]["author"]
        for name in QUERIES:
            rows = _get(f"{base}/s/{name}.json?_shape=array")
            assert isinstance(rows, list), (name, rows)
        accuracy = {(r["answer_key"], r["respondent"]): r
                    for r in _get(f"{base}/s/survey_accuracy.json?_shape=array")}
        frame = surveyed.frames.survey()
        for row in frame[frame.respondent == "base"].itertuples():
            served = accuracy[(row.answer_key, "base")]
            assert served["questions"] == row.questions
            assert served["accuracy"] == pytest.approx(row.accuracy, abs=1e-3)
        held = _get(f"{base}/s/held_out_survey_questions.json?_shape=array")
        assert {r["community"] for r in held} == {"keto", "nutrition"}
        tables = _get(f"{base}/s.json")["tables"]
        assert any(t["name"] == "documents" and t["count"] > 1000 for t in tables)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
