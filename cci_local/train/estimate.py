"""What a training run will do and how much memory it needs, before any work
(``cci-local train --dry-run``), and the settings that fit a memory budget.

The estimate is a sum of parts (docs/performance.md#training-memory): the base's
weights as the trainer holds them (fp32 on the CPU, bf16 on CUDA and MPS, nf4 with
``--4bit``, mlx's 4-bit groups), the LoRA weights with their gradients and AdamW
state, the activations kept for the backward pass (every layer's, or with
gradient checkpointing each layer's input plus one layer recomputed), the logits
(the whole micro-batch's, or one chunk of answer tokens with the chunked loss)
and the runtime.  Loading a GGUF into torch dequantizes it whole first, which is
its own peak.  The coefficients were calibrated against the peak RSS of real runs
of the embedded model on this CPU (``benchmarks/bench_train_memory.py``); figures
for a base that cannot run here (8B) come from the same formula.

``fit`` picks the fastest settings whose peak fits the budget: smaller
micro-batches (gradient accumulation keeps the batch), then gradient
checkpointing; settings the user gave are kept.  When nothing fits it says
what would: ``--4bit``, ``--trainer mlx``, LoRA on fewer blocks, a smaller base.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .peft_trainer import LOSS_CHUNK_BYTES, TrainConfig, pick_device

GIB = 2**30
SAFE_SHARE = 0.75  # of the machine's RAM (or the GPU's memory) a run may plan to use
PLANNED_MEMORY_GIB = 16.0  # a device this machine does not have: a 16 GB laptop
DEVICES = ("cpu", "cuda", "mps")

# Calibrated on SmolLM2-135M (benchmarks/bench_train_memory.py, docs/performance.md).
# Autograd keeps about twice the tensors counted by block_tensors() (views saved for
# backward, masks, the SDPA's own buffers); with gradient checkpointing the peak kept
# 26% of the full activations, not the layer inputs alone: the recomputed layers'
# freed blocks stay with the process (glibc's heap).  GPU allocators reuse them, so on
# CUDA and MPS the figure is an upper bound.
# mlx's lazy graph keeps little more than the counted tensors and frees what
# checkpointing recomputes (its peak is the layer inputs and one layer); it computes
# a quantized model in float32 on the CPU (its quantized CPU kernels have no fast
# float16 path) and in float16 on Apple silicon.
ACT_FACTOR = {"peft": 2.05, "mlx": 1.17}  # x the tensors a LLaMA block with LoRA keeps
CHECKPOINT_KEEPS = {"peft": 0.26, "mlx": 0.0}  # of the full activations, checkpointing
LOGIT_COPIES = {"peft": 4.0, "mlx": 1.65}  # fp32 logit-sized tensors per token in the loss
RUNTIME_GIB = {"peft": 0.55, "mlx": 0.61}  # interpreter, torch/mlx, tokenizer, allocator
CUDA_CONTEXT_GIB = 0.6  # the CUDA context and cuBLAS workspaces, on the GPU


@dataclass
class Shape:
    params: int
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False
    context: int = 4096

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def linear_params(self) -> int:
        return max(0, self.params - self.embedding_params)


@dataclass
class Plan:
    examples: int
    answer_tokens: int
    longest: int  # tokens, after max_len
    steps: int
    accumulation: int
    device: str
    trainer: str
    dtype: str
    shape: Shape
    lora_params: int
    micro_batch: int
    checkpointing: bool
    chunked_loss: bool
    lora_layers: int  # blocks with LoRA
    max_len: int
    budget_gib: float
    budget_from: str  # where the budget came from
    tokens_counted: str  # how the token counts were had
    memory: dict[str, float] = field(default_factory=dict)  # part -> GiB, while training
    loading_gib: float = 0.0  # the peak while the base is read, if above the training peak
    changed: list[str] = field(default_factory=list)  # what fit() changed to fit
    alternatives: list[str] = field(default_factory=list)  # what would fit, when this does not

    @property
    def total_gib(self) -> float:
        return sum(self.memory.values())

    @property
    def peak_gib(self) -> float:
        return max(self.total_gib, self.loading_gib)

    @property
    def fits(self) -> bool:
        return self.peak_gib <= self.budget_gib

    def as_dict(self) -> dict:
        s = self.shape
        return {
            "peak_gib": round(self.peak_gib, 3), "budget_gib": round(self.budget_gib, 3),
            "fits": self.fits, "budget_from": self.budget_from, "device": self.device,
            "trainer": self.trainer, "dtype": self.dtype, "micro_batch": self.micro_batch,
            "accumulation": self.accumulation, "gradient_checkpointing": self.checkpointing,
            "chunked_loss": self.chunked_loss, "lora_layers": self.lora_layers,
            "max_len": self.max_len, "examples": self.examples, "steps": self.steps,
            "answer_tokens": self.answer_tokens, "longest": self.longest,
            "tokens_counted": self.tokens_counted, "lora_params": self.lora_params,
            "memory_gib": {k: round(v, 3) for k, v in self.memory.items()},
            "training_gib": round(self.total_gib, 3), "loading_gib": round(self.loading_gib, 3),
            "changed": self.changed, "alternatives": self.alternatives,
            "base": {"params": s.params, "layers": s.layers, "hidden": s.hidden, "ffn": s.ffn,
                     "heads": s.heads, "kv_heads": s.kv_heads, "vocab": s.vocab,
                     "tied": s.tied},
        }


# ------------------------------------------------------------------------ the base's shape


@functools.lru_cache(maxsize=4)
def _gguf_reader(gguf: Path):
    """One parse of a GGUF's header per base (memory-mapped; an 8B's takes seconds),
    shared by the shape and the mlx group size."""
    import gguf as gg

    return gg.GGUFReader(str(gguf))


def model_shape(gguf: Path | None, hf_dir: Path | None) -> Shape:
    """The base's shape from a GGUF's metadata or a Hugging Face ``config.json`` (no
    weights needed: a folder holding only ``config.json`` is enough for a dry run)."""
    if gguf is not None:
        from .gguf_lora import gguf_value

        reader = _gguf_reader(Path(gguf))

        def value(key, default=None):
            return gguf_value(reader, key, default)

        arch = value("general.architecture")
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        heads = value(f"{arch}.attention.head_count")
        names = {t.name for t in reader.tensors}
        return Shape(sum(int(t.n_elements) for t in reader.tensors),
                     value(f"{arch}.block_count"), value(f"{arch}.embedding_length"),
                     value(f"{arch}.feed_forward_length"), heads,
                     value(f"{arch}.attention.head_count_kv", heads),
                     value(f"{arch}.vocab_size", len(tokens.data) if tokens else 32000),
                     tied="output.weight" not in names,
                     context=value(f"{arch}.context_length", 4096))
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    h, ffn, layers, vocab = (cfg["hidden_size"], cfg["intermediate_size"],
                             cfg["num_hidden_layers"], cfg["vocab_size"])
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or h // heads
    per_layer = h * heads * head_dim * 2 + 2 * h * kv * head_dim + 3 * h * ffn + 2 * h
    tied = bool(cfg.get("tie_word_embeddings", False))
    return Shape(layers * per_layer + vocab * h * (1 if tied else 2) + h, layers, h, ffn,
                 heads, kv, vocab, tied, cfg.get("max_position_embeddings", 4096))


def lora_params(shape: Shape, config: TrainConfig) -> int:
    h, kv_out = shape.hidden, shape.hidden * shape.kv_heads // shape.heads
    dims = {"q_proj": (h, h), "k_proj": (h, kv_out), "v_proj": (h, kv_out), "o_proj": (h, h),
            "gate_proj": (h, shape.ffn), "up_proj": (h, shape.ffn), "down_proj": (shape.ffn, h)}
    return _lora_layers(shape, config) * sum(config.rank * (i + o) for m, (i, o) in dims.items()
                                            if m in config.target_modules)


def _lora_layers(shape: Shape, config: TrainConfig) -> int:
    return min(shape.layers, config.lora_layers or shape.layers)


# ---------------------------------------------------------------------------- token counts


def token_counts(pairs: list[tuple[str, str]], gguf: Path | None = None,
                 hf_dir: Path | None = None) -> tuple[list[int], list[int], str]:
    """(tokens of each whole exchange in the chat template, tokens of each answer, how
    they were counted).  A GGUF's own tokenizer and template (llama.cpp, vocabulary
    only) or a Hugging Face folder's tokenizer count exactly; a folder with only
    ``config.json`` is estimated at 3.5 characters a token plus 16 for the template."""
    if not pairs:
        return [], [], "no pairs"
    if gguf is not None:
        try:
            return (*_gguf_counts(pairs, gguf), "the base's tokenizer and chat template")
        except Exception:  # noqa: BLE001 - an estimate must not fail on a tokenizer
            pass
    if hf_dir is not None and any((hf_dir / f).is_file() for f in
                                  ("tokenizer.json", "tokenizer.model")):
        try:
            from transformers import AutoTokenizer

            from .data import encode

            tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
            encoded = encode(tokenizer, pairs, None)
            return ([len(x) for x, _ in encoded], [sum(t >= 0 for t in y) for _, y in encoded],
                    "the base's tokenizer and chat template")
        except Exception:  # noqa: BLE001
            pass
    return ([int((len(q) + len(a)) / 3.5) + 16 for q, a in pairs],
            [int(len(a) / 3.5) + 2 for _, a in pairs], "estimated at 3.5 characters a token")


def _gguf_counts(pairs, gguf: Path) -> tuple[list[int], list[int]]:
    import llama_cpp
    from llama_cpp import llama_chat_format
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):  # llama.cpp logs a context warning for a vocabulary
        llm = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    eos, bos = llm.token_eos(), llm.token_bos()
    fmt = llama_chat_format.Jinja2ChatFormatter(
        template=template, eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llm._model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos])
    whole, answers = [], []
    for q, a in pairs:
        result = fmt(messages=[{"role": "user", "content": q},
                               {"role": "assistant", "content": a}])
        whole.append(len(llm.tokenize(result.prompt.encode(), add_bos=not result.added_special,
                                      special=True)))
        answers.append(len(llm.tokenize(a.encode(), add_bos=False)) + 1)
    llm.close()
    return whole, answers


# ------------------------------------------------------------------------------ budgets


def machine_memory_gib(device: str) -> float | None:
    """This machine's memory for ``device``: the GPU's on CUDA, RAM otherwise (MPS shares
    it); None for a device this machine does not have."""
    if device == "cuda":
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_properties(0).total_memory / GIB
        except ImportError:
            pass
        return None
    if device == "mps":
        try:
            import torch

            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                return None
        except ImportError:
            return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):
        return None


def default_budget(device: str) -> tuple[float, str]:
    """(GiB a run may plan to use, where that figure came from)."""
    total = machine_memory_gib(device)
    if total is None:
        return (PLANNED_MEMORY_GIB * SAFE_SHARE,
                f"{SAFE_SHARE:.0%} of a {PLANNED_MEMORY_GIB:g} GiB {device} machine (not this "
                "one; --memory to change)")
    what = "this GPU's memory" if device == "cuda" else "this machine's RAM"
    return total * SAFE_SHARE, f"{SAFE_SHARE:.0%} of {what} ({total:.1f} GiB)"


# ---------------------------------------------------------------------------- the estimate


@functools.lru_cache(maxsize=8)
def _mlx_group(gguf: Path | None) -> int:
    """The group size mlx_convert gives this base: 32 for a GGUF of Q4_0/Q4_1/Q8_0
    blocks (copied exactly), else 64.  Cached: fit() plans many settings for one base,
    and parsing an 8B GGUF's metadata costs seconds."""
    if gguf is None:
        return 64
    from .mlx_convert import _default_group

    return _default_group(_gguf_reader(Path(gguf)))


