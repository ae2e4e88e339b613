"""Who answers: the base model, the base told to speak as a community's member (the
persona), and a community's aligned model (the base with its newest LoRA adapter).
Built here, once, for every stage that asks them: survey, psychometrics, fidelity,
ask and chat (docs/method.md#respondents).

    with panel(db, ["keto", "nutrition"], "embedded") as p:
        for r in p.respondents:           # base, persona:keto, ..., aligned:keto, ...
            r.label, r.backend, r.system
        p.notes                           # "r/x has no adapter on ...: run ..."
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from .errors import CciError
from .llm import Backend, get_backend

PERSONA = ("You are a member of the online community r/{community}. Answer the way its "
           "members typically would.")
KINDS = ("base", "persona", "aligned")


class NoAdapter(CciError):
    """An aligned respondent was required but cannot be built: the message says what to do."""


@dataclass
class Respondent:
    label: str  # "base", "persona:keto", "aligned:keto": the key answers are stored under
    backend: Backend
    system: str | None = None  # the persona's system prompt
    adapter: str | None = None  # the GGUF adapter's path (aligned)

    @property
    def kind(self) -> str:
        return self.label.split(":")[0]


@dataclass
class Panel:
    """The respondents, the notes on those left out, and the models to close."""

    respondents: list[Respondent] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    base: Backend | None = None  # the base model: base, personas and switched adapters
    opened: list[Backend] = field(default_factory=list)
    owns_base: bool = True  # False: the caller opened the base and closes it

    def plan(self) -> list[tuple[str, Backend, str | None]]:
        """(label, backend, system prompt) per respondent, in order."""
        return [(r.label, r.backend, r.system) for r in self.respondents]

    def close(self) -> None:
        for model in ([self.base] if self.base and self.owns_base else []) + self.opened:
            model.close()

    def __enter__(self) -> Panel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def labels(community: str) -> list[str]:
    """The respondent labels a community's answer key is compared with."""
    return ["base", f"persona:{community}", f"aligned:{community}"]


def newest_adapter(db: sqlite_utils.Database, community: str, resolved) -> dict | None:
    """The community's newest finished adapter trained on the base ``resolved``
    (train.resolve_base): its whole ``adapters`` row, or None."""
    from .train import base_identity

    cur = db.execute("SELECT * FROM adapters WHERE community = ? AND status = 'done'"
                     " AND base_identity = ? AND gguf IS NOT NULL ORDER BY id DESC LIMIT 1",
                     [community, base_identity(db, resolved)])
    row = cur.fetchone()
    return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))


def aligned_backend(db: sqlite_utils.Database, community: str, base: str,
                    shared: Backend | None = None):
    """base + the community's newest finished adapter trained on that base, or None.
    With ``shared`` (the base's backend, open or not), the aligned model is that model
    with the adapter switched in per call: one copy of the base for every community."""
    from .llm.llama_cpp import LlamaCppBackend
    from .train import resolve_base

    resolved = resolve_base(base)
    if resolved.gguf is None:
        return None
    adapter = newest_adapter(db, community, resolved)
    if adapter is None:
        return None
    spec = f"{base}+adapter:{community}"
    if isinstance(shared, LlamaCppBackend) and shared.path.resolve() == Path(
            resolved.gguf).expanduser().resolve():
        return shared.with_adapter(adapter["gguf"], spec=spec)
    return LlamaCppBackend(resolved.gguf, spec=spec, lora_path=adapter["gguf"])


def server_aligned(url: str, pattern: str, community: str) -> Respondent:
    """A community's aligned model served by an OpenAI-compatible server.  ``pattern``
    names it, ``{community}`` filled in: the model asked for (vLLM's ``--lora-modules
    NAME=PATH``, ``cci-local serve``, llama_cpp.server's ``model_alias``).  A pattern
    ``lora:{community}`` instead asks llama.cpp's llama-server (``--lora`` per
    community) for the adapter whose file is the community's (see llama_server_lora)."""
    from .llm.openai import OpenAIBackend, llama_server_lora

    name = pattern.replace("{community}", community)
    if name.startswith("lora:"):
        number = llama_server_lora(url, name.removeprefix("lora:"))
        backend = OpenAIBackend(name, base_url=url,
                                extra_body={"lora": [{"id": number, "scale": 1.0}]})
    else:
        backend = OpenAIBackend(name, base_url=url)
    return Respondent(f"aligned:{community}", backend, None, f"{backend.base_url}#{name}")


