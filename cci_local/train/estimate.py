"""What a training run will do and roughly how much memory it needs, before any work
(``cci-local train --dry-run``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .peft_trainer import TrainConfig, pick_device

GIB = 2**30


@dataclass
class Shape:
    params: int
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int


@dataclass
class Plan:
    examples: int
    answer_tokens: int  # estimated
    longest: int  # tokens, estimated, after max_len
    steps: int
    accumulation: int
    device: str
    dtype: str
    shape: Shape
    lora_params: int
    memory: dict[str, float] = field(default_factory=dict)  # part -> GiB

    @property
    def total_gib(self) -> float:
        return sum(self.memory.values())


def model_shape(gguf: Path | None, hf_dir: Path | None) -> Shape:
    if gguf is not None:
        import gguf as gg

        from .gguf_lora import gguf_value

        reader = gg.GGUFReader(str(gguf))

        def value(key, default=None):
            return gguf_value(reader, key, default)

        arch = value("general.architecture")
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        heads = value(f"{arch}.attention.head_count")
        return Shape(sum(int(t.n_elements) for t in reader.tensors),
                     value(f"{arch}.block_count"), value(f"{arch}.embedding_length"),
                     value(f"{arch}.feed_forward_length"), heads,
                     value(f"{arch}.attention.head_count_kv", heads),
                     value(f"{arch}.vocab_size", len(tokens.data) if tokens else 32000))
    cfg = json.loads((hf_dir / "config.json").read_text())
    h, ffn, layers, vocab = (cfg["hidden_size"], cfg["intermediate_size"],
                             cfg["num_hidden_layers"], cfg["vocab_size"])
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    per_layer = 2 * h * h + 2 * h * (h * kv // heads) + 3 * h * ffn
    tied = cfg.get("tie_word_embeddings", False)
    return Shape(layers * per_layer + vocab * h * (1 if tied else 2), layers, h, ffn, heads, kv,
                 vocab)


def lora_params(shape: Shape, config: TrainConfig) -> int:
    h, kv_out = shape.hidden, shape.hidden * shape.kv_heads // shape.heads
    dims = {"q_proj": (h, h), "k_proj": (h, kv_out), "v_proj": (h, kv_out), "o_proj": (h, h),
            "gate_proj": (h, shape.ffn), "up_proj": (h, shape.ffn), "down_proj": (shape.ffn, h)}
    return shape.layers * sum(config.rank * (i + o) for m, (i, o) in dims.items()
                              if m in config.target_modules)


def make_plan(pairs: list[tuple[str, str]], shape: Shape, config: TrainConfig) -> Plan:
    """Tokens are estimated at 3.5 characters each (no tokenizer is loaded)."""
    device = pick_device(config.device)
    lengths = [min(config.max_len, int((len(q) + len(a)) / 3.5) + 16) for q, a in pairs]
    longest = max(lengths, default=0)
    answer = sum(int(len(a) / 3.5) + 2 for _, a in pairs)
    if config.load_in_4bit:
        dtype, weight_bytes = "nf4", 0.55
    elif device == "cuda" and config.dtype != "fp32":
        dtype, weight_bytes = ("fp16" if config.dtype == "fp16" else "bf16"), 2
    else:
        dtype, weight_bytes = "fp32", 4
    act_bytes = 4 if dtype == "fp32" else 2
    checkpointing = config.gradient_checkpointing
    if checkpointing is None:
        checkpointing = device == "cuda"
    lora = lora_params(shape, config)
    tokens = min(config.micro_batch, max(1, len(pairs))) * longest
    # Activations kept for the backward pass, per token and layer: projections, norms
    # and LoRA inputs, the MLP's intermediates, the attention weights; with
    # checkpointing, in theory, only each layer's input; measured on the CPU it keeps
    # about half (the allocator holds on to freed blocks).  Calibrated on
    # SmolLM2-135M, CPU, fp32, against the peak RSS: 6.0 GiB measured vs 6.35
    # estimated without checkpointing, 3.8 vs 4.2 with it (micro-batch 4 x 256).
    per_layer = (shape.hidden * 34 + shape.ffn * 8 + shape.heads * longest * 3) * act_bytes
    activations = tokens * per_layer * shape.layers * (0.5 if checkpointing else 1.0)
    memory = {
        "base weights": shape.params * weight_bytes / GIB,
        "LoRA weights, gradients, AdamW state": lora * 16 / GIB,
        "activations": activations / GIB,
        "logits, log-softmax and their gradients": tokens * shape.vocab * 4 * 5 / GIB,
        "runtime (torch, tokenizer, allocator)": 0.4,
    }
    return Plan(len(pairs), answer, longest, config.total_steps(len(pairs)),
                max(1, config.batch_size // config.micro_batch), device, dtype, shape, lora,
                memory)