def _dtype(config: TrainConfig, trainer: str, device: str,
           gguf: Path | None = None) -> tuple[str, float]:
    """(the base weights' type, bytes per weight of the quantized layers)."""
    if trainer == "mlx":
        if config.mlx_bits:
            group = _mlx_group(gguf)
            # Each group of weights has a float16 scale and bias.
            return f"{config.mlx_bits}-bit (mlx, groups of {group})", \
                (config.mlx_bits + 32 / group) / 8
        return "fp16 (mlx)", 2.0
    if config.load_in_4bit:
        return "nf4", 0.5 + 1 / 64 + 4 / 64 / 256  # 4 bits, 8-bit absmax/64, fp32 per 256
    if device in ("cuda", "mps") and config.dtype != "fp32":
        return ("fp16" if config.dtype == "fp16" else "bf16"), 2.0
    return "fp32", 4.0


def _checkpointing(config: TrainConfig, device: str, trainer: str) -> bool:
    if config.gradient_checkpointing is not None:
        return config.gradient_checkpointing
    return device in ("cuda", "mps") or trainer == "mlx"


def block_tensors(shape: Shape, config: TrainConfig) -> float:
    """Elements a LLaMA block keeps per token for its backward pass, LoRA on every
    target module: the norms' inputs and outputs, q/k/v (and q/k after RoPE), the
    attention's output, each LoRA module's dropped-out input, the MLP's gate, up,
    activation and product; attention itself is fused (SDPA) and keeps no
    tokens x tokens matrix."""
    h, f = shape.hidden, shape.ffn
    kv = h * shape.kv_heads // shape.heads
    n = 6 * h + 3 * kv + 2 * h + 4 * f  # norms, residuals, q/k/v/rope, attn out, MLP
    lora_inputs = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": h, "gate_proj": h,
                   "up_proj": h, "down_proj": f}
    if config.dropout > 0:
        n += sum(v for k, v in lora_inputs.items() if k in config.target_modules)
    return n


