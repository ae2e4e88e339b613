"""`cci-local models` and `cci-local doctor`: what is installed and reachable right now.

Nothing here sends a request off this machine: remote models are only checked
for their key being set, and Ollama / compatible servers only when they are on
this machine (or where $OLLAMA_HOST points)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .llm.base import BackendError, is_loopback
from .llm.ollama import DEFAULT_HOST
from .llm.registry import ROLES, Entry, Registry, resolve


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str


def _get_json(url: str, timeout: float = 1.5):
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - local URL
        return json.loads(response.read())


def _ollama_models(host: str) -> set[str] | str:
    """Names pulled in the Ollama at ``host``, or why they cannot be listed."""
    try:
        data = _get_json(host.rstrip("/") + "/api/tags")
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"Ollama not reachable at {host} ({getattr(e, 'reason', e)}): `ollama serve`"
    return {m.get("model") or m.get("name") for m in data.get("models", [])}


def availability(spec: str) -> tuple[bool, str]:
    """Whether a backend spec can be used right now, and what to do if not."""
    if spec == "embedded":
        try:
            from .llm.llama_cpp import embedded_model_path

            path = embedded_model_path()
        except BackendError as e:
            return False, str(e)
        if importlib.util.find_spec("llama_cpp") is None:
            return False, "llama-cpp-python is not installed"
        return True, f"{path.name}, {path.stat().st_size / 2**20:.0f} MB, in-process"
    if spec.startswith("gguf:"):
        path = Path(spec[5:]).expanduser()
        if not path.is_file():
            return False, f"no file at {path}: download the GGUF there"
        return True, f"{path.stat().st_size / 2**30:.1f} GB, in-process"
    if spec.startswith("ollama:"):
        name = spec[7:] if ":" in spec[7:] else spec[7:] + ":latest"
        host = os.environ.get("OLLAMA_HOST") or DEFAULT_HOST
        models = _ollama_models(host)
        if isinstance(models, str):
            return False, models
        return (True, f"pulled in Ollama at {host}") if name in models else \
            (False, f"not pulled: `ollama pull {name}`")
    if spec.startswith("openai:"):
        if os.environ.get("OPENAI_API_KEY"):
            return True, "remote (texts leave this machine); key set in $OPENAI_API_KEY"
        return False, "remote; needs $OPENAI_API_KEY"
    if spec.startswith("openai-compatible:"):
        url = spec[len("openai-compatible:"):].rpartition("#")[0]
        if not is_loopback(url):
            return True, f"remote server {url} (not contacted)"
        try:
            _get_json(url.rstrip("/") + "/models")
        except (urllib.error.URLError, OSError, ValueError) as e:
            return False, f"no server answering at {url} ({getattr(e, 'reason', e)})"
        return True, f"server answering at {url}"
    return False, "unknown model form"


def model_rows(registry: Registry) -> list[tuple[Entry, bool, str]]:
    return [(entry, *availability(entry.model)) for entry in registry.entries.values()]


def stage_rows(registry: Registry) -> list[tuple[str, str, str, bool, str]]:
    rows = []
    for role in ROLES:
        name, source = registry.default(role)
        spec, _ = resolve(name, registry)
        rows.append((role, name, source, *availability(spec)))
    return rows


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _memory() -> tuple[float, float] | None:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        total = int(info["MemTotal"].split()[0]) / 2**20
        available = int(info["MemAvailable"].split()[0]) / 2**20
        return total, available
    except (OSError, KeyError, ValueError):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
            return total, float("nan")
        except (ValueError, OSError, AttributeError):
            return None


def checks(db_path: Path, smoke_test: bool = True) -> list[Check]:
    """The environment, from Python to the models each stage would use."""
    out = [Check("python", "ok" if sys.version_info >= (3, 10) else "fail",
                 f"{platform.python_version()} on {platform.system()} {platform.machine()}")]
    out.append(Check("cci-local", "ok", _version("cci-local") or "not installed as a package"))

    if db_path.exists():
        from .store import SCHEMA_VERSION, open_store, schema_version

        try:
            db = open_store(db_path, upgrade=False)
            version = schema_version(db)
            docs = db.execute("SELECT count(*) FROM documents").fetchone()[0] if version else 0
            state = "ok" if version == SCHEMA_VERSION else "warn"
            out.append(Check("store", state, f"{db_path}: schema {version} (current "
                             f"{SCHEMA_VERSION}; opening it upgrades), {docs:,} documents"))
        except Exception as e:  # noqa: BLE001 - reported, not raised
            out.append(Check("store", "fail", f"{db_path}: {e}"))
    else:
        out.append(Check("store", "warn", f"{db_path} does not exist yet: `cci-local ingest`"))

    where = db_path.resolve().parent if db_path.parent.exists() else Path.cwd()
    free = shutil.disk_usage(where).free / 2**30
    out.append(Check("disk", "ok" if free > 10 else "warn",
                     f"{free:.0f} GB free in {where} (an 8B GGUF needs ~5 GB, training more)"))
    memory = _memory()
    if memory:
        total, available = memory
        out.append(Check("memory", "ok" if total >= 8 else "warn",
                         f"{total:.0f} GB total, {available:.0f} GB available (8B Q4 base: ~6 GB)"))

    llama = _version("llama-cpp-python")
    if llama is None:
        out.append(Check("llama-cpp-python", "fail", "not installed: pip install llama-cpp-python"))
    else:
        import llama_cpp

        gpu = "GPU offload available" if llama_cpp.llama_supports_gpu_offload() else \
            "CPU only (reinstall with CMAKE_ARGS for Metal/CUDA)"
        out.append(Check("llama-cpp-python", "ok", f"{llama}, {gpu}"))

    ok, detail = availability("embedded")
    if ok and llama is not None:
        # A real multi-token decode in a child process first: a build with an instruction
        # this CPU refuses dies there (SIGILL), and this process lives to say so.
        from .llm.cpucheck import probe

        result = probe()
        out.append(Check("llama.cpp on this CPU", "ok" if result.ok else "fail",
                         f"{result.detail} ({result.seconds:.1f} s); build: {_build_info()}"
                         if result.ok else result.detail))
        ok = ok and result.ok
        if not result.ok:
            detail = "not loaded here: see the llama.cpp check above"
    if ok and smoke_test:
        ok, detail = _smoke_test_embedded(detail)
    out.append(Check("embedded model", "ok" if ok else "fail", detail))

    host = os.environ.get("OLLAMA_HOST") or DEFAULT_HOST
    models = _ollama_models(host)
    out.append(Check("ollama", "warn" if isinstance(models, str) else "ok",
                     models if isinstance(models, str)
                     else f"{host}: {len(models)} models pulled ({', '.join(sorted(models)[:5])})"))
    out.append(Check("openai key", "ok" if os.environ.get("OPENAI_API_KEY") else "warn",
                     "$OPENAI_API_KEY is set (never stored)" if os.environ.get("OPENAI_API_KEY")
                     else "$OPENAI_API_KEY not set: openai:* models unavailable (optional)"))

    training = {p: _version(p) for p in ("torch", "transformers", "peft", "gguf")}
    missing = [p for p, v in training.items() if v is None]
    if missing:
        out.append(Check("training", "warn", f"missing {', '.join(missing)}: "
                         "pip install 'cci-local[train]' to train adapters"))
    else:
        out.append(Check("training", "ok", ", ".join(f"{p} {v}" for p, v in training.items())
                         + _accelerator()))
    return out


def _build_info() -> str:
    """The CPU features the installed llama.cpp was compiled with (its own report)."""
    import llama_cpp

    from .llm.cpucheck import build_features

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    return " ".join(build_features(info)) or info.strip()


def _accelerator() -> str:
    try:
        import torch
    except ImportError:
        return ""
    if torch.cuda.is_available():
        return f"; CUDA: {torch.cuda.get_device_name(0)}"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "; Apple MPS"
    return "; CPU only"


def _smoke_test_embedded(detail: str) -> tuple[bool, str]:
    from .llm.base import Sampling
    from .llm.registry import get_backend

    try:
        backend = get_backend("embedded")
        text = backend.chat([{"role": "user", "content": "Name the capital city of France."}],
                            sampling=Sampling(max_tokens=8)).text
        backend.close()
    except BackendError as e:
        return False, str(e)
    return True, f"{detail}; answered {text.strip()[:40]!r}"
