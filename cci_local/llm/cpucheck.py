"""Does this llama.cpp build run on this CPU?  Asked in a child process, so that a
crash there is a message here instead of a bare "Illegal instruction".

A build can hold instructions the CPU advertises but refuses (AMX in a VM that does
not pass the tile state through): the first prompt longer than one token then dies
with SIGILL.  ``probe()`` loads the embedded model in a child process and decodes a
multi-token prompt plus a few tokens.  ``ensure()`` does that once per llama.cpp
build and CPU (remembered in the user's cache folder) before the first model load
of a command; ``cci-local doctor`` asks every time."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .base import BackendError

PROBE_PROMPT = "What is the capital of France? Answer in one word."
_CHILD = "from cci_local.llm.cpucheck import _child; _child()"
SIGNAL_HELP = {
    "SIGILL": "this llama.cpp build uses a CPU instruction this machine refuses",
    "SIGBUS": "this llama.cpp build crashed reading memory (SIGBUS)",
    "SIGSEGV": "this llama.cpp build crashed (segmentation fault)",
}


@dataclass
class ProbeResult:
    ok: bool
    detail: str  # what was decoded, or what went wrong and what to do
    signal: str | None = None
    seconds: float = 0.0


def lib_dir() -> Path:
    """The folder llama-cpp-python loads its libraries from."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        raise BackendError("llama-cpp-python is not installed")
    return Path(spec.origin).parent / "lib"


def build_key() -> str:
    """The llama.cpp build (its libraries' names, sizes, times) and this CPU's flags."""
    from ..buildflags import cpu_flags

    h = hashlib.sha256()
    folder = lib_dir()
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        st = path.stat()
        h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(" ".join(sorted(cpu_flags())).encode())
    h.update(os.uname().machine.encode() if hasattr(os, "uname") else b"")
    return h.hexdigest()[:24]


def _child() -> None:  # runs in the child process
    import llama_cpp

    from .embedded import embedded_model_path

    llm = llama_cpp.Llama(model_path=str(embedded_model_path()), n_ctx=256, n_threads=1,
                          n_gpu_layers=0, verbose=False)
    tokens = llm.tokenize(PROBE_PROMPT.encode())
    llm.eval(tokens)  # the batch of several tokens: where a refused instruction crashed
    llm.reset()
    out = llm.create_chat_completion([{"role": "user", "content": PROBE_PROMPT}],
                                     max_tokens=6, temperature=0.0)
    print(json.dumps({"prompt_tokens": out["usage"]["prompt_tokens"],
                      "tokens": out["usage"]["completion_tokens"],
                      "text": out["choices"][0]["message"]["content"]}))


def probe(command: list[str] | None = None, timeout: float = 300) -> ProbeResult:
    """Run a real multi-token decode of the embedded model in a child process
    (``command`` replaces it, for tests) and say how it ended."""
    command = command or [sys.executable, "-c", _CHILD]
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"the test decode did not finish in {timeout:.0f} s",
                           seconds=time.monotonic() - start)
    seconds = time.monotonic() - start
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        what = SIGNAL_HELP.get(name, f"the llama.cpp test decode was killed by {name}")
        return ProbeResult(False, f"{what} ({name} in a test decode of the embedded model); "
                           f"rebuild it for this CPU: {rebuild_command()}", name, seconds)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return ProbeResult(False, f"the test decode failed (exit {done.returncode}): {last}",
                           seconds=seconds)
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
        detail = (f"a child process decoded a {result['prompt_tokens']}-token prompt and "
                  f"{result['tokens']} tokens: {result['text'].strip()[:30]!r}")
    except (ValueError, IndexError, KeyError, TypeError):
        detail = "the test decode ran in a child process"
    return ProbeResult(True, detail, seconds=seconds)


def build_features(info: str) -> list[str]:
    """The instruction sets a llama.cpp build reports as on, from its
    ``llama_print_system_info()`` ('CPU : SSE3 = 1 | AVX = 1 | ...')."""
    return [part.split("=")[0].strip() for part in info.replace("CPU :", "|").split("|")
            if part.strip().endswith("= 1")]


def rebuild_command() -> str:
    from ..buildflags import rebuild_command as command

    try:
        import importlib.metadata

        version = importlib.metadata.version("llama-cpp-python")
    except Exception:  # noqa: BLE001 - the command still works without the pin
        version = None
    return command(sys.executable, version)


def _memory_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cci-local" / "cpu-check.json"


def ensure(command: list[str] | None = None) -> None:
    """Before the first model load of a process: the probe, once per llama.cpp build
    and CPU; a build that crashed is refused with the reason and the rebuild command."""
    global _checked
    if _checked or os.environ.get("CCI_LOCAL_CPU_CHECK") == "0":
        return
    try:
        key = build_key()
    except BackendError:
        return  # llama-cpp-python missing: the load itself says so
    path = _memory_file()
    try:
        memory = json.loads(path.read_text())
    except (OSError, ValueError):
        memory = {}
    seen = memory.get(key)
    if seen is None:
        result = probe(command)
        if result.ok or result.signal:  # a crash is this build's; a timeout may pass
            seen = memory[key] = {"ok": result.ok, "detail": result.detail,
                                  "at": time.time()}
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(memory, indent=1))
            except OSError:
                pass
        else:
            seen = {"ok": True}  # not a crash: let the real load report its own error
    if not seen["ok"]:
        raise BackendError(seen["detail"])
    _checked = True


_checked = False
