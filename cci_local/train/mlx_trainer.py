"""LoRA training with mlx-lm's tuner, for Apple silicon (it runs, slowly, on Linux CPUs too).

The base is trained *quantized* (QLoRA): ``mlx_convert.mlx_folder`` makes, once,
an mlx-lm folder whose linear and embedding weights are mlx 4-bit (``bits``)
packed arrays, and mlx-lm's ``LoRALinear`` wraps each frozen
``nn.QuantizedLinear`` (its ``lora_a`` is input x rank with the real, unpacked
input size; ``lora_b`` rank x output), so no float copy of the base is ever
made: an 8B Llama-3.1 takes ~4.5 GB instead of the ~30 GB float32 Hugging Face
copy the first version of this trainer dequantized through transformers.

Why this way: mlx-lm already does QLoRA natively (``load`` of a folder whose
config has ``"quantization"``, then ``linear_to_lora_layers``), so the only new
piece is the folder.  From a GGUF file it is built tensor by tensor from the
memory-mapped file; Q4_0/Q4_1/Q8_0 blocks are transcoded bit-exactly into
mlx's affine format (group 32) rather than requantized, because
``mx.quantize`` of a dequantized Q4_1 tensor does not reproduce it (its grid is
anchored differently: errors up to ~5 % of the largest weight), and the exact
copy keeps the trained adapter matched to the base llama.cpp will run it on.
From a Hugging Face folder mlx-lm's own ``convert`` quantizes it lazily.
``config.mlx_bits = None`` trains on a float16 folder instead.  On mlx's CPU
backend (Linux) a quantized model computes in float32 (scales, biases and norms
upcast; the packed weights stay packed): its CPU quantized matmul has no fast
float16 path and runs ~45x slower in float16.

The LoRA layers use mlx-lm's ``scale``, which is PEFT's and llama.cpp's alpha /
rank.  The adapter mlx-lm writes is turned into PEFT layout
(``gguf_lora.from_mlx``) and exported like the PEFT trainer's.  mlx-lm restores
adapter weights but not optimizer state, so a killed mlx run starts again from
the beginning.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .mlx_convert import mlx_folder
from .peft_trainer import TrainConfig

__all__ = ["load_lora_model", "mlx_folder", "train_mlx"]


def load_lora_model(folder: Path, config: TrainConfig):
    """The model in ``folder`` (quantized or not) with frozen weights and fresh LoRA
    layers on ``config.lora_layers`` blocks (all by default); and its tokenizer."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from .gguf_lora import MODULES

    mx.random.seed(config.seed)
    model, tokenizer = load(str(folder))
    if mx.default_device() == mx.cpu and any(
            isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for m in model.modules()):
        # mlx's CPU kernels have no fast float16 path for quantized matmuls (~45x slower
        # than float32 here): compute in float32 there; the packed weights stay 4-bit.
        model.set_dtype(mx.float32)
    model.freeze()
    keys = [m for m in MODULES if m.split(".")[-1] in config.target_modules]
    n_layers = len(model.layers)
    linear_to_lora_layers(model, min(config.lora_layers or n_layers, n_layers), {
        "rank": config.rank, "scale": config.alpha / config.rank, "dropout": config.dropout,
        "keys": keys})
    return model, tokenizer


def train_mlx(folder: Path, pairs: list[tuple[str, str]], config: TrainConfig, out: Path, *,
              on_step: Callable[[dict], None] | None = None) -> dict:
    """Train LoRA with mlx-lm on the model in ``folder`` (an mlx-lm or Hugging Face folder:
    ``mlx_folder`` makes one from a GGUF file); the adapter in PEFT layout."""
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import build_schedule

    from .gguf_lora import MODULES, from_mlx

    model, tokenizer = load_lora_model(folder, config)
    data = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in pairs]
    dataset = CacheDataset(ChatDataset(data, tokenizer, mask_prompt=True))
    max_len = config.max_len or max(len(dataset[i][0]) for i in range(len(dataset)))
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
                        max_seq_length=max_len, adapter_file=str(adapter_file),
                        grad_accumulation_steps=accumulation,
                        grad_checkpoint=bool(config.gradient_checkpointing))
    # mlx-lm checkpoints by patching the block *class*; undo it so a later run in this
    # process is not checkpointed unasked.
    block = type(model.layers[0])
    call = block.__call__
    np.random.seed(config.seed)  # mlx-lm's batch order
    try:
        train(model, optimizer, dataset, None, args=args, training_callback=Report())
    finally:
        block.__call__ = call
    # mlx-lm's own adapter_config.json beside the weights, so the folder loads in
    # mlx_lm.generate --adapter-path and `cci-local adapters add` reads its scale
    (adapter_file.parent / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": "lora", "model": str(folder), "num_layers": len(model.layers)
        if config.lora_layers is None else config.lora_layers,
        "lora_parameters": {"rank": config.rank, "scale": config.alpha / config.rank,
                            "dropout": config.dropout,
                            "keys": [m for m in MODULES
                                     if m.split(".")[-1] in config.target_modules]}},
        indent=2) + "\n", encoding="utf-8")
    state = {k: np.array(v) for k, v in mx.load(str(adapter_file)).items()}
    return {"state": from_mlx(state), "steps": total,
            "final_loss": losses[-1][1] if losses else None, "losses": losses}
