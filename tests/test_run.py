"""`cci-local run` end to end on a slice of the shared corpora with the embedded model,
under a network guard: every outbound connection, datagram and name lookup that is
not loopback is refused and logged (tests/netguard/sitecustomize.py, loaded by
every Python process of the run through PYTHONPATH).  Then: the report in three
formats, a second identical run with no model call in under 30 s, and a store that
holds no raw username and no secret from the environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CORPUS_2022, ROOT, cci, read_csv_rows

from cci_local.store import open_store

GUARD = ROOT / "tests" / "netguard"
SECRETS = {"OPENAI_API_KEY": "sk-cci-test-7f3a9c1e5b2d4f6a8c0e",
           "HF_TOKEN": "hf_cciTestSecret0123456789abcdef",
           "CCI_LOCAL_TEST_SECRET": "do-not-store-3e8d1f"}
RUN = ["run", "r/keto", "r/nutrition", "--corpus", str(CORPUS_2022), "--limit", "1000",
       "--quick", "--max-rows", "2", "--steps", "2", "--samples", "5", "--real", "20",
       "--no-judges", "--instrument", "weight-concerns", "--prefixes", "1", "--audit-samples",
       "4", "--json"]


def _guarded_env(tmp_path: Path) -> dict:
    log = tmp_path / "refused.log"
    log.touch()
    path = os.pathsep.join([str(GUARD), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # The Hugging Face libraries are left online, as on a user's machine: cci-local itself
    # must not reach out.  No proxy: one on another host would be an outbound connection.
    return {"PYTHONPATH": path, "CCI_NETGUARD_LOG": str(log), "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0", "http_proxy": "", "https_proxy": "", **SECRETS}


def test_the_network_guard_refuses_outbound_and_allows_loopback(tmp_path):
    """The guard itself works: otherwise the privacy test below proves nothing."""
    env = {**os.environ, **_guarded_env(tmp_path)}
    code = ("import socket, threading, http.server, urllib.request\n"
            "for attempt in (lambda: socket.create_connection(('192.0.2.1', 80), timeout=2),\n"
            "                lambda: socket.socket().connect(('198.51.100.7', 443)),\n"
            "                lambda: socket.socket(type=socket.SOCK_DGRAM).sendto(b'x', "
            "('203.0.113.9', 53)),\n"
            "                lambda: urllib.request.urlopen('https://arctic-shift.photon-"
            "reddit.com', timeout=2)):\n"
            "    try:\n        attempt()\n    except OSError:\n        print('REFUSED')\n"
            "srv = http.server.HTTPServer(('127.0.0.1', 0), http.server.BaseHTTPRequestHandler)\n"
            "threading.Thread(target=srv.handle_request, daemon=True).start()\n"
            "socket.create_connection(('localhost', srv.server_port), timeout=2).close()\n"
            "print('loopback ok')\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.split() == ["REFUSED"] * 4 + ["loopback", "ok"], \
        result.stdout + result.stderr
    logged = (tmp_path / "refused.log").read_text()
    for target in ("192.0.2.1", "198.51.100.7", "203.0.113.9", "arctic-shift.photon-reddit.com"):
        assert target in logged


@pytest.mark.slow
def test_run_end_to_end_offline_then_again_with_no_model_call(tmp_path):
    db = tmp_path / "study.db"
    env = _guarded_env(tmp_path)
    first = cci(*RUN, db=db, env=env, timeout=1500)
    report = json.loads(first.stdout)
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["data", "topics", "generate", "train", "survey", "fidelity",
                            "psychometrics", "audit", "report"]
    # The survey runs on the held-out rows' multiple-choice questions; the embedded
    # teacher does not always write one for the single held-out row asked here.
    assert stages["survey"]["status"] in ("ran", "skipped"), report
    assert all(s["status"] == "ran" for n, s in stages.items() if n != "survey"), report
    assert stages["generate"]["calls"] > 0 and report["model_calls"] > 0
    assert (tmp_path / "refused.log").read_text() == "", "something tried to leave the machine"
    # what the held-out survey can show is said before the teacher's first call
    said = first.stderr
    assert "note: power: with about" in said and "showing 0.10 needs about 391" in said
    assert said.index("note: power:") < said.index("generate: ran")

    # Every stage left its work in the store.
    store = open_store(db)
    one = lambda sql: store.execute(sql).fetchone()[0]  # noqa: E731
    assert one("SELECT count(DISTINCT community) FROM documents") == 2
    assert one("SELECT count(*) FROM teacher_rows") == 2
    assert one("SELECT count(*) FROM adapters WHERE status = 'done'") == 2
    assert one("SELECT count(*) FROM fidelity_runs") == 2
    assert {r[0] for r in store.execute("SELECT stage FROM stage_results")} >= {
        "fidelity", "psychometrics"}
    assert one("SELECT status FROM pipeline_runs ORDER BY id DESC LIMIT 1") == "done"

    # The report, in three formats, beside the store.
    md, html, js = (tmp_path / f"study-report.{f}" for f in ("md", "html", "json"))
    assert [str(p) for p in (md, html, js)] == report["reports"]
    data = json.loads(js.read_text())
    assert data["communities"] == ["keto", "nutrition"]
    assert {"corpus", "topics", "examples", "training", "survey", "fidelity",
            "psychometrics", "privacy"} <= set(data)
    assert [p["community"] for p in data["privacy"]] == ["keto", "nutrition"]
    assert all(p["audit"]["extraction"]["aligned"]["n"] >= 0 for p in data["privacy"])
    assert one("SELECT count(*) FROM audits") == 2
    assert {f["community"] for f in data["fidelity"]} == {"keto", "nutrition"}
    page = html.read_text()
    assert page.count('src="data:image/png;base64,') >= 3  # loss, emotions, scores at least
    for heading in ("Corpus", "Topics", "Example instruction pairs", "Training",
                    "Privacy audit", "Survey", "Fidelity", "Psychometrics"):
        assert f"<h2>{heading}</h2>" in page and f"## {heading}" in md.read_text()
    figures = re.findall(r"\]\((study-report_files/[\w-]+\.png)\)", md.read_text())
    assert figures and all((tmp_path / f).stat().st_size > 1000 for f in figures)

    # The same run again: nothing to do, no model call, no model even loaded.
    start = time.monotonic()
    again = json.loads(cci(*RUN, db=db, env=env).stdout)
    seconds = time.monotonic() - start
    assert again["model_calls"] == 0 and again["models_loaded"] == 0, again
    assert all(s["status"] in ("done before", "skipped") for s in again["stages"]), again
    assert seconds < 30, f"the second run took {seconds:.1f} s"
    assert one("SELECT count(*) FROM adapters") == 2
    assert one("SELECT count(*) FROM audits") == 2  # the same figures: no second row
    assert (tmp_path / "refused.log").read_text() == ""

    # Privacy: no raw username and no secret anywhere in what the run wrote.
    store.conn.close()
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*")
                       if p.is_file() and p.suffix not in (".safetensors", ".gguf", ".pt"))
    for secret in SECRETS.values():
        assert secret.encode() not in written
    rows = [r for f in sorted(CORPUS_2022.glob("*.csv")) for r in read_csv_rows(f)[:1000]]
    body = "\n".join(r["title"] + "\n" + r["selftext"] for r in rows)
    # Names that also occur in the texts would match the stored texts themselves.
    distinctive = {r["author"] for r in rows if len(r["author"]) >= 6
                   and r["author"] not in ("[deleted]", "AutoModerator")
                   and r["author"] not in body}
    assert len(distinctive) > 100
    leaked = [a for a in distinctive if a.encode() in written]
    assert not leaked, leaked[:5]


def test_run_says_where_to_put_data_when_there_is_none(tmp_path):
    """Offline and nothing found: the message names the files, the folder and the
    commands; nothing else is attempted."""
    env = _guarded_env(tmp_path)
    result = cci("run", "r/SomeSmallSub", "--offline", "--dumps", str(tmp_path / "dumps"),
                 db=tmp_path / "s.db", env=env, check=False)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "SomeSmallSub_submissions.zst" in message and "SomeSmallSub_comments.zst" in message
    assert str(tmp_path / "dumps") in message and "--corpus PATH" in message
    assert "cci-local collect r/SomeSmallSub" in message
    assert (tmp_path / "refused.log").read_text() == ""


def test_run_finds_arctic_shift_dumps_in_the_dumps_folder(tmp_path):
    """Per-subreddit dumps named like Arctic Shift's are found and ingested; a community
    with neither dumps nor documents is reported, not silently skipped."""
    from conftest import ndjson, real_comments, zstd_long

    dumps = tmp_path / "dumps"
    dumps.mkdir()
    records = [r for r in real_comments(400) if r["subreddit"] == "keto"]
    (dumps / "keto_comments.zst").write_bytes(zstd_long(ndjson(records)))
    db = tmp_path / "s.db"
    result = cci("run", "r/keto", "r/nutrition", "--offline", "--dumps", str(dumps), db=db,
                 env=_guarded_env(tmp_path), check=False)
    assert result.returncode == 1
    assert "no documents of r/nutrition" in " ".join(result.stderr.split())
    assert "no documents of r/keto" not in result.stderr
    store = open_store(db)
    assert store.execute("SELECT count(*) FROM documents WHERE community = 'keto'"
                         ).fetchone()[0] > 0
    row = store.execute("SELECT status, stages FROM pipeline_runs").fetchone()
    assert row[0] == "failed" and json.loads(row[1])[0]["status"] == "failed"


def test_run_ingests_only_the_communities_asked_for(tmp_path):
    """A corpus folder of several communities' files: run r/keto leaves the files named
    for others unread, skips other communities' records in shared files, and says so."""
    from conftest import CORPUS_POSTS

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("keto_comments.csv", "nutrition_comment.csv", "nutrition_subs.csv"):
        (corpus / name).write_bytes((CORPUS_POSTS / name).read_bytes())
    mixed = read_csv_rows(CORPUS_2022 / "subr_nutrition.csv")[:50] + \
        read_csv_rows(CORPUS_2022 / "subr_keto.csv")[:50]
    with open(corpus / "mixed.csv", "w", newline="", encoding="utf-8") as fh:
        import csv

        writer = csv.DictWriter(fh, fieldnames=list(mixed[0]))
        writer.writeheader()
        writer.writerows(mixed)
    db = tmp_path / "s.db"
    result = cci("run", "r/keto", "--corpus", str(corpus), "--until", "data", "--offline",
                 db=db, env=_guarded_env(tmp_path))
    said = " ".join((result.stdout + result.stderr).split())
    assert "left 2 corpus file(s) named for other communities (nutrition_comment.csv, " \
        "nutrition_subs.csv)" in said
    assert re.search(r"skipped \d+ records of communities not asked for", said)
    store = open_store(db)
    assert store.execute("SELECT DISTINCT community FROM documents").fetchall() == [("keto",)]
    read = {Path(r[0]).name for r in store.execute("SELECT path FROM sources")}
    assert read == {"keto_comments.csv", "mixed.csv"}


