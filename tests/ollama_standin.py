"""A stand-in for an Ollama server, for tests.

No Ollama binary can be installed on these machines (none on PyPI, npm or
Debian), so the Ollama backend is tested against this: a loopback HTTP server
speaking Ollama's API as documented (docs/api.md, api/types.go) -- /api/version,
/api/tags, /api/show, /api/chat with ``format`` (JSON or a JSON schema),
``options`` (num_ctx, num_predict, temperature, seed), ``stream`` (NDJSON
chunks) and ``logprobs``/``top_logprobs``, and 404 {"error": "model 'x' not
found"} for models it does not have -- answering with the real embedded model.

Like Ollama, it silently cuts a prompt longer than ``num_ctx`` (2048 when the
request does not say), so a test can tell whether the client sent it.  Every
request body is kept in ``requests``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from cci_local.llm.llama_cpp import LlamaCppBackend, embedded_model_path

MODEL = "smollm2:135m"
DEFAULT_NUM_CTX = 2048


class OllamaStandIn:
    def __init__(self, model: str = MODEL):
        self.model = model
        self.path = embedded_model_path()
        self.digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.backend = LlamaCppBackend(self.path, n_ctx=4096)
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.truncated = 0
        self._lock = threading.Lock()  # one generation at a time, like one loaded model
        self._count = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict | None = None, lines=None):
                if lines is not None:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/x-ndjson")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for line in lines:
                        data = json.dumps(line).encode() + b"\n"
                        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/api/version":
                    self._send(200, {"version": "0.12.11"})
                elif self.path == "/api/tags":
                    self._send(200, {"models": [server.tag()]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                server.requests.append({"path": self.path, **body})
                name = body.get("model") or body.get("name")
                if self.path not in ("/api/chat", "/api/show"):
                    return self._send(404, {"error": "not found"})
                if name not in (server.model, server.model.split(":")[0]):
                    return self._send(404, {"error": f"model '{name}' not found"})
                if self.path == "/api/show":
                    return self._send(200, server.show())
                with server._count:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(0.05)  # let concurrent requests overlap, as on a real server
                    with server._lock:
                        if body.get("stream", True):
                            return self._send(200, lines=list(server.chat_stream(body)))
                        return self._send(200, server.chat(body))
                finally:
                    with server._count:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.backend.close()

    # -- Ollama's answers -----------------------------------------------------------

    def tag(self) -> dict:
        return {"name": self.model, "model": self.model,
                "modified_at": datetime.now(timezone.utc).isoformat(),
                "size": self.path.stat().st_size, "digest": self.digest,
                "details": {"format": "gguf", "family": "llama", "families": ["llama"],
                            "parameter_size": "135M", "quantization_level": "Q4_1"}}

    def show(self) -> dict:
        return {"modelfile": f"FROM {self.path}", "parameters": "",
                "template": self.backend.llm.metadata.get("tokenizer.chat_template", ""),
                "details": self.tag()["details"], "capabilities": ["completion"]}

    def _prompt(self, body: dict) -> tuple[list[int], dict]:
        options = body.get("options") or {}
        num_ctx = int(options.get("num_ctx") or DEFAULT_NUM_CTX)
        tokens = self.backend.prompt_tokens(body["messages"])
        limit = num_ctx - int(options.get("num_predict") or 128)
        if len(tokens) > limit:  # what Ollama does: keep the end, say nothing
            self.truncated += 1
            tokens = tokens[:1] + tokens[len(tokens) - limit + 1:]
        return tokens, options

    def _base(self) -> dict:
        return {"model": self.model, "created_at": datetime.now(timezone.utc).isoformat()}

    def chat(self, body: dict) -> dict:
        tokens, options = self._prompt(body)
        max_tokens = int(options.get("num_predict") or 128)
        if body.get("logprobs"):
            text, logprobs = self._generate_with_logprobs(
                tokens, max_tokens, int(body.get("top_logprobs") or 0))
        else:
            fmt = body.get("format")
            request = {"prompt": tokens, "max_tokens": max_tokens,
                       "temperature": float(options.get("temperature", 0.8)),
                       "seed": int(options.get("seed", 0))}
            if fmt:
                from llama_cpp import LlamaGrammar
                from llama_cpp.llama_grammar import json_schema_to_gbnf

                schema = {"type": "object"} if fmt == "json" else fmt
                request["grammar"] = LlamaGrammar.from_string(
                    json_schema_to_gbnf(json.dumps(schema)), verbose=False)
            result = self.backend.llm.create_completion(**request)
            text, logprobs = result["choices"][0]["text"], None
        reply = {**self._base(), "message": {"role": "assistant", "content": text},
                 "done": True, "done_reason": "stop", "total_duration": 1,
                 "prompt_eval_count": len(tokens), "eval_count": max(1, len(text) // 4)}
        if logprobs is not None:
            reply["logprobs"] = logprobs
        return reply

    def chat_stream(self, body: dict):
        reply = self.chat({**body, "stream": False})
        text = reply["message"]["content"]
        for i in range(0, len(text), 8):
            yield {**self._base(), "message": {"role": "assistant", "content": text[i:i + 8]},
                   "done": False}
        yield {**reply, "message": {"role": "assistant", "content": ""}}

    def _generate_with_logprobs(self, tokens: list[int], max_tokens: int, top_k: int):
        """Greedy decoding that reports each token's log-probability and the top k."""
        llm = self.backend.llm
        llm.reset()
        llm.eval(tokens)
        out, pieces = [], []
        for _ in range(max_tokens):
            logp = self.backend._log_softmax_last()  # the model's next-token distribution
            chosen = int(logp.argmax())
            if chosen == llm.token_eos():
                break
            text = llm.detokenize([chosen]).decode("utf-8", "replace")
            best = np.argsort(-logp)[:top_k]
            out.append({"token": text, "logprob": float(logp[chosen]),
                        "top_logprobs": [{"token": llm.detokenize([int(t)]).decode(
                            "utf-8", "replace"), "logprob": float(logp[t])} for t in best]})
            pieces.append(text)
            llm.eval([chosen])
        llm.reset()
        return "".join(pieces), out
