"""Many communities on one machine: peak memory and survey throughput of 8 communities'
aligned models, the old way against the new, in one run.

- base alone: the embedded base answering the questions (the floor);
- old: each aligned model its own ``Llama(model_path=base, lora_path=adapter)``, as
  cci-local did before issue 21 (llama-cpp-python turns mmap off when lora_path is
  set, so each holds a private copy of the base, plus its own context);
- new: one base and context, each adapter loaded once and switched in per respondent
  (``LlamaCppBackend.with_adapter``), as survey, psychometrics, fidelity and ask do now.

Each runs in its own child process (its own peak RSS), on a fresh store, letter
scoring, every respondent answering the same questions (items of the shared
eating-disorder questionnaires).  The adapters have the shape training gives (rank
16 on q/k/v/o/gate/up/down, f32: 19.6 MB each, as `cci-local train` writes them),
with seeded random weights so the bench needs no training run.

Then what a switch costs a server: a 1-token request alternating between two
communities' names against repeating one name, for llama_cpp.server's own config
(it reloads the base whenever the name changes) and for `cci-local serve`.

Goal (issue 21): new peak RSS <= 1.2 x (base alone + the 8 adapter files);
new questions/s >= old.
"""

from __future__ import annotations

import argparse
import csv
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
ITEMS = ROOT.parent / "shared" / "instruments" / "eating_disorder_items.csv"
SCALE = {"A": "Never", "B": "Sometimes", "C": "Often", "D": "Always"}
MODULES = {"self_attn.q_proj": (576, 576), "self_attn.k_proj": (576, 192),
           "self_attn.v_proj": (576, 192), "self_attn.o_proj": (576, 576),
           "mlp.gate_proj": (576, 1536), "mlp.up_proj": (576, 1536),
           "mlp.down_proj": (1536, 576)}  # SmolLM2-135M: (in, out) per block, 30 blocks


def write_adapter(path: Path, seed: int, rank: int = 16) -> Path:
    import numpy as np

    from cci_local.train.gguf_lora import gguf_tensors, write_gguf_lora

    rng = np.random.default_rng(seed)
    state = {}
    for i in range(30):
        for module, (n_in, n_out) in MODULES.items():
            prefix = f"base_model.model.model.layers.{i}.{module}"
            state[f"{prefix}.lora_A.weight"] = rng.normal(0, 0.02, (rank, n_in)).astype("f4")
            state[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.02, (n_out, rank)).astype("f4")
    return write_gguf_lora(path, gguf_tensors(state, arch="llama", n_head=9, n_head_kv=3),
                           arch="llama", alpha=32)


