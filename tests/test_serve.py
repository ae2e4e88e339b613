"""Aligned models served to others, and asked from a server: `cci-local serve` (one
base, adapters switched per request), llama_cpp.server's own multi-model config (what
`serve --print` writes), and `survey`/`ask` with --aligned-server.  Real servers on
127.0.0.1, real GGUF adapters (random low-rank weights written by the trainer's
exporter, registered in the store as training registers them)."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import cci, free_port, start_server
from test_adapters import random_adapter

from cci_local.llm.llama_cpp import embedded_model_path
from cci_local.store import ensure_community, open_store
from cci_local.train import base_identity, resolve_base

COMMUNITIES = ["keto", "nutrition"]
SURVEY = """question,options,r/keto,r/nutrition
How often do you eat bread?,Never;Sometimes;Often;Always,A,C
Is dietary fat good for you?,Yes;No;It depends,A,C
Which of these is a fruit?,Car;Apple;Rock;Shoe,B,B
How many meals do you eat a day?,One;Two;Three;More,B,C
Do you count calories?,Yes;No,B,A
Is sugar addictive?,Yes;No;Not sure,A,C
"""


def store_with_adapters(tmp_path: Path) -> Path:
    """A store where r/keto and r/nutrition each have a finished adapter on the
    embedded base, as `cci-local train` leaves them."""
    path = tmp_path / "store.db"
    db = open_store(path)
    ident = base_identity(db, resolve_base("embedded"))
    for k, c in enumerate(COMMUNITIES):
        ensure_community(db, c)
        folder = tmp_path / "adapters" / f"{c}-{k:010x}"
        folder.mkdir(parents=True)
        gguf = random_adapter(folder / "adapter.gguf", seed=10 + k)
        db.execute("INSERT INTO adapters (key, community, base, base_identity, trainer,"
                   " data_hash, examples, settings, status, path, gguf, created_at, finished_at)"
                   " VALUES (?, ?, 'embedded', ?, 'peft', 'x', 8, ?, 'done', ?, ?, ?, ?)",
                   [f"k{k}", c, ident, json.dumps({"rank": 8}), str(folder), str(gguf),
                    time.time(), time.time()])
    db.conn.commit()
    db.close()
    return path


def answers(store: Path, server: bool) -> dict[tuple[str, str], tuple[str, dict]]:
    db = open_store(store)
    rows = db.execute("SELECT respondent, item, chosen, distribution, model FROM survey_answers"
                      " WHERE respondent LIKE 'aligned:%'").fetchall()
    db.close()
    return {(r, item): (chosen, json.loads(d)) for r, item, chosen, d, model in rows
            if model.startswith("openai-compatible:") == server}


def assert_same_answers(served: dict, local: dict) -> None:
    """The same letter for every question, the distributions within 1e-2."""
    assert served.keys() == local.keys()
    for key, (chosen, dist) in local.items():
        assert served[key][0] == chosen, key
        assert max(abs(served[key][1][k] - dist[k]) for k in dist) < 1e-2


def test_print_writes_llama_cpp_server_config_and_commands(tmp_path):
    store = store_with_adapters(tmp_path)
    config = tmp_path / "serve.json"
    result = cci("serve", "r/keto", "r/nutrition", "--print", "--config", str(config),
                 "--port", "8123", "--name", "cci-{community}", db=store)
    data = json.loads(config.read_text())
    aliases = {m["model_alias"]: m.get("lora_path") for m in data["models"]}
    assert aliases["base"] is None and set(aliases) == {"base", "cci-keto", "cci-nutrition"}
    assert aliases["cci-keto"].endswith("keto-0000000000/adapter.gguf")
    assert all(m["model"] == str(embedded_model_path()) for m in data["models"])
    text = result.stdout
    assert "-m llama_cpp.server --config_file" in text
    assert text.count("--lora ") == 2 and "--lora-init-without-apply" in text
    assert "--aligned-server http://127.0.0.1:8123/v1 --aligned-name 'cci-{community}'" in text
    # a community with no adapter is named, with the command to run
    db = open_store(store)
    ensure_community(db, "paleo")
    db.conn.commit()
    db.close()
    bad = cci("serve", "r/paleo", "--print", db=store, check=False)
    assert bad.returncode != 0 and "r/paleo has no adapter on embedded" in bad.stderr
    assert "cci-local train r/paleo" in bad.stderr


@pytest.mark.slow
def test_served_aligned_models_answer_as_the_in_process_switched_path(tmp_path):
    """The survey asked of the aligned models three ways gives the same answers: in
    process (one base, adapters switched), through llama_cpp.server's own config (a
    Llama per model name, swapped on demand) and through `cci-local serve`."""
    store = store_with_adapters(tmp_path)
    survey = tmp_path / "survey.csv"
    survey.write_text(SURVEY)
    cci("survey", "r/keto", "r/nutrition", "--survey", str(survey), "--no-persona", db=store)
    local = answers(store, server=False)
    assert len(local) == 12

    # 1. llama_cpp.server with the config `serve --print` writes
    port = free_port()
    config = tmp_path / "serve.json"
    cci("serve", "r/keto", "r/nutrition", "--print", "--config", str(config), "--port",
        str(port), db=store)
    url = f"http://127.0.0.1:{port}/v1"
    proc = start_server([sys.executable, "-m", "llama_cpp.server", "--config_file",
                         str(config)], url, tmp_path / "llama_cpp_server.log")
    try:
        cci("survey", "r/keto", "r/nutrition", "--survey", str(survey), "--no-persona",
            "--aligned-server", url, db=store)
        swapped = answers(store, server=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert_same_answers(swapped, local)

    # 2. cci-local serve: one base, switched per request, asked two questions at once
    db = open_store(store)
    db.execute("DELETE FROM survey_answers WHERE model LIKE 'openai-compatible:%'")
    db.execute("DELETE FROM llm_calls WHERE model LIKE 'openai-compatible:%'")
    db.conn.commit()
    db.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    proc = start_server([sys.executable, "-m", "cci_local", "--db", str(store), "serve",
                         "r/keto", "r/nutrition", "--port", str(port), "--name",
                         "cci-{community}"], url, tmp_path / "serve.log")
    try:
        models = json.loads(urllib.request.urlopen(url + "/models").read())["data"]
        assert {m["id"] for m in models} == {"base", "cci-keto", "cci-nutrition"}
        cci("survey", "r/keto", "r/nutrition", "--survey", str(survey), "--no-persona",
            "--aligned-server", url, "--aligned-name", "cci-{community}", "--parallel", "2",
            db=store)
        switched = answers(store, server=True)
        wrong = cci("ask", "Hi?", "r/keto", "--aligned-server", url, db=store, check=False)
        assert wrong.returncode == 2 and "has no model 'keto'" in wrong.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert_same_answers(switched, local)


class LlamaServerStandIn:
    """llama.cpp's llama-server cannot be installed here (no binary on PyPI): a stand-in
    on loopback speaking the part of its protocol --aligned-name lora:{community} uses,
    as its README documents it: GET /lora-adapters lists [{id, path, scale}], and a
    chat request's "lora" field [{id, scale}] picks the adapters (the rest get 0)."""

    def __init__(self, paths: list[str]):
        import http.server
        import threading

        self.requests: list[dict] = []
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, data):
                body = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/lora-adapters":
                    self._json([{"id": i, "path": p, "scale": 0.0}
                                for i, p in enumerate(paths)])
                else:
                    self._json({"object": "list", "data": [{"id": "base", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.requests.append(body)
                chosen = [a["id"] for a in body.get("lora", []) if a["scale"]]
                if body.get("stream"):  # server-sent events, as llama-server streams
                    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0,
                             "model": body["model"], "choices": [{
                                 "index": 0, "finish_reason": None,
                                 "delta": {"role": "assistant", "content": f"adapter {chosen}"}}]}
                    data = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self._json({"id": "x", "object": "chat.completion", "created": 0,
                            "model": body["model"], "choices": [{
                                "index": 0, "finish_reason": "stop", "message": {
                                    "role": "assistant", "content": f"adapter {chosen}"}}],
                            "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                                      "total_tokens": 7}})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_llama_server_adapters_are_picked_per_request_by_community(tmp_path):
    store = store_with_adapters(tmp_path)
    db = open_store(store)
    paths = [row[0] for row in db.execute("SELECT gguf FROM adapters ORDER BY community DESC")]
    db.close()
    stand_in = LlamaServerStandIn(paths)  # nutrition's adapter is number 0, keto's 1
    try:
        result = cci("ask", "What do you eat?", "r/keto", "r/nutrition", "--aligned-server",
                     stand_in.url, "--aligned-name", "lora:{community}", "--json", db=store)
        answers = json.loads(result.stdout)["answers"]
        assert answers == {"aligned:keto": ["adapter [1]"], "aligned:nutrition": ["adapter [0]"]}
        assert [r["lora"] for r in stand_in.requests] == [[{"id": 1, "scale": 1.0}],
                                                          [{"id": 0, "scale": 1.0}]]
        # asked again: the prompt cache answers, keyed by the adapter number too
        cci("ask", "What do you eat?", "r/keto", "--aligned-server", stand_in.url,
            "--aligned-name", "lora:{community}", db=store)
        assert len(stand_in.requests) == 2
        # a community whose adapter the server does not have is named, with the fix
        db = open_store(store)
        ensure_community(db, "paleo")
        db.conn.commit()
        db.close()
        bad = cci("ask", "Hi?", "r/paleo", "--aligned-server", stand_in.url, "--aligned-name",
                  "lora:{community}", db=store, check=False)
        assert bad.returncode != 0
        assert "serves no adapter for r/paleo" in bad.stderr and "--lora" in bad.stderr
    finally:
        stand_in.close()
