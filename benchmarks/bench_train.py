"""Training throughput: cci-local's PEFT trainer vs a bare PEFT loop, and peak memory.

Same base (the embedded SmolLM2-135M GGUF, dequantized by transformers), same
LoRA settings, same examples in the same batches, each side in a fresh process
on the CPU.  The trainer's time includes everything it does per step: the store
writes of the training curve, checkpoints (adapter, optimizer, scheduler) every
``--checkpoint-every`` steps, progress.  The bare loop is the minimum: forward,
loss on the answer tokens, backward, AdamW and cosine schedule steps.

Target (issue 6): trainer / bare >= 0.90 tokens/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "data" / "reddit" / "keto_nutrition_2022"


def settings(args):
    from cci_local.train import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=8, micro_batch=4, max_len=args.max_len,
                       rank=16, alpha=32, lr=2e-4, checkpoint_every=args.checkpoint_every)


def store(folder: Path):
    from cci_local.generate import template_pairs
    from cci_local.ingest import ingest
    from cci_local.store import open_store

    db = open_store(folder / "bench.db")
    if not db.execute("SELECT count(*) FROM documents").fetchone()[0]:
        ingest(db, [str(CORPUS)])
        template_pairs(db)
    return db


def side_trainer(args) -> dict:
    from cci_local.train import train

    db = store(Path(args.folder))
    points = []
    train(db, "keto", config=settings(args), kinds=("template",), max_examples=args.examples,
          on_step=lambda p: points.append((time.perf_counter(), p)))
    first_seconds = points[0][1]["tokens"] / points[0][1]["tokens_per_s"]
    seconds = points[-1][0] - points[0][0] + first_seconds
    return {"tokens": sum(p["tokens"] for _, p in points), "seconds": seconds,
            "rss": peak_rss_mb()}


def side_bare(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    from cci_local.llm.llama_cpp import embedded_model_path
    from cci_local.train.data import IGNORE, encode, training_pairs
    from cci_local.train.peft_trainer import example_order

    db = store(Path(args.folder))
    config = settings(args)
    path = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    examples = encode(tokenizer, training_pairs(db, "keto", ("template",),
                                                max_examples=args.examples), config.max_len)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules=list(config.target_modules),
                                             task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(0.1 * args.steps), args.steps)
    pad = tokenizer.eos_token_id
    tokens = 0
    start = time.perf_counter()
    for step in range(args.steps):
        batch = [examples[i] for i in example_order(len(examples), 0, step * 8, 8)]
        n_answer = sum(sum(t != IGNORE for t in y[1:]) for _, y in batch)
        optimizer.zero_grad()
        for m in range(0, 8, 4):
            micro = batch[m:m + 4]
            width = max(len(x) for x, _ in micro)
            ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in micro])
            labels = torch.tensor([y + [IGNORE] * (width - len(y)) for _, y in micro])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in micro])
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                ignore_index=IGNORE, reduction="sum") / n_answer
            loss.backward()
            tokens += int(mask.sum())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
    return {"tokens": tokens, "seconds": time.perf_counter() - start, "rss": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--checkpoint-every", type=int, default=8)
    ap.add_argument("--side", choices=["trainer", "bare"])
    ap.add_argument("--folder")
    args = ap.parse_args()
    if args.side:
        import warnings

        warnings.filterwarnings("ignore")
        result = side_trainer(args) if args.side == "trainer" else side_bare(args)
        print("RESULT " + json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        store(Path(tmp)).conn.close()
        results = {}
        for side in ("bare", "trainer"):
            proc = subprocess.run(
                [sys.executable, __file__, "--side", side, "--folder", tmp, "--steps",
                 str(args.steps), "--examples", str(args.examples), "--max-len",
                 str(args.max_len), "--checkpoint-every", str(args.checkpoint_every)],
                capture_output=True, text=True, check=True)
            line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
            results[side] = json.loads(line[len("RESULT "):])
    print(f"training benchmark: SmolLM2-135M-Instruct (GGUF, dequantized), CPU, LoRA r16 on all "
          f"block linears, {args.steps} steps x 8 examples (micro-batches of 4), "
          f"{args.examples} keto posts, max {args.max_len} tokens")
    for side, label in (("bare", "bare PEFT loop"), ("trainer", "cci-local trainer")):
        r = results[side]
        print(f"  {label:18} {r['tokens']:7,} tokens in {r['seconds']:6.1f} s = "
              f"{r['tokens'] / r['seconds']:6.1f} tokens/s   peak RSS {r['rss']:6.0f} MB")
    ratio = (results["trainer"]["tokens"] / results["trainer"]["seconds"]) / \
        (results["bare"]["tokens"] / results["bare"]["seconds"])
    print(f"  trainer / bare: {ratio:.2f} (target >= 0.90): {'ok' if ratio >= 0.9 else 'MISSED'}"
          f"; checkpoints every {args.checkpoint_every} steps included")


if __name__ == "__main__":
    main()