def local_gguf(base: str) -> bool:
    """Whether ``base`` is a GGUF file run in this process (embedded, gguf:PATH or a
    registry name for one): the form adapters are switched on."""
    from .llm.registry import resolve

    spec, _ = resolve(base)
    return spec == "embedded" or spec.startswith("gguf:")


def check_adapters_load(db: sqlite_utils.Database, base: str) -> None:
    """Raise NoAdapter when ``base`` cannot take a GGUF adapter here (a remote server,
    a Hugging Face folder), naming what to do instead."""
    from .train import TrainError, resolve_base

    try:
        resolved = resolve_base(base)
    except TrainError as e:
        trained = db.execute("SELECT 1 FROM adapters WHERE status = 'done' LIMIT 1").fetchone()
        hint = (" For Ollama: `cci-local adapters export COMMUNITY -o DIR` writes a Modelfile "
                "(past the privacy audit); `ollama create NAME -f DIR/COMMUNITY/Modelfile`, "
                "then `cci-local prompt ollama:NAME ...`." if trained else "")
        raise NoAdapter(f"{base} cannot load a community's LoRA adapter here ({e}).{hint}") \
            from e
    if resolved.gguf is None:
        raise NoAdapter(f"{base} is a Hugging Face folder: `ask` runs GGUF models with their "
                        "GGUF adapters; pass --base embedded or --base gguf:PATH")


def panel(db: sqlite_utils.Database, communities: list[str], base: str, *,
          include_base: bool = True, persona: bool = True, aligned: bool = True,
          persona_text: str = PERSONA, order: tuple[str, ...] = KINDS,
          require_adapters: bool = False, open_base: bool = False,
          base_backend: Backend | None = None, aligned_server: str | None = None,
          aligned_name: str = "{community}") -> Panel:
    """The respondents for ``communities`` on ``base``, kinds in ``order``.

    A community without an adapter on ``base`` gets a note (or, with
    ``require_adapters``, NoAdapter naming the command to run).  The base model is
    opened when a base or persona respondent needs it, or when ``open_base`` says so
    (fidelity scores perplexity with it); ``base_backend`` is one already open (kept
    open on close).  An aligned model is the base with the community's adapter
    switched in per call, on the same model and context; with ``aligned_server`` it
    is a model of that OpenAI-compatible server instead, named by ``aligned_name``
    (see server_aligned)."""
    result = Panel()
    if base_backend is not None:
        result.base, result.owns_base = base_backend, False
    try:
        if require_adapters and not aligned_server:
            check_adapters_load(db, base)
        if result.base is None and (include_base or persona or open_base):
            result.base = get_backend(base)
        by_kind: dict[str, list[Respondent]] = {k: [] for k in KINDS}
        if include_base:
            by_kind["base"].append(Respondent("base", result.base))
        if persona:
            by_kind["persona"] = [Respondent(f"persona:{c}", result.base,
                                             persona_text.format(community=c))
                                  for c in communities]
        if aligned and aligned_server:
            by_kind["aligned"] = [server_aligned(aligned_server, aligned_name, c)
                                  for c in communities]
            result.opened += [r.backend for r in by_kind["aligned"]]
        elif aligned:
            if result.base is None and local_gguf(base):
                result.base = get_backend(base)  # loaded on first use, by an aligned model
            for c in communities:
                adapted = aligned_backend(db, c, base, result.base)
                if adapted is None:
                    if require_adapters:
                        raise NoAdapter(f"r/{c} has no adapter on {base}: train it with "
                                        f"`cci-local train r/{c}` (or `cci-local run r/{c}`), "
                                        f"or leave r/{c} out")
                    result.notes.append(f"r/{c} has no adapter on {base}: run `cci-local "
                                        f"train r/{c}` to add its aligned model")
                    continue
                if adapted.model is not getattr(result.base, "model", None):
                    result.opened.append(adapted)
                by_kind["aligned"].append(Respondent(f"aligned:{c}", adapted, None,
                                                     str(adapted.lora_path)))
        result.respondents = [r for kind in order for r in by_kind[kind]]
    except BaseException:
        result.close()
        raise
    return result
