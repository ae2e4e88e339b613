"""LoRA training with mlx-lm's tuner, for Apple silicon (it runs, slowly, on Linux CPUs too).

mlx-lm loads Hugging Face folders; a GGUF base is converted once (transformers
dequantizes it) into a cached folder beside the adapters.  The LoRA layers use
mlx-lm's ``scale``, which is PEFT's and llama.cpp's alpha / rank.  The adapter
mlx-lm writes is turned into PEFT layout (``gguf_lora.from_mlx``) and exported
like the PEFT trainer's.  mlx-lm restores adapter weights but not optimizer
state, so a killed mlx run starts again from the beginning.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .peft_trainer import TrainConfig


def hf_folder(gguf: Path, cache: Path) -> Path:
    """A Hugging Face folder (safetensors, tokenizer) made once from a GGUF file."""
    key = hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}:{gguf.stat().st_mtime_ns}"
                         .encode()).hexdigest()[:12]
    folder = cache / f"{gguf.stem}-{key}"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # The weights are dequantized to float32 on load; transformers still marks the
    # model as "gguf-quantized" and refuses to save it, so drop the mark.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "__dict__"):
        model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp))
    tmp.replace(folder)
    return folder


def train_mlx(folder: Path, pairs: list[tuple[str, str]], config: TrainConfig, out: Path, *,
              on_step: Callable[[dict], None] | None = None) -> dict:
    """Train LoRA with mlx-lm on the model in ``folder``; the adapter in PEFT layout."""
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import build_schedule, linear_to_lora_layers

    from .gguf_lora import MODULES, from_mlx

    mx.random.seed(config.seed)
    model, tokenizer = load(str(folder))
    model.freeze()
    keys = [m for m in MODULES if m.split(".")[-1] in config.target_modules]
    linear_to_lora_layers(model, len(model.layers), {
        "rank": config.rank, "scale": config.alpha / config.rank, "dropout": config.dropout,
        "keys": keys})
    data = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in pairs]
    dataset = CacheDataset(ChatDataset(data, tokenizer, mask_prompt=True))
    total = config.total_steps(len(pairs))
    micro = min(config.micro_batch, len(pairs))
    accumulation = max(1, config.batch_size // micro)
    warmup = int(config.warmup * total)
    schedule = build_schedule({"name": "cosine_decay", "warmup": warmup,
                               "arguments": [config.lr, max(1, total - warmup)]})
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    adapter_file = out / "mlx" / "adapters.safetensors"
    adapter_file.parent.mkdir(parents=True, exist_ok=True)
    losses: list[tuple[int, float]] = []

    class Report(TrainingCallback):
        def on_train_loss_report(self, info):
            step = info["iteration"] // accumulation
            losses.append((step, float(info["train_loss"])))
            if on_step:
                on_step({"step": step, "total": total, "loss": float(info["train_loss"]),
                         "lr": float(info["learning_rate"]),
                         "tokens_per_s": float(info["tokens_per_second"])})

    args = TrainingArgs(batch_size=micro, iters=total * accumulation,
                        steps_per_report=accumulation, steps_per_eval=10**9,
                        steps_per_save=config.checkpoint_every * accumulation,
                        max_seq_length=config.max_len, adapter_file=str(adapter_file),
                        grad_accumulation_steps=accumulation)
    train(model, optimizer, dataset, None, args=args, training_callback=Report())
    state = {k: np.array(v) for k, v in mx.load(str(adapter_file)).items()}
    return {"state": from_mlx(state), "steps": total,
            "final_loss": losses[-1][1] if losses else None, "losses": losses}