@pytest.mark.slow
def test_with_nothing_local_run_collects_from_arctic_shift_then_ingests(tmp_path):
    """The last resort: no corpus, no dumps, no documents: `run` fetches the community
    through the Arctic Shift API (here its loopback stand-in, tests/arctic_standin.py),
    and `collect` does the same on its own; what arrived is read once."""
    from arctic_standin import ArcticStandIn

    dumps, db = tmp_path / "dumps", tmp_path / "s.db"
    with ArcticStandIn() as api:  # pages of up to 1,000 ('auto'), a request a second
        env = _guarded_env(tmp_path) | {"CCI_LOCAL_ARCTIC_SHIFT_URL": api.url}
        result = cci("run", "r/keto", "--until", "data", "--dumps", str(dumps), db=db, env=env)
        assert "fetching its public posts and comments from the Arctic Shift API" in \
            " ".join(result.stderr.split())
        assert sorted(p.name for p in dumps.glob("*.zst")) == ["keto_comments.zst",
                                                                "keto_submissions.zst"]
        store = open_store(db)
        kinds = dict(store.execute("SELECT kind, count(*) FROM documents GROUP BY kind"))
        assert kinds.get("submission", 0) > 100 and kinds.get("comment", 0) > 100, kinds
        assert [s["stage"] for s in json.loads(store.execute(
            "SELECT stages FROM pipeline_runs").fetchone()[0])] == ["data"]

        collected = cci("collect", "r/nutrition", "--limit", "120", "--dumps", str(dumps),
                        db=db, env=env)
        assert re.search(r"r/nutrition\s+submissions\s+collected\s+120\s+120", collected.stdout)
        again = cci("collect", "r/nutrition", "--limit", "120", "--dumps", str(dumps),
                    db=db, env=env)
        assert again.stdout.count("already collected") == 2
        served = len(api.requests)
        again = cci("run", "r/keto", "r/nutrition", "--until", "data", "--dumps", str(dumps),
                    db=db, env=env)
        assert len(api.requests) == served  # found in the dumps folder: nothing fetched
        count = store.execute("SELECT count(*) FROM documents WHERE community = 'nutrition'"
                              ).fetchone()[0]
        assert 0 < count <= 240
    assert (tmp_path / "refused.log").read_text() == ""


def test_run_checks_every_stages_options_before_the_first(tmp_path):
    """--instrument edeq without --items failed at psychometrics after half an hour of
    work; now nothing starts, and the message says what to add."""
    db = tmp_path / "s.db"
    result = cci("run", "r/keto", "r/nutrition", "--corpus", str(CORPUS_2022), "--quick",
                 "--instrument", "edeq", "--teacher", "no-such-model", db=db, check=False)
    assert result.returncode == 1
    said = " ".join(result.stderr.split())
    assert "nothing was run; fix first" in said
    assert "--instrument:" in said and "--items FILE" in said
    assert "--teacher:" in said and "no-such-model" in said
    store = open_store(db)
    assert store.execute("SELECT count(*) FROM documents").fetchone()[0] == 0
    assert store.execute("SELECT count(*) FROM pipeline_runs").fetchone()[0] == 0
