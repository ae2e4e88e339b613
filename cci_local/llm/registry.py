"""The model registry (models/registry.toml) and MODEL names -> backends."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .base import Backend, BackendError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTIN = Path(__file__).with_name("registry.toml")  # models/registry.toml, shipped
ROLES = ("teacher", "base", "judge")
FORMS = ("embedded", "gguf:/path/file.gguf", "ollama:NAME", "openai:NAME",
         "openai-compatible:URL#NAME")


class UnknownModel(BackendError):
    """A MODEL name that is neither a registry entry nor a backend form (bad usage)."""

    exit_code = 2  # a name to fix, not a failure


@dataclass
class Entry:
    name: str
    model: str
    description: str = ""
    roles: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # n_ctx, n_gpu_layers, num_ctx, ...


@dataclass
class Registry:
    entries: dict[str, Entry]
    defaults: dict[str, str]
    files: list[Path]

    def default(self, role: str) -> tuple[str, str]:
        """(MODEL, where the choice comes from) for a stage role."""
        env = f"CCI_LOCAL_{role.upper()}"
        if os.environ.get(env):
            return os.environ[env], f"${env}"
        return self.defaults.get(role, "embedded"), "registry default"


def load_registry() -> Registry:
    files = [BUILTIN]
    if os.environ.get("CCI_LOCAL_REGISTRY"):
        files.append(Path(os.environ["CCI_LOCAL_REGISTRY"]).expanduser())
    entries: dict[str, Entry] = {}
    defaults: dict[str, str] = {}
    for path in files:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise BackendError(f"model registry {path} does not exist") from e
        except tomllib.TOMLDecodeError as e:
            raise BackendError(f"model registry {path} is not valid TOML: {e}") from e
        defaults.update(data.get("defaults", {}))
        for name, spec in data.get("models", {}).items():
            if "model" not in spec:
                raise BackendError(f"{path}: [models.{name}] needs a 'model' (one of {FORMS})")
            options = {k: v for k, v in spec.items()
                       if k not in ("model", "description", "roles")}
            entries[name] = Entry(name, spec["model"], spec.get("description", ""),
                                  list(spec.get("roles", [])), options)
    return Registry(entries, defaults, files)


def default_model(role: str, given: str | None = None) -> str:
    """The MODEL a stage uses for ``role`` (teacher, base, judge): ``given`` (an option
    the user set), else the registry's default for the role.  The one place defaults
    are resolved."""
    return given or load_registry().default(role)[0]


def resolve(name: str, registry: Registry | None = None) -> tuple[str, dict]:
    """MODEL name -> (backend spec, options from its registry entry)."""
    registry = registry or load_registry()
    entry = registry.entries.get(name)
    if entry is not None:
        return entry.model, dict(entry.options)
    return name, {}


def get_backend(name: str, registry: Registry | None = None, **options) -> Backend:
    """A backend for a MODEL name: a registry entry or one of FORMS."""
    spec, entry_options = resolve(name, registry)
    opts = {**entry_options, **options}
    if spec == "embedded":
        from .llama_cpp import LlamaCppBackend, embedded_model_path

        return LlamaCppBackend(embedded_model_path(), spec="embedded", **_llama_opts(opts))
    if spec.startswith("gguf:"):
        from .llama_cpp import LlamaCppBackend

        return LlamaCppBackend(spec[len("gguf:"):], **_llama_opts(opts))
    if spec.startswith("ollama:") and len(spec) > len("ollama:"):
        from .ollama import OllamaBackend

        return OllamaBackend(spec[len("ollama:"):], **_pick(opts, "host", "num_ctx", "timeout"))
    if spec.startswith("openai:") and len(spec) > len("openai:"):
        from .openai import OpenAIBackend

        return OpenAIBackend(spec[len("openai:"):], **_openai_opts(opts))
    if spec.startswith("openai-compatible:"):
        url, _, model = spec[len("openai-compatible:"):].rpartition("#")
        if not url or not model:
            raise UnknownModel(f"{spec!r}: expected openai-compatible:URL#NAME, e.g. "
                               "openai-compatible:http://127.0.0.1:8000/v1#llama-3.1-8b")
        from .openai import OpenAIBackend

        return OpenAIBackend(model, base_url=url, **_openai_opts(opts))
    known = ", ".join(sorted((registry or load_registry()).entries))
    raise UnknownModel(f"unknown model {name!r}: use one of {', '.join(FORMS)}, "
                       f"or a registry name ({known})")


def _pick(opts: dict, *keys: str) -> dict:
    return {k: opts[k] for k in keys if k in opts}


def _openai_opts(opts: dict) -> dict:
    return _pick(opts, "timeout", "max_retries", "context_length")


def _llama_opts(opts: dict) -> dict:
    return _pick(opts, "n_ctx", "n_threads", "n_gpu_layers", "n_batch")
