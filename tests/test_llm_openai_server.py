"""The OpenAI-compatible backend against a real server: llama_cpp.server (from
llama-cpp-python[server]) started here on 127.0.0.1 with the embedded GGUF."""

from __future__ import annotations

import math
import os
import re
import sqlite3
import sys

import pytest
from conftest import CORPUS_2022, all_text, cci, free_port, start_server

from cci_local.llm import BackendError, Sampling, chat, get_backend, option_logprobs
from cci_local.llm import openai as openai_backend
from cci_local.llm.llama_cpp import embedded_model_path

SECRET = "sk-test-5f2e9a7c1b3d4e6f8a0b2c4d"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    proc = start_server(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"], url,
        tmp_path_factory.mktemp("server") / "llama_cpp_server.log")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def backend(server, monkeypatch):
    monkeypatch.setenv("CCI_LOCAL_API_KEY", SECRET)
    b = get_backend(f"openai-compatible:{server}#smollm2")
    yield b
    b.close()


def test_chat(db, backend):
    reply = chat(db, backend, [{"role": "user", "content": "Name the capital city of France."}],
                 sampling=Sampling(max_tokens=12))
    assert "Paris" in reply.text
    assert backend.remote is False  # loopback: nothing leaves the machine


@pytest.mark.slow
def test_structured_output_falls_back_to_what_the_server_takes(db, server, backend):
    # llama_cpp.server rejects OpenAI's json_schema response_format; json_object
    # with a schema works, and is remembered for this server.
    openai_backend._schema_mode.pop(backend.base_url, None)
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    reply = chat(db, backend, [{"role": "user", "content": "Capital of France, as JSON."}],
                 schema=schema, sampling=Sampling(max_tokens=48))
    assert set(reply.data) == {"city", "country"}
    assert openai_backend.SCHEMA_MODES[openai_backend._schema_mode[backend.base_url]] == \
        "json_object_schema"


def test_option_logprobs_from_the_server(db, backend):
    question = [{"role": "user", "content": "Which of these is a fruit?\nA) car\nB) apple\n"
                 "C) rock\nD) shoe\nAnswer with one letter only."}]
    served = option_logprobs(db, backend, question, ["A", "B", "C", "D"])
    local = get_backend("embedded").option_logprobs(question, ["A", "B", "C", "D"])
    assert max(served, key=served.get) == max(local, key=local.get)
    finite = [o for o, v in served.items() if math.isfinite(v)]
    assert finite and all(abs(served[o] - local[o]) < 0.05 for o in finite)


def test_key_never_reaches_the_store(tmp_path, db, backend):
    chat(db, backend, [{"role": "user", "content": "Say hello."}], sampling=Sampling(max_tokens=4))
    assert SECRET not in all_text(tmp_path / "store.db")
    assert SECRET not in backend.spec and SECRET not in repr(backend.describe())


def test_server_gone_is_a_clear_error(db, monkeypatch):
    monkeypatch.setenv("CCI_LOCAL_API_KEY", SECRET)
    b = get_backend(f"openai-compatible:http://127.0.0.1:{free_port()}/v1#x", max_retries=0)
    with pytest.raises(BackendError, match="cannot reach .* is the server running") as caught:
        b.chat([{"role": "user", "content": "hi"}])
    assert SECRET not in str(caught.value)


def test_openai_needs_a_key_from_the_environment(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match=r"needs an API key in \$OPENAI_API_KEY"):
        get_backend("openai:gpt-4o")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    b = get_backend("gpt-4o")  # the registry name
    assert b.remote is True and SECRET not in b.spec
    assert os.environ["OPENAI_API_KEY"] == SECRET


@pytest.mark.slow
def test_generate_with_a_server_teacher_in_parallel(tmp_path, server):
    """Community-Cross-Instruct rows through a real OpenAI-compatible server, two calls
    at a time; the server's 4096-token context is given with --context."""
    db = tmp_path / "s.db"
    env = {"CCI_LOCAL_API_KEY": SECRET}
    cci("ingest", str(CORPUS_2022), db=db)
    cci("topics", "--embedder", "tfidf", "--reducer", "pca", "--topics", "8",
        # chunks of 4-8 documents: the prompts stay short (the teacher reads every one)
        "--chunk-docs", "4", "8", db=db)
    args = ("generate", "--teacher", f"openai-compatible:{server}#smollm2", "--parallel", "2",
            "--max-rows", "2", "--open", "1", "--choice", "1", "--attempts", "2",
            "--context", "4096")
    first = cci(*args, db=db, env=env)
    assert "texts leave" not in first.stderr  # loopback: nothing leaves the machine
    calls = int(re.search(r"([\d,]+) model calls", first.stdout).group(1))
    conn = sqlite3.connect(db)
    assert calls == conn.execute("SELECT count(*) FROM llm_calls WHERE model LIKE"
                                 " 'openai-compatible:%'").fetchone()[0] >= 2
    assert conn.execute("SELECT count(*) FROM teacher_rows").fetchone()[0] == 2
    again = cci(*args, db=db, env=env)
    assert "\n0 model calls" in again.stdout
    assert SECRET not in all_text(db)
