"""`cci-local serve`: each community's aligned model as a model name of one
OpenAI-compatible server, so a lab's other tools (and cci-local on another machine,
with ``--aligned-server``) can query any community.

The server is llama-cpp-python's own (``llama_cpp.server``: its routes, streaming,
log-probabilities and JSON grammars), with one change: where its proxy loads a whole
``Llama`` per model name and swaps them on demand (a full reload of the base each time
the name changes), here one base and context stay loaded and each community's GGUF
adapter is switched in per request (``LoadedModel.use``).  ``--print`` instead writes
the configuration and commands for the servers that exist: llama_cpp.server's own
config file (one entry per community, ``model_alias`` and ``lora_path``), llama.cpp's
``llama-server`` (``--lora`` per community, chosen per request) and vLLM
(``--enable-lora --lora-modules NAME=PEFT_FOLDER``).

    base_gguf, models = served_models(db, ["keto", "nutrition"], "embedded")
    app, proxy = make_app(base_gguf, models)    # then uvicorn.run(app, ...)
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from .respondents import NoAdapter

BASE_NAME = "base"  # the bare base model's name on the server


@dataclass
class Served:
    community: str
    name: str  # the model name a client asks for
    adapter: Path  # the GGUF LoRA
    peft: Path | None  # the PEFT folder (vLLM), when the trainer wrote one
    rank: int | None
    adapter_id: int = 0  # its adapters row, for the privacy gate


def served_models(db: sqlite_utils.Database, communities: list[str], base: str,
                  pattern: str = "{community}") -> tuple[Path, list[Served]]:
    """The base GGUF and, per community, its newest adapter on ``base`` under the name
    ``pattern`` gives.  NoAdapter names the command to run for a community without one."""
    from .respondents import check_adapters_load, newest_adapter
    from .train import resolve_base

    check_adapters_load(db, base)
    resolved = resolve_base(base)
    out = []
    for c in communities:
        adapter = newest_adapter(db, c, resolved)
        if adapter is None:
            raise NoAdapter(f"r/{c} has no adapter on {base}: train it with `cci-local train "
                            f"r/{c}`, or leave r/{c} out")
        peft = Path(adapter["path"]) / "peft"
        rank = json.loads(adapter["settings"] or "{}").get("rank")
        out.append(Served(c, pattern.replace("{community}", c), Path(adapter["gguf"]),
                          peft if (peft / "adapter_config.json").is_file() else None, rank,
                          adapter["id"]))
    names = [s.name for s in out]
    if len(set(names)) < len(names) or BASE_NAME in names:
        raise NoAdapter(f"the name pattern {pattern!r} gives {names}: each community needs "
                        f"its own name, and {BASE_NAME!r} is the bare base")
    return Path(resolved.gguf), out


# --------------------------------------------------------------------------- --print


def llama_cpp_config(base: Path, models: list[Served], *, host: str, port: int,
                     n_ctx: int) -> dict:
    """llama_cpp.server's own config file: one model per community (it loads the base
    with the adapter afresh whenever the requested name changes)."""
    entries = [{"model": str(base), "model_alias": BASE_NAME, "n_ctx": n_ctx}]
    entries += [{"model": str(base), "model_alias": m.name, "lora_path": str(m.adapter),
                 "n_ctx": n_ctx} for m in models]
    return {"host": host, "port": port, "models": entries}


def commands(base: Path, models: list[Served], *, base_name: str, pattern: str, host: str,
             port: int, config_path: Path, n_ctx: int) -> list[tuple[str, str]]:
    """(title, shell text) for each way to serve ``models``, and the client side."""
    q = shlex.quote
    url = f"http://{host}:{port}/v1"
    communities = " ".join(f"r/{m.community}" for m in models)
    names = sorted({m.name for m in models})
    out = [
        ("one base with switched adapters (this command, without --print)",
         f"cci-local serve {communities} --base {q(base_name)} --host {host} --port {port}"),
        ("llama_cpp.server's own config (reloads the base whenever the name changes)",
         f"{q(sys.executable)} -m llama_cpp.server --config_file {q(str(config_path))}"),
        ("llama.cpp's llama-server: every adapter loaded, chosen per request",
         " ".join(["llama-server", "-m", q(str(base)), "-c", str(n_ctx), "--host", host,
                   "--port", str(port), "--lora-init-without-apply",
                   *[f"--lora {q(str(m.adapter))}" for m in models]])),
    ]
    peft = [m for m in models if m.peft]
    if peft:
        rank = max(m.rank or 8 for m in peft)
        out.append(("vLLM (PEFT folders; the base is the Hugging Face checkpoint the GGUF "
                    "was converted from)",
                    " ".join(["vllm serve HF_CHECKPOINT_OF_THE_BASE", "--enable-lora",
                              f"--max-lora-rank {rank}", "--lora-modules",
                              *[f"{q(m.name)}={q(str(m.peft))}" for m in peft]])))
    out.append(("then, from any machine that reaches it",
                f"cci-local survey {communities} --aligned-server {url} --aligned-name "
                f"{q(pattern)}\n  (models served: {', '.join(names)}; with llama-server: "
                "--aligned-name 'lora:{community}')"))
    return out


# --------------------------------------------------------------------------- serving


def unknown_model(name, names) -> str:
    return f"no model {name!r} here: this server has {', '.join(names)}"


class SwitchingProxy:
    """Stands in for llama_cpp.server's LlamaProxy: every model name is the one base
    with its adapter (None: the bare base) made active on the shared context.  A name
    the server does not have is a 404, never the default model."""

    def __init__(self, backend, adapters: dict[str, Path | None]):
        self.backend, self.adapters = backend, adapters
        for path in adapters.values():  # a bad adapter fails at start, not on a request
            if path is not None:
                self.backend.model.load_adapter(path)

    def __call__(self, model: str | None = None):
        from fastapi import HTTPException

        if model not in self.adapters:
            raise HTTPException(status_code=404, detail=unknown_model(model, self.adapters))
        with self.backend.model.lock:
            return self.backend.model.use(self.adapters[model])

    def __iter__(self):
        return iter(self.adapters)

    def __getitem__(self, model: str) -> dict:
        return {"model": str(self.backend.path), "model_alias": model,
                "lora_path": str(self.adapters[model]) if self.adapters[model] else None}

    def free(self) -> None:
        self.backend.close()


class KnownModels:
    """ASGI middleware: a completion request for a model name the server does not have
    gets a 404 before any route runs.  llama_cpp.server looks the model up only once a
    streamed reply has begun, too late to answer with an error status."""

    def __init__(self, app, names: list[str]):
        self.app, self.names = app, names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" \
                or not scope["path"].endswith("completions"):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            name = json.loads(body).get("model")
        except (ValueError, AttributeError):
            name = ""  # not JSON: the route's own validation answers
        if name != "" and name not in self.names:
            detail = json.dumps({"detail": unknown_model(name, self.names)}).encode()
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": detail})
            return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def make_app(base: Path, models: list[Served], *, n_ctx: int = 4096,
             n_threads: int | None = None, api_key: str | None = None):
    """The FastAPI app of llama_cpp.server over one base with switched adapters."""
    from unittest import mock

    import llama_cpp.server.app as server_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from .llm.llama_cpp import LlamaCppBackend

    # Logits at every position, as llama_cpp.server keeps them: its log-probabilities
    # (the survey's option scores) need them.
    backend = LlamaCppBackend(base, n_ctx=n_ctx, n_threads=n_threads, logits_all=True)
    proxy = SwitchingProxy(backend, {BASE_NAME: None, **{m.name: m.adapter for m in models}})
    # create_app builds its proxy from the model settings (set_llama_proxy): ours
    # replaces it, so the server never loads a second copy of the base.
    with mock.patch.object(server_app, "LlamaProxy", lambda models: proxy):
        app = server_app.create_app(
            server_settings=ServerSettings(api_key=api_key),
            model_settings=[ModelSettings(model=str(base), model_alias=BASE_NAME)])
    app.add_middleware(KnownModels, names=list(proxy.adapters))
    return app, proxy


def serve(base: Path, models: list[Served], *, host: str, port: int, n_ctx: int = 4096,
          n_threads: int | None = None, api_key: str | None = None) -> None:
    import uvicorn

    app, proxy = make_app(base, models, n_ctx=n_ctx, n_threads=n_threads, api_key=api_key)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        proxy.free()
