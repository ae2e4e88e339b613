"""Training memory: the estimator against the measured peak RSS, and each memory lever as a
ratio against today's fp32 path (full logits, no gradient checkpointing).

Each configuration trains the embedded SmolLM2-135M (GGUF) on the same keto template
pairs through ``cci_local.train.train`` (load, train, export: all of it) in a fresh
process; its peak RSS (VmHWM) is set beside the estimate ``train`` printed for it
before loading anything.  Target (issue 26): every estimate within +-15% of the
measurement.  This is the calibration of ``cci_local/train/estimate.py``; the 8B
figures in docs/performance.md come from the same formula.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import store  # noqa: E402
from common import peak_rss_mb  # noqa: E402

MB = 2**20
# name: (trainer, micro-batch, gradient checkpointing, chunked loss, max_len, mlx bits)
CONFIGS = {
    "fp32, full logits (before)": ("peft", 4, False, False, 256, None),
    "fp32 + checkpointing": ("peft", 4, True, False, 256, None),
    "fp32 + chunked loss": ("peft", 4, False, True, 256, None),
    "fp32 + both": ("peft", 4, True, True, 256, None),
    "fp32 + both, micro-batch 1": ("peft", 1, True, True, 256, None),
    "fp32 + chunked, max_len 128": ("peft", 2, False, True, 128, None),
    "mlx fp16": ("mlx", 1, False, False, 128, "none"),
    "mlx 4-bit": ("mlx", 1, False, False, 128, 4),
    "mlx 4-bit, micro-batch 4": ("mlx", 4, False, False, 128, 4),
    "mlx 4-bit + checkpointing, mb 4": ("mlx", 4, True, False, 128, 4),
}


def side(args) -> dict:
    import warnings

    from cci_local.train import TrainConfig, train

    warnings.filterwarnings("ignore")
    trainer, micro, ckpt, chunked, max_len, bits = CONFIGS[args.config]
    db = store(Path(args.folder))
    config = TrainConfig(steps=args.steps, batch_size=4, micro_batch=micro, max_len=max_len,
                         rank=16, alpha=32, lr=2e-4, checkpoint_every=1000, device="cpu",
                         gradient_checkpointing=ckpt, chunked_loss=chunked,
                         mlx_bits=None if bits == "none" else bits)
    plans, points = [], []
    start = time.perf_counter()
    train(db, "keto", config=config, trainer=trainer, kinds=("template",),
          max_examples=args.examples, out_dir=Path(args.folder) / args.config.replace(" ", "_"),
          memory=1000.0, pinned=frozenset({"micro_batch", "gradient_checkpointing"}),
          on_plan=plans.append, on_step=lambda p: points.append((time.perf_counter(), p)),
          force=True)
    plan = plans[0]
    tokens = sum(p.get("tokens", 0) for _, p in points)
    return {"measured_mb": peak_rss_mb(), "estimate_mb": plan.peak_gib * 1024,
            "parts": plan.memory, "loading_gib": plan.loading_gib,
            "seconds": time.perf_counter() - start, "tokens": tokens,
            "train_seconds": (points[-1][0] - points[0][0]) if len(points) > 1 else None,
            "longest": plan.longest}


LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
    "tie_word_embeddings": False}
PLANS_8B = [("cpu", "peft", False), ("mps", "peft", False), ("mps", "mlx", False),
            ("cuda", "peft", False), ("cuda", "peft", True)]


def table_8b(pairs: int = 198, tokens: int = 600, laptop_gib: float = 16.0) -> list[dict]:
    """Llama-3.1-8B's plan per device and trainer, from the calibrated estimator: ``pairs``
    examples of ``tokens`` tokens (three quarters of them answer), each device's
    defaults fitted to 75% of a ``laptop_gib`` machine."""
    from cci_local.train.estimate import SAFE_SHARE, fit, make_plan, model_shape
    from cci_local.train.peft_trainer import TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(LLAMA_31_8B))
        shape = model_shape(None, Path(tmp))
    counts = ([tokens] * pairs, [tokens * 3 // 4] * pairs, "assumed")
    rows = []
    for device, trainer, four in PLANS_8B:
        config = TrainConfig(device=device, load_in_4bit=four)
        before = make_plan([("", "")] * pairs, shape, replace(
            config, gradient_checkpointing=False, chunked_loss=False), trainer=trainer,
            budget_gib=laptop_gib * SAFE_SHARE, counts=counts)
        plan, _ = fit([("", "")] * pairs, shape, config, trainer=trainer,
                      budget_gib=laptop_gib * SAFE_SHARE, counts=counts)
        rows.append({"device": device, "trainer": trainer + (" --4bit" if four else ""),
                     "dtype": plan.dtype, "before_gib": before.peak_gib,
                     "peak_gib": plan.peak_gib, "fits": plan.fits,
                     "micro_batch": plan.micro_batch, "checkpointing": plan.checkpointing,
                     "parts": plan.memory, "alternatives": plan.alternatives})
    return rows


def print_8b(rows) -> None:
    print("\nLlama-3.1-8B, 198 pairs of ~600 tokens, LoRA r16 on every block linear (estimated "
          "by the calibrated formula; no 8B run here)")
    print(f"  {'device / trainer':20} {'weights':26} {'no levers':>9} {'fitted':>8} "
          f"{'micro':>5} {'ckpt':>4}  weights/LoRA/activations/logits/runtime GiB")
    for r in rows:
        parts = "/".join(f"{v:.1f}" for v in r["parts"].values())
        verdict = "" if r["fits"] else "  over 12 GiB: " + "; ".join(r["alternatives"][:1])
        ckpt = "on" if r["checkpointing"] else "off"
        print(f"  {r['device'] + ' ' + r['trainer']:20} {r['dtype']:26} {r['before_gib']:7.1f}G "
              f"{r['peak_gib']:6.1f}G {r['micro_batch']:5} {ckpt:>4}  {parts}{verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--only", action="append", help="run only configurations with this text")
    ap.add_argument("--json", action="store_true", help="also print every figure as JSON")
    ap.add_argument("--save", help="write every figure as JSON to this file")
    ap.add_argument("--plan-8b", action="store_true", help="only the 8B table (no runs)")
    ap.add_argument("--config")
    ap.add_argument("--folder")
    args = ap.parse_args()
    if args.config:
        print("RESULT " + json.dumps(side(args)))
        return
    if args.plan_8b:
        print_8b(table_8b())
        return
    names = [n for n in CONFIGS if not args.only or any(o in n for o in args.only)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        store(Path(tmp)).conn.close()
        for name in names:
            proc = subprocess.run(
                [sys.executable, __file__, "--config", name, "--folder", tmp, "--steps",
                 str(args.steps), "--examples", str(args.examples)],
                capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{name}: failed\n{proc.stderr[-3000:]}")
                continue
            results[name] = json.loads(line[len("RESULT "):])
    print(f"training memory: SmolLM2-135M-Instruct (GGUF), CPU, LoRA r16 on every block linear, "
          f"{args.examples} keto template pairs, {args.steps} steps of 4 examples; peak RSS "
          "of the whole train() call in its own process")
    print(f"  {'configuration':30} {'estimate':>9} {'measured':>9} {'est/meas':>8} "
          f"{'vs before':>9}")
    worst = 0.0
    for name, r in results.items():
        # "before": the first configuration of the same trainer (fp32 full logits; mlx fp16)
        first = next(n for n in results if CONFIGS[n][0] == CONFIGS[name][0])
        before = results[first]["measured_mb"]
        ratio = r["estimate_mb"] / r["measured_mb"]
        worst = max(worst, abs(ratio - 1))
        rel = f"{r['measured_mb'] / before:.2f}"
        print(f"  {name:30} {r['estimate_mb']:7.0f}MB {r['measured_mb']:7.0f}MB {ratio:8.2f} "
              f"{rel:>9}")
    print(f"  largest estimate error: {worst:.0%} (target <= 15%): "
          f"{'ok' if worst <= 0.15 else 'MISSED'}")
    print_8b(table_8b())
    if args.json:
        print(json.dumps(results, indent=1))
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
