"""The LLaMA-Factory round trip, for real (issue 28): LLaMA-Factory from PyPI trains a
LoRA from the YAML `cci-local export --format llamafactory` writes, on this machine's
CPU, on the embedded model's Hugging Face form; `cci-local adapters add` brings it
back; the survey's answers through llama.cpp (the GGUF base with the converted
adapter) are compared with the same adapter loaded by PEFT in Python.

LLaMA-Factory pins transformers <= 5.6, peft <= 0.18.1 and accelerate <= 1.11, older
than this project's, so it lives in its own virtual environment
(benchmarks/.cache/llamafactory-venv, made on first use): torch 2.13 CPU and
LLaMA-Factory's text-training dependencies (not its web UI, audio and video ones;
torchaudio, which it imports at start-up, has no build for torch 2.13 and is a
placeholder that fails if called: see placeholder()).

Agreement.  llama.cpp runs the Q4_1 GGUF (activations quantized to 8 bits in its dot
products), torch the same weights dequantized to float32, so the two never agree
exactly even without an adapter.  The tolerance is that floor: per question, the
total-variation distance between the two answer distributions with the adapter may
exceed the base's own llama.cpp-vs-torch distance by at most 0.02 on average and
0.05 at worst.  Both distances, and how often the chosen option is the same, are
printed.

    python benchmarks/bench_llamafactory.py [--steps 8] [--examples 64]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = ROOT.parent / "shared" / "data" / "reddit" / "keto_nutrition_2022"
VENV = ROOT / "benchmarks" / ".cache" / "llamafactory-venv"
VERSION = "0.9.5"
# LLaMA-Factory 0.9.5's requirements that `llamafactory-cli train` on text needs, with
# its own bounds; left out: gradio (web UI), av / torchaudio / torchvision (audio,
# video, images), modelscope and hf-transfer (downloads), fastapi/uvicorn (its API).
DEPS = ["accelerate>=1.3.0,<=1.11.0", "datasets>=2.16.0,<=4.0.0", "peft>=0.18.0,<=0.18.1",
        "transformers>=4.55.0,<=5.6.0,!=4.52.0,!=4.57.0", "trl>=0.18.0,<=0.24.0",
        "tyro<0.9.0", "einops", "fire", "omegaconf", "packaging", "pandas", "protobuf",
        "pydantic", "pyyaml", "safetensors", "scipy", "sentencepiece", "tiktoken",
        "matplotlib>=3.7.0", "numpy", "sse-starlette", "fastapi", "uvicorn"]


def install() -> float:
    """The LLaMA-Factory environment (seconds it took; 0 when it was there)."""
    cli = VENV / "bin" / "llamafactory-cli"
    if cli.is_file():
        placeholder()
        return 0.0
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + DEPS, check=True)
    subprocess.run(pip + ["--no-deps", f"llamafactory=={VERSION}"], check=True)
    placeholder()
    return time.monotonic() - start


def placeholder() -> None:
    """LLaMA-Factory imports torchaudio when it starts (data/mm_plugin.py), for audio
    datasets only.  PyPI has no torchaudio for torch 2.13 (its newest, 2.11.1, needs
    torch 2.11.1: a multi-GB CUDA build; with 2.13 its library fails to load), so this
    environment gets a module of that name that fails if anything uses it: text
    training never does, and a call would stop the run, not change it."""
    site = next((VENV / "lib").glob("python3*/site-packages"))
    (site / "torchaudio").mkdir(exist_ok=True)
    (site / "torchaudio" / "__init__.py").write_text(
        '"""Placeholder (benchmarks/bench_llamafactory.py): no torchaudio for torch 2.13."""\n'
        "def __getattr__(name):\n"
        "    raise RuntimeError(f'torchaudio.{name}: torchaudio is not installed here "
        "(benchmarks/bench_llamafactory.py)')\n", encoding="utf-8")


def cci(*args: str, db: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "cci_local", "--db", str(db), *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"cci-local {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def torch_option_logprobs(model, prompt: list[int], variants: list[list[int]]) -> float:
    """log P(reply starts with the option) over its spellings, as
    LlamaCppBackend.option_logprobs computes it, on the same token ids."""
    import torch

    scores = []
    for ids in variants:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + ids[:-1]])).logits[0]
        logp = torch.log_softmax(logits.double(), -1)
        scores.append(sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(ids)))
    top = max(scores)
    return top + math.log(sum(math.exp(s - top) for s in scores))


def questions():
    """The weight-concerns questionnaire's multiple-choice items, as the survey puts them
    (scored by option text, the survey's default for small models, and by letter)."""
    from cci_local.evaluate.instruments import load_instrument
    from cci_local.evaluate.psychometrics import item_messages

    inst = load_instrument("weight-concerns")
    out = []
    for item in inst.items:
        scale = inst.scale_of(item.id)
        if scale.kind != "choice":
            continue
        messages = item_messages(inst, item.id, "", None)
        out.append((messages, [o.text for o in scale.options]))
        out.append((messages, [o.letter for o in scale.options]))
    return out


def distributions(backend, torch_model, asked) -> tuple[list, list]:
    from cci_local.evaluate.survey import normalise

    cpp, tch = [], []
    for messages, options in asked:
        prompt = backend.prompt_tokens(messages)
        a = backend.option_logprobs(messages, options)
        b = {o: torch_option_logprobs(torch_model, prompt, backend._option_token_ids(o))
             for o in options}
        cpp.append(np.array(list(normalise(a).values())))
        tch.append(np.array(list(normalise(b).values())))
    return cpp, tch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--lr", default="2e-3")
    args = parser.parse_args()
    installed = install()
    version = subprocess.run([str(VENV / "bin" / "python"), "-c",
                              "import llamafactory, transformers, peft, torch; print("
                              "llamafactory.__version__, transformers.__version__, "
                              "peft.__version__, torch.__version__)"],
                             capture_output=True, text=True, check=True).stdout.split()
    print(f"LLaMA-Factory {version[0]} (transformers {version[1]}, peft {version[2]}, torch "
          f"{version[3]}) in {VENV.relative_to(ROOT)}"
          + (f"; installed in {installed:.0f} s" if installed else ""))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        db = tmp / "lf.db"
        cci("ingest", str(CORPUS), db=db)
        from cci_local.generate import template_pairs
        from cci_local.store import open_store

        store = open_store(db)
        template_pairs(store)
        store.conn.close()
        out = tmp / "lf"
        start = time.monotonic()
        printed = cci("export", "keto", "--format", "llamafactory", "--kind", "template",
                      "--max-examples", str(args.examples), "--steps", str(args.steps),
                      "--lr", args.lr, "-o", str(out), db=db)
        print(f"$ cci-local export keto --format llamafactory --kind template --max-examples "
              f"{args.examples} --steps {args.steps} --lr {args.lr} -o lf   "
              f"({time.monotonic() - start:.1f} s)")
        print(printed.rstrip())
        env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
                            "DISABLE_VERSION_CHECK": "1", "TQDM_DISABLE": "1"}
        start = time.monotonic()
        run = subprocess.run([str(VENV / "bin" / "llamafactory-cli"), "train",
                              str(out / "keto.yaml")], capture_output=True, text=True, env=env,
                             cwd=tmp)
        seconds = time.monotonic() - start
        if run.returncode != 0:
            sys.exit(f"llamafactory-cli train failed ({run.returncode}):\n"
                     f"{run.stdout[-4000:]}\n{run.stderr[-6000:]}")
        saved = out / "saves" / "keto"
        state = json.loads((saved / "trainer_state.json").read_text())
        losses = [h["loss"] for h in state["log_history"] if "loss" in h]
        print(f"$ llamafactory-cli train lf/keto.yaml   ({seconds:.0f} s on the CPU)")
        print(f"  {state['global_step']} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
              f"saved {', '.join(sorted(p.name for p in saved.iterdir()))}")
        start = time.monotonic()
        printed = cci("adapters", "add", str(saved), "--community", "keto", db=db)
        print(f"$ cci-local adapters add lf/saves/keto --community keto   "
              f"({time.monotonic() - start:.1f} s)")
        print(printed.rstrip())

        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from cci_local.llm.llama_cpp import LlamaCppBackend, embedded_model_path
        from cci_local.respondents import newest_adapter
        from cci_local.train import resolve_base

        store = open_store(db)
        row = newest_adapter(store, "keto", resolve_base("embedded"))
        base = LlamaCppBackend(embedded_model_path(), n_ctx=2048)
        aligned = base.with_adapter(row["gguf"])
        model = AutoModelForCausalLM.from_pretrained(str(out / "base"), dtype=torch.float32)
        peft = PeftModel.from_pretrained(model, str(saved)).eval()
        asked = questions()
        cpp_aligned, torch_aligned = distributions(aligned, peft, asked)
        with peft.disable_adapter():
            cpp_base, torch_base = distributions(base, peft, asked)
        tv = [0.5 * np.abs(a - b).sum() for a, b in zip(cpp_aligned, torch_aligned,
                                                         strict=True)]
        floor = [0.5 * np.abs(a - b).sum() for a, b in zip(cpp_base, torch_base, strict=True)]
        moved = [0.5 * np.abs(a - b).sum() for a, b in zip(cpp_aligned, cpp_base, strict=True)]
        same = sum(int(np.argmax(a) == np.argmax(b))
                   for a, b in zip(cpp_aligned, torch_aligned, strict=True))
        excess = np.array(tv) - np.array(floor)
        print(f"survey ({len(asked)} questions: the weight-concerns items by option text and "
              "by letter):")
        print(f"  the adapter moves llama.cpp's answers by TV {np.mean(moved):.3f} on average "
              f"(max {np.max(moved):.3f})")
        print(f"  llama.cpp + GGUF adapter vs PEFT in torch: TV mean {np.mean(tv):.4f}, max "
              f"{np.max(tv):.4f}; same chosen option {same}/{len(asked)}")
        print(f"  the base alone, llama.cpp vs torch (the floor): TV mean {np.mean(floor):.4f},"
              f" max {np.max(floor):.4f}")
        ok = np.mean(excess) <= 0.02 and np.max(excess) <= 0.05
        print(f"  round trip adds TV {np.mean(excess):+.4f} on average, {np.max(excess):+.4f} "
              f"at worst: {'within' if ok else 'OUTSIDE'} the tolerance (0.02, 0.05)")
        base.close()
        if not ok:
            sys.exit(1)


if __name__ == "__main__":
    main()
