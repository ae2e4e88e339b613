"""LoRA training with PEFT and torch (CPU, CUDA, MPS): a plain, readable loop.

Each optimizer step sees ``batch_size`` examples, in micro-batches of
``micro_batch`` (gradient accumulation); the loss is the mean over the answer
tokens of the whole step, so accumulation gives the gradient of one big batch.
AdamW, cosine schedule with linear warm-up, gradient clipping.  With
``chunked_loss`` (the default) the decoder's hidden states are kept for the
answer tokens only and sent through the output layer a chunk at a time, each
chunk recomputed in the backward pass: the tokens x vocabulary logits (0.5 MB a
token for a 128k vocabulary in fp32) are never held whole.  The loss and its
gradient are the same as the full computation's.  Every
``checkpoint_every`` steps the adapter, optimizer, scheduler, step and random
state are written (atomically) to ``checkpoint/``; a killed run started again
continues from there and ends where an uninterrupted run would.

Two privacy mitigations live in the loop (docs/method.md#mitigations):
``template_epochs`` keeps template pairs out of the epochs after the first N
(example_stream), and ``dp_epsilon`` trains with DP-SGD (train/dp.py: Poisson
batches, each example's gradient clipped, noise added; the loss reported is
then the mean of the examples' per-token losses).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .data import IGNORE


@dataclass
class TrainConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                       "up_proj", "down_proj")
    lr: float = 2e-4
    epochs: float = 3.0
    steps: int | None = None  # overrides epochs
    batch_size: int = 16  # examples per optimizer step (the paper's batch)
    micro_batch: int = 4  # examples per forward pass
    warmup: float = 0.1  # share of steps of linear warm-up
    max_len: int | None = None  # None: the longest pair (in the chat template)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    gradient_checkpointing: bool | None = None  # None: on for CUDA, off on CPU
    dtype: str = "auto"  # auto: bf16 (or fp16) on CUDA and MPS, fp32 on the CPU
    load_in_4bit: bool = False  # CUDA only (bitsandbytes)
    device: str = "auto"
    lora_layers: int | None = None  # LoRA on the last N blocks only; None: every block
    chunked_loss: bool = True  # the loss over answer tokens in chunks: no tokens x vocab logits
    mlx_bits: int | None = 4  # mlx: train on the base quantized to this many bits; None: float
    dedup: str = "near"  # none, exact, near: duplicate answers removed first (train/dedup.py)
    template_epochs: int | None = None  # template pairs in at most this many epochs
    dp_epsilon: float | None = None  # differentially private training (Opacus) to this epsilon
    dp_delta: float | None = None  # its delta; None: 1/(10 n) for n examples

    def total_steps(self, n_examples: int, n_capped: int = 0) -> int:
        """Optimizer steps over ``n_examples``, of which ``n_capped`` are template pairs
        that ``template_epochs`` keeps out of later epochs (see example_stream): an
        epoch after the cap is a pass over the others, and where there are no others
        the stream, and so the run, ends after the cap."""
        cap = self.template_epochs if n_capped else None
        if cap is None or (not self.steps and cap >= math.ceil(self.epochs)):
            if self.steps:
                return self.steps
            return max(1, math.ceil(self.epochs * n_examples / self.batch_size))
        def length(epoch: int) -> int:
            return n_examples if epoch < cap else n_examples - n_capped

        if self.steps:
            steps = self.steps
        else:
            full = int(self.epochs)
            drawn = sum(length(e) for e in range(full)) + (self.epochs - full) * length(full)
            steps = max(1, math.ceil(drawn / self.batch_size))
        if n_capped < n_examples:
            return steps
        return min(steps, math.ceil(cap * n_examples / self.batch_size))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        for key in ("alpha", "dropout", "lr", "epochs", "warmup", "weight_decay",
                    "max_grad_norm", "dp_epsilon", "dp_delta"):
            if d[key] is not None:
                d[key] = float(d[key])  # 16 and 16.0 are the same run
        return d


def pick_device(name: str = "auto") -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def example_order(n: int, seed: int, start: int, count: int) -> list[int]:
    """Examples ``start`` .. ``start + count`` of an endless stream of epochs, each a
    seeded permutation: the order depends only on the seed, so a resumed run
    sees exactly the batches the uninterrupted one would."""
    out = []
    for k in range(start, start + count):
        epoch, i = divmod(k, n)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[i]))
    return out


def example_stream(n: int, seed: int, start: int, count: int, capped=None,
                   cap: int | None = None) -> list[int]:
    """example_order() with template pairs capped: while epoch < ``cap`` an epoch is a
    seeded permutation of all ``n`` examples (the same as example_order's), after it a
    seeded permutation of those not ``capped`` (a boolean per example).  Fewer than
    ``count`` are returned where the stream ends (every example capped)."""
    if cap is None or capped is None or not np.any(capped):
        return example_order(n, seed, start, count)
    free = np.flatnonzero(~np.asarray(capped, bool))
    out = []
    for k in range(start, start + count):
        if k < cap * n:
            epoch, i = divmod(k, n)
            out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[i]))
        elif len(free):
            epoch, i = divmod(k - cap * n, len(free))
            out.append(int(free[np.random.default_rng([seed, cap + epoch]).permutation(
                len(free))[i]]))
        else:
            break
    return out


def _collate(batch, pad_id: int, device):
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (x, y) in enumerate(batch):
        ids[row, :len(x)] = torch.tensor(x)
        labels[row, :len(y)] = torch.tensor(y)
        mask[row, :len(x)] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def add_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    layers = None
    if config.lora_layers:
        n = model.config.num_hidden_layers
        layers = list(range(max(0, n - config.lora_layers), n))
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), bias="none",
                      task_type="CAUSAL_LM", layers_to_transform=layers)
    return get_peft_model(model, lora)


LOSS_CHUNK_BYTES = 64 * 2**20  # fp32 logits of one chunk of answer tokens


def _chunk_loss(head, hidden, targets, weights=None):
    import torch

    if weights is None:
        return torch.nn.functional.cross_entropy(head(hidden).float(), targets,
                                                 reduction="sum")
    return (torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="none")
            * weights).sum()


def answer_loss(model, ids, labels, mask, *, chunked: bool = True, weights=None):
    """The summed cross-entropy of the answer tokens (labels not IGNORE), each row's
    tokens weighted by ``weights`` (one per row) where given.  ``chunked``:
    only the answer positions' hidden states go through the output layer, a chunk of
    about LOSS_CHUNK_BYTES of logits at a time, each recomputed in the backward pass
    instead of kept; a model whose output layer is not a plain linear head (logit
    scaling or soft-capping) takes the full path."""
    import functools

    import torch
    from torch.utils.checkpoint import checkpoint

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = inner.config
    plain_head = not (getattr(cfg, "final_logit_softcapping", None)
                      or getattr(cfg, "logit_scale", None))
    token_weights = None if weights is None else weights[:, None].expand(
        labels.shape[0], labels.shape[1] - 1)
    if not chunked or not plain_head:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
            ignore_index=IGNORE, reduction="sum" if weights is None else "none")
        return losses if weights is None else (losses * token_weights.reshape(-1)).sum()
    hidden = inner.get_decoder()(input_ids=ids, attention_mask=mask,
                                 use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    hidden, targets = hidden[:, :-1][keep], targets[keep]
    token_weights = None if weights is None else token_weights[keep]
    head = inner.get_output_embeddings()
    size = max(1, LOSS_CHUNK_BYTES // (4 * head.weight.shape[0]))
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, len(targets), size):
        total = total + checkpoint(functools.partial(_chunk_loss, head), hidden[i:i + size],
                                   targets[i:i + size], None if weights is None
                                   else token_weights[i:i + size], use_reentrant=False)
    return total


def _save_checkpoint(folder: Path, model, optimizer, scheduler, step: int, losses) -> None:
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().float().cpu().contiguous()
             for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()}
    save_file(state, str(tmp / "adapter.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "losses": losses, "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               tmp / "state.pt")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(folder: Path, model, optimizer, scheduler):
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(folder / "adapter.safetensors")))
    state = torch.load(folder / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], state["losses"]


def train_lora(model, examples: list[tuple[list[int], list[int]]], config: TrainConfig,
               out_dir: Path, *, pad_id: int,
               on_step: Callable[[dict], None] | None = None, capped=None) -> dict:
    """Train LoRA on ``model`` (already a PEFT model) over encoded ``examples``; resume
    from ``out_dir/checkpoint`` if there is one.  ``capped``: a boolean per example, the
    template pairs ``config.template_epochs`` keeps out of later epochs.  With
    ``config.dp_epsilon``, DP-SGD (train/dp.py).  Returns the adapter state (numpy), the
    steps, the final loss and, for DP, its accounting."""
    import torch
    from peft import get_peft_model_state_dict
    from transformers import get_cosine_schedule_with_warmup

    if not examples:
        raise ValueError("no training examples")
    device = next(model.parameters()).device
    n_capped = int(np.sum(capped)) if capped is not None else 0
    total = config.total_steps(len(examples), n_capped)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup * total), total)
    private = hooks = dp = None
    if config.dp_epsilon:
        from . import dp as dp_module

        dp = dp_module.plan(config.dp_epsilon, config.dp_delta, len(examples),
                            config.batch_size, total, config.max_grad_norm)
        hooks, private = dp_module.make_private(model, optimizer, dp, config.batch_size)
    folder = Path(out_dir) / "checkpoint"
    step, losses = 0, []
    torch.manual_seed(config.seed)
    if (folder / "state.pt").exists():
        step, losses = _load_checkpoint(folder, model, optimizer, scheduler)
    model.train()
    while step < total:
        start = time.perf_counter()
        if dp:
            picks = dp_module.poisson_batch(len(examples), dp.sample_rate, config.seed, step)
        else:
            picks = example_stream(len(examples), config.seed, step * config.batch_size,
                                   config.batch_size, capped, config.template_epochs)
        batch = [examples[i] for i in picks]
        n_answer = sum(sum(t != IGNORE for t in y[1:]) for _, y in batch) or 1
        n_tokens, step_loss = 0, 0.0
        (private or optimizer).zero_grad(set_to_none=True)
        for m in range(0, len(batch), config.micro_batch):
            part = batch[m:m + config.micro_batch]
            ids, labels, mask = _collate(part, pad_id, device)
            weights = None
            if dp:  # each example's mean token loss, averaged over the micro-batch
                counts = (labels[:, 1:] != IGNORE).sum(dim=1).clamp(min=1)
                weights = 1.0 / (counts.float() * len(part))
            loss = answer_loss(model, ids, labels, mask, chunked=config.chunked_loss,
                               weights=weights)
            if not dp:
                loss = loss / n_answer
            loss.backward()
            step_loss += loss.item() * (len(part) / len(batch) if dp else 1.0)
            n_tokens += int(mask.sum())
        if private:
            if not batch:
                dp_module.empty_step(params)
            private.step()  # clips each example's gradient, adds the noise
        else:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
        scheduler.step()
        step += 1
        seconds = time.perf_counter() - start
        point = {"step": step, "total": total, "loss": step_loss,
                 "lr": scheduler.get_last_lr()[0], "tokens_per_s": n_tokens / seconds,
                 "tokens": n_tokens}
        losses.append((step, step_loss))
        if step % config.checkpoint_every == 0 or step == total:
            _save_checkpoint(folder, model, optimizer, scheduler, step, losses)
            point["checkpoint"] = True
        if on_step:
            on_step(point)
    if hooks is not None:
        hooks.remove_hooks()
        (private or optimizer).zero_grad(set_to_none=True)
    state = {k: v.detach().float().cpu().numpy() for k, v in
             get_peft_model_state_dict(model, save_embedding_layers=False).items()}
    result = {"state": state, "steps": step,
              "final_loss": losses[-1][1] if losses else None, "losses": losses}
    if dp:
        result["dp"] = dp.as_dict() | {"epsilon_spent": dp_module.spent(dp, step)}
    return result
