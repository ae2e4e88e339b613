"""The backend layer on the default llama.cpp build vs a native (-march=native) build.

The default build (cci_local/buildflags.py) names its instruction sets instead of
taking every one the CPU advertises, so that no host crashes on AMX.  This measures
what that costs here: the same workload through cci-local's backend layer (chat
template, cache lookup, a fresh store's writes) on both builds, each in its own child
process (llama-cpp-python picks its library with LLAMA_CPP_LIB_PATH), rounds
alternating between them.  The native build is compiled once into
benchmarks/.cache/ (about 3 minutes on 2 cores).

Target (issue 17): default / native >= 0.90, for generation and for prompt reading.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
TOPICS = ["intermittent fasting", "electrolytes", "net carbs", "keto flu", "protein intake",
          "artificial sweeteners", "meal prep", "weight plateaus"]
LONG = ("Summarise what this member of a keto community says, in one sentence: "
        + " ".join(f"On day {i} I ate eggs, bacon and spinach, kept net carbs under twenty "
                   "grams, drank water with salt, and felt my energy return." for i in range(14)))


def native_build(version: str) -> Path:
    """llama-cpp-python ``version`` compiled natively (its own default), once."""
    target = CACHE / f"llama-native-{version}"
    lib = target / "llama_cpp" / "lib"
    if (lib / "libllama.so").exists() or (lib / "libllama.dylib").exists():
        return lib
    print(f"building llama-cpp-python {version} natively into {target} (once, ~3 min) ...",
          flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-cache-dir", "--target", str(target), f"llama-cpp-python=={version}"],
                   env={**os.environ, "CMAKE_ARGS": "-DLLAVA_BUILD=OFF"}, check=True)
    return lib


def child(round_no: int, n: int, max_tokens: int) -> None:
    from cci_local.llm import Sampling, chat, get_backend
    from cci_local.store import open_store

    backend = get_backend("embedded")
    with tempfile.TemporaryDirectory() as tmp:
        db = open_store(Path(tmp) / "bench.db")
        chat(db, backend, [{"role": "user", "content": "Warm up."}],
             sampling=Sampling(max_tokens=4))  # load and first-call allocations: not timed
        gen = [0, 0.0]
        for i in range(n):
            messages = [{"role": "user", "content": f"In two sentences, give round-{round_no} "
                         f"advice about {TOPICS[i % len(TOPICS)]} to a keto beginner."}]
            start = time.perf_counter()
            chat(db, backend, messages, sampling=Sampling(max_tokens=max_tokens))
            gen[1] += time.perf_counter() - start
        gen[0] = db.execute("SELECT sum(completion_tokens) FROM llm_calls"
                            " WHERE request LIKE '%advice about%'").fetchone()[0]
        read = [0, 0.0]
        for i in range(n):
            messages = [{"role": "user", "content": f"({round_no}.{i}) {LONG}"}]
            start = time.perf_counter()
            chat(db, backend, messages, sampling=Sampling(max_tokens=1))
            read[1] += time.perf_counter() - start
        read[0] = db.execute("SELECT sum(prompt_tokens) FROM llm_calls"
                             " WHERE request LIKE '%Summarise what%'").fetchone()[0]
    import llama_cpp

    print(json.dumps({"gen": gen, "read": read,
                      "info": llama_cpp.llama_print_system_info().decode()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.prompts, args.max_tokens)
        return

    from cci_local.buildflags import amx_instructions
    from cci_local.llm.cpucheck import build_features, lib_dir

    version = importlib.metadata.version("llama-cpp-python")
    builds = {"default": None, "native": native_build(version)}
    results: dict[str, list[dict]] = {name: [] for name in builds}
    for r in range(args.rounds):
        order = list(builds) if r % 2 == 0 else list(reversed(builds))
        for name in order:
            env = {**os.environ}
            env.pop("LLAMA_CPP_LIB_PATH", None)
            if builds[name] is not None:
                env["LLAMA_CPP_LIB_PATH"] = str(builds[name])
            done = subprocess.run([sys.executable, __file__, "--child", str(r), "--prompts",
                                   str(args.prompts), "--max-tokens", str(args.max_tokens)],
                                  env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{name} build failed (exit {done.returncode}): {done.stderr[-2000:]}")
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))

    def rate(name: str, what: str) -> float:
        return statistics.median(n / s for n, s in (x[what] for x in results[name]))

    def amx(folder: Path) -> str:
        libs = sorted(folder.glob("libggml-cpu*.so*"))
        return ("AMX" if amx_instructions(libs[0]) else "no AMX") if libs else "?"

    print(f"build benchmark: llama-cpp-python {version}, embedded model, {args.rounds} rounds "
          f"x {args.prompts} prompts per build, alternating; medians over rounds")
    folders = {"default": lib_dir(), "native": builds["native"]}
    for name in builds:
        flags = build_features(results[name][0]["info"])
        print(f"  {name:8} ({amx(folders[name])}; {' '.join(flags)})")
        print(f"           generation {rate(name, 'gen'):7.1f} tokens/s   "
              f"prompt reading {rate(name, 'read'):8.1f} tokens/s")
    for what, label in (("gen", "generation"), ("read", "prompt reading")):
        ratio = rate("default", what) / rate("native", what)
        print(f"  default / native, {label}: {ratio:.2f} (target >= 0.90): "
              f"{'ok' if ratio >= 0.9 else 'MISSED'}")


if __name__ == "__main__":
    main()