def make_plan(pairs: list[tuple[str, str]], shape: Shape, config: TrainConfig, *,
              trainer: str = "peft", gguf: Path | None = None, hf_dir: Path | None = None,
              budget_gib: float | None = None, counts=None) -> Plan:
    """The plan for ``config`` as it is (``fit`` changes settings to meet a budget).
    ``counts``: token counts from ``token_counts`` (computed here when None)."""
    device = pick_device(config.device)
    if trainer == "mlx" and config.device == "auto" and device == "cuda":
        device = "cpu"  # mlx has no CUDA backend here
    whole, answers, how = counts or token_counts(pairs, gguf, hf_dir)
    max_len = config.max_len or shape.context
    whole = [min(max_len, n) for n in whole]
    answers = [min(a, w) for a, w in zip(answers, whole, strict=True)]
    longest = max(whole, default=0)
    dtype, weight_bytes = _dtype(config, trainer, device, gguf)
    act_bytes = 4 if dtype == "fp32" or (trainer == "mlx" and device == "cpu"
                                         and config.mlx_bits) else 2
    checkpointing = _checkpointing(config, device, trainer)
    micro = max(1, min(config.micro_batch, len(pairs) or 1))
    # The micro-batch of the longest examples, padded to the longest.
    tokens = micro * longest
    answer_tokens = sum(sorted(answers, reverse=True)[:micro])
    lora = lora_params(shape, config)
    per_token = block_tensors(shape, config) * act_bytes * ACT_FACTOR[trainer]
    activations = tokens * shape.layers * per_token
    if checkpointing:
        activations = max(activations * CHECKPOINT_KEEPS[trainer],
                          tokens * (shape.layers * shape.hidden * act_bytes + per_token))
    chunked = config.chunked_loss and trainer == "peft"
    if chunked:
        chunk = max(1, LOSS_CHUNK_BYTES // (4 * shape.vocab))
        logit_tokens = min(answer_tokens, chunk)
    else:
        logit_tokens = tokens
    embed_bytes = weight_bytes if trainer == "mlx" else \
        (2.0 if config.load_in_4bit else weight_bytes)
    weights = shape.linear_params * weight_bytes + shape.embedding_params * embed_bytes
    memory = {
        "base weights": weights / GIB,
        "LoRA weights, gradients, AdamW state": lora * 16 / GIB,
        "activations": activations / GIB,
        "logits, log-softmax and their gradients":
            logit_tokens * shape.vocab * 4 * LOGIT_COPIES[trainer] / GIB,
        "runtime": RUNTIME_GIB[trainer] + (CUDA_CONTEXT_GIB if device == "cuda" else 0.0),
    }
    loading = 0.0
    if trainer == "peft" and gguf is not None and device != "cuda":
        # transformers dequantizes every GGUF tensor to float32 before building the model
        # (in RAM, which MPS shares; on CUDA the budget is the GPU's).
        loading = (shape.params * 4 + weights) / GIB + RUNTIME_GIB["peft"]
    if budget_gib is None:
        budget_gib, source = default_budget(device)
    else:
        source = "--memory"
    return Plan(len(pairs), sum(answers), longest, config.total_steps(len(pairs)),
                max(1, config.batch_size // micro), device, trainer, dtype, shape, lora, micro,
                checkpointing, chunked, _lora_layers(shape, config), max_len, budget_gib,
                source, how, memory, loading)


def fit(pairs: list[tuple[str, str]], shape: Shape, config: TrainConfig, *,
        trainer: str = "peft", gguf: Path | None = None, hf_dir: Path | None = None,
        budget_gib: float | None = None, pinned: frozenset[str] = frozenset(),
        counts=None) -> tuple[Plan, TrainConfig]:
    """The fastest settings that fit the budget: ``config`` as given, then smaller
    micro-batches, then gradient checkpointing (each only where the user did not set
    it: ``pinned`` names the TrainConfig fields they gave).  Returns the plan and the
    config to train with; a plan that does not fit carries ``alternatives``."""
    counts = counts or token_counts(pairs, gguf, hf_dir)
    kw = dict(trainer=trainer, gguf=gguf, hf_dir=hf_dir, budget_gib=budget_gib, counts=counts)
    first = make_plan(pairs, shape, config, **kw)
    micros = [config.micro_batch]
    if "micro_batch" not in pinned:
        m = config.micro_batch
        while m > 1:
            m //= 2
            micros.append(max(1, m))
    checks = [first.checkpointing]
    if "gradient_checkpointing" not in pinned and not first.checkpointing:
        checks.append(True)
    for ckpt in checks:
        for micro in micros:
            tried = replace(config, micro_batch=micro, gradient_checkpointing=ckpt)
            plan = make_plan(pairs, shape, tried, **kw)
            if plan.fits:
                plan.changed = _changes(first, plan)
                return plan, tried
    smallest = replace(config, micro_batch=micros[-1], gradient_checkpointing=checks[-1])
    plan = make_plan(pairs, shape, smallest, **kw)
    plan.changed = _changes(first, plan)
    plan.alternatives = alternatives(pairs, shape, smallest, plan, **kw)
    return plan, smallest


def _changes(first: Plan, plan: Plan) -> list[str]:
    out = []
    if plan.micro_batch != first.micro_batch:
        out.append(f"micro-batch {first.micro_batch} -> {plan.micro_batch} (gradient "
                   f"accumulation {plan.accumulation}: the same batch)")
    if plan.checkpointing and not first.checkpointing:
        out.append("gradient checkpointing on (about 30% slower)")
    return out


def alternatives(pairs, shape: Shape, config: TrainConfig, plan: Plan, **kw) -> list[str]:
    """What would fit the same budget: --4bit on CUDA, mlx on Apple silicon, LoRA on
    fewer blocks, a smaller base (the largest that fits, in parameters)."""
    out = []
    frugal = replace(config, micro_batch=1, gradient_checkpointing=True)
    if plan.trainer == "peft" and plan.device == "cuda" and not config.load_in_4bit:
        p = make_plan(pairs, shape, replace(frugal, load_in_4bit=True), **kw)
        if p.fits:
            out.append(f"--4bit (about {p.peak_gib:.1f} GiB)")
    if plan.trainer == "peft" and plan.device in ("mps", "cpu"):
        p = make_plan(pairs, shape, replace(frugal, device="mps"),
                      **(kw | {"trainer": "mlx"}))
        if p.fits:
            out.append(f"--trainer mlx, 4-bit base (about {p.peak_gib:.1f} GiB"
                       + (", on Apple silicon" if plan.device != "mps" else "") + ")")
    for n in (shape.layers // 2, shape.layers // 4):
        if n >= 1 and (config.lora_layers or shape.layers) > n:
            p = make_plan(pairs, shape, replace(frugal, lora_layers=n), **kw)
            if p.fits:
                out.append(f"--lora-layers {n} (LoRA on the last {n} blocks; about "
                           f"{p.peak_gib:.1f} GiB)")
                break
    small = make_plan(pairs, shape, frugal, **kw)
    fixed = small.peak_gib - small.memory["base weights"] - \
        small.memory["LoRA weights, gradients, AdamW state"] - small.memory["activations"]
    per_param = (small.peak_gib - fixed) / shape.params
    room = plan.budget_gib - fixed
    if room > 0 and per_param > 0:
        out.append(f"a base of at most ~{room / per_param / 1e9:.1f}B parameters with these "
                   "settings")
    return out


def refusal(plan: Plan) -> str:
    """One message: the plan's peak, the budget, and what would fit."""
    what = "; ".join(plan.alternatives) or "nothing at this budget"
    return (f"training would need about {plan.peak_gib:.1f} GiB on {plan.device} "
            f"({plan.trainer}, weights {plan.dtype}, micro-batch {plan.micro_batch}, gradient "
            f"checkpointing {'on' if plan.checkpointing else 'off'}), over the "
            f"{plan.budget_gib:.1f} GiB budget ({plan.budget_from}); nothing was started. "
            f"What would fit: {what}")