def child(mode: str, adapters: list[str], questions: int, out: str) -> None:
    """One configuration, in this (child) process; writes its figures to ``out``."""
    from common import peak_rss_mb

    from cci_local.evaluate.survey import Item, administer
    from cci_local.llm.llama_cpp import LlamaCppBackend, LoadedModel, embedded_model_path
    from cci_local.store import open_store

    class SeparateModel(LoadedModel):
        """The old path: llama-cpp-python's own Llama(lora_path=...) per community."""

        def __init__(self, path, adapter):
            super().__init__(path, n_ctx=4096, n_threads=None, n_gpu_layers=-1, n_batch=512)
            self.adapter = adapter

        @property
        def llm(self):
            if self._llm is None:
                import llama_cpp

                self._llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=4096,
                                            lora_path=self.adapter, verbose=False)
                self._llm.chat_format = "chat_template.default"
            return self._llm

        def use(self, adapter):
            return self.llm

    with open(ITEMS, newline="", encoding="utf-8") as fh:
        texts = [row["Question"] for row in csv.DictReader(fh)][:questions]
    items = [Item(f"bench:{i}", q, SCALE, {"x": "A"}) for i, q in enumerate(texts)]
    base_path = embedded_model_path()
    base = LlamaCppBackend(base_path)
    if mode == "base":
        respondents = [base]
    elif mode == "old":
        respondents = [LlamaCppBackend(base_path, lora_path=a,
                                       model=SeparateModel(base_path, a)) for a in adapters]
    else:
        respondents = [base.with_adapter(a) for a in adapters]
    with tempfile.TemporaryDirectory() as tmp:
        db = open_store(Path(tmp) / "bench.db")
        start = time.perf_counter()
        for k, backend in enumerate(respondents):
            administer(db, f"aligned:c{k}", backend, items)
        seconds = time.perf_counter() - start
    # The old path keeps every model open until the end, as the stages did.
    Path(out).write_text(json.dumps({
        "peak_rss_mb": peak_rss_mb(), "questions": len(items) * len(respondents),
        "seconds": seconds}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def switch_cost(args: list[str], url: str, names: list[str], rounds: int) -> dict:
    """Mean seconds of a 1-token chat request (a new question each time): repeating one
    name, then alternating between two."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{args[:4]} did not start") from None
                time.sleep(0.3)

        asked = [0]

        def ask(name: str) -> float:
            # A new question each time: every request evaluates its question, and only
            # a switch of adapter (or model) adds to that.
            asked[0] += 1
            body = json.dumps({"model": name, "max_tokens": 1, "temperature": 0, "messages": [
                {"role": "user", "content": f"Question {asked[0]}: is {asked[0]} even?"}]}
                ).encode()
            request = urllib.request.Request(url + "/chat/completions", body,
                                             {"Content-Type": "application/json"})
            start = time.perf_counter()
            urllib.request.urlopen(request, timeout=120).read()
            return time.perf_counter() - start

        ask(names[0])
        same = [ask(names[0]) for _ in range(rounds)]
        alternating = [ask(names[k % 2]) for k in range(1, rounds + 1)]
        return {"same": sum(same) / rounds, "alternating": sum(alternating) / rounds}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--communities", type=int, default=8)
    ap.add_argument("--questions", type=int, default=16, help="questions per respondent")
    ap.add_argument("--rounds", type=int, default=6, help="server requests per timing")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of each configuration (the median rate is reported)")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "ADAPTERS", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, adapters, out = args.child
        child(mode, json.loads(adapters), args.questions, out)
        return

    from cci_local.llm.llama_cpp import embedded_model_path

    cache = ROOT / "benchmarks" / ".cache" / "adapters"
    cache.mkdir(parents=True, exist_ok=True)
    adapters = []
    for k in range(args.communities):
        path = cache / f"c{k}" / "adapter.gguf"
        if not path.is_file():
            path.parent.mkdir(exist_ok=True)
            write_adapter(path, seed=k)
        adapters.append(str(path))
    files_mb = sum(Path(a).stat().st_size for a in adapters) / 2**20
    runs: dict[str, list[dict]] = {"base": [], "old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):  # alternating, so drift on the machine hits all three
            for mode in runs:
                out = Path(tmp) / f"{mode}{k}.json"
                subprocess.run([sys.executable, __file__, "--questions", str(args.questions),
                                "--child", mode, json.dumps(adapters), str(out)], check=True)
                runs[mode].append(json.loads(out.read_text()))
    figures = {}
    for mode, done in runs.items():  # the run with the median rate, and the largest peak
        done.sort(key=lambda f: f["questions"] / f["seconds"])
        figures[mode] = {**done[len(done) // 2],
                         "peak_rss_mb": max(f["peak_rss_mb"] for f in done)}
    base_rss = figures["base"]["peak_rss_mb"]
    goal = 1.2 * (base_rss + files_mb)
    print(f"{args.communities} communities' adapters ({files_mb:.0f} MB of GGUF LoRA files), "
          f"{args.questions} questions each, letter scoring, embedded base "
          f"({embedded_model_path().stat().st_size / 2**20:.0f} MB); median of "
          f"{args.repeats} runs, largest peak")
    print(f"{'':<34}{'peak RSS':>12}{'questions/s':>14}")
    for mode, label in (("base", "base alone (1 respondent)"),
                        ("old", "old: a Llama(lora_path) each"),
                        ("new", "new: one base, switched adapters")):
        f = figures[mode]
        print(f"{label:<34}{f['peak_rss_mb']:>9.0f} MB{f['questions'] / f['seconds']:>14.2f}")
    new, old = figures["new"], figures["old"]
    new_rate, old_rate = (new["questions"] / new["seconds"], old["questions"] / old["seconds"])
    print(f"goal: new peak RSS <= 1.2 x (base alone + adapter files) = {goal:.0f} MB: "
          f"{new['peak_rss_mb']:.0f} MB, {'met' if new['peak_rss_mb'] <= goal else 'MISSED'}; "
          f"old {old['peak_rss_mb']:.0f} MB ({old['peak_rss_mb'] / new['peak_rss_mb']:.1f}x new)")
    print(f"goal: new questions/s >= old: {new_rate:.2f} vs {old_rate:.2f} "
          f"({new_rate / old_rate:.2f}x), {'met' if new_rate >= old_rate else 'MISSED'}")

    # What a switch between two communities costs a server.
    base = str(embedded_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"
        port = free_port()
        config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": [
            {"model": base, "model_alias": f"c{k}", "lora_path": adapters[k], "n_ctx": 4096}
            for k in range(2)]}))
        swap = switch_cost([sys.executable, "-m", "llama_cpp.server", "--config_file",
                            str(config)], f"http://127.0.0.1:{port}/v1", ["c0", "c1"],
                           args.rounds)
        port = free_port()
        serve = switch_cost([sys.executable, "-c", SERVE, base, json.dumps(adapters[:2]),
                             str(port)], f"http://127.0.0.1:{port}/v1", ["c0", "c1"],
                            args.rounds)
    print("a 1-token request, mean seconds: same name / alternating between two names")
    for label, f in (("llama_cpp.server config (swaps models)", swap),
                     ("cci-local serve (switches adapters)", serve)):
        print(f"  {label:<40}{f['same']:>8.3f} / {f['alternating']:.3f}  "
              f"(a switch costs {f['alternating'] - f['same']:+.3f} s)")


# `cci-local serve` over two adapters without a store: the same app, started directly.
SERVE = """
import json, sys
from pathlib import Path
import uvicorn
from cci_local.serve import Served, make_app
base, adapters, port = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
models = [Served(f"c{k}", f"c{k}", Path(a), None, 16) for k, a in enumerate(adapters)]
app, proxy = make_app(base, models)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


if __name__ == "__main__":
    main()
