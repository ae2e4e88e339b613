"""The Ollama backend against a stand-in server on loopback (tests/ollama_standin.py).

No Ollama binary can be installed on these machines (it is on none of the package
registries they reach), so the stand-in speaks Ollama's HTTP API and answers with
the real embedded model; the official `ollama` client is used unchanged.
"""

from __future__ import annotations

import math
import socket

import pytest
from ollama_standin import MODEL, OllamaStandIn

from cci_local.llm import BackendError, Request, Sampling, chat, chat_many, get_backend
from cci_local.llm import option_logprobs as logprobs_through_cache
from cci_local.llm.ollama import OllamaBackend

QUESTION = [{"role": "user", "content": (
    "Which of these is a fruit?\nA) car\nB) apple\nC) rock\nD) shoe\n"
    "Answer with one letter only.")}]


@pytest.fixture(scope="module")
def server():
    with OllamaStandIn() as standin:
        yield standin


@pytest.fixture
def ollama(server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    backend = get_backend(f"ollama:{MODEL}")
    yield backend
    backend.close()


def test_chat_sends_context_and_length_explicitly(db, server, ollama):
    start = len(server.requests)
    reply = chat(db, ollama, [{"role": "user", "content": "Name the capital city of France."}],
                 sampling=Sampling(max_tokens=12))
    assert "Paris" in reply.text
    sent = [r for r in server.requests[start:] if r["path"] == "/api/chat"]
    assert len(sent) == 1
    assert sent[0]["options"]["num_ctx"] == 8192 and sent[0]["options"]["num_predict"] == 12
    assert sent[0]["stream"] is False and server.truncated == 0
    assert ollama.remote is False  # the server is on loopback: nothing leaves the machine
    assert OllamaBackend(MODEL, host="gpu-box.lab:11434").remote is True


def test_schema_goes_as_format(db, server, ollama):
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"]}
    reply = chat(db, ollama, [{"role": "user", "content": "The capital of France, as JSON."}],
                 schema=schema, sampling=Sampling(max_tokens=32))
    assert isinstance(reply.data["city"], str)
    assert server.requests[-1]["format"] == schema


def test_identity_has_the_model_digest(db, server, ollama):
    from cci_local.llm.cache import identity

    assert identity(db, ollama) == f"ollama:{MODEL}@{server.digest}"


def test_option_logprobs_agree_with_the_model_in_process(db, ollama):
    ours = logprobs_through_cache(db, ollama, QUESTION, ["A", "B", "C", "D"])
    local = get_backend("embedded").option_logprobs(QUESTION, ["A", "B", "C", "D"])
    best = max(local, key=local.get)
    assert max(ours, key=ours.get) == best
    # The same model and prompt: the server's top-20 first-token log-probabilities
    # are the in-process ones (letters outside the top 20 come back as -inf).
    for option, value in ours.items():
        if math.isfinite(value):
            assert abs(value - local[option]) < 0.05, (option, value, local[option])


def test_streaming(ollama):
    pieces = list(ollama.stream([{"role": "user", "content": "Name the capital city of France."}],
                                sampling=Sampling(max_tokens=12)))
    assert len(pieces) >= 1 and "Paris" in "".join(pieces)


def test_parallel_requests_overlap(db, server, ollama):
    requests = [Request([{"role": "user", "content": f"Say the number {n}."}],
                        sampling=Sampling(max_tokens=6)) for n in range(6)]
    server.max_in_flight = 0
    results = dict(chat_many(db, ollama, requests, parallel=3))
    assert sorted(results) == list(range(6))
    assert all(not isinstance(r, Exception) for r in results.values())
    assert server.max_in_flight > 1


def test_unknown_model_says_pull_it(db, server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    backend = OllamaBackend("llama3.1:8b")
    with pytest.raises(BackendError, match=r"run `ollama pull llama3\.1:8b`"):
        backend.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(BackendError, match=r"ollama pull llama3\.1:8b"):
        chat(db, backend, [{"role": "user", "content": "hi"}])


def test_server_not_running_says_start_it(db, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{port}")
    backend = OllamaBackend(MODEL, timeout=5)
    with pytest.raises(BackendError, match="not reachable.*ollama serve"):
        backend.chat([{"role": "user", "content": "hi"}])


def test_prompt_that_would_be_cut_is_refused(ollama):
    small = OllamaBackend(MODEL, num_ctx=512)
    with pytest.raises(BackendError, match="cut the prompt silently"):
        small.chat([{"role": "user", "content": "keto " * 2000}])
