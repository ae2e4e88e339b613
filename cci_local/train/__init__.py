"""The train stage: a LoRA adapter per community (docs/method.md#train).

``train(db, community)`` reads the community's training pairs (CommInst answers
of the train split by default; template pairs with ``kinds``), trains a LoRA
adapter on the base model with PEFT/torch (weights read straight from the GGUF,
dequantized, or from a Hugging Face folder), and exports it as a GGUF LoRA
adapter with an Ollama Modelfile beside it.  Runs are keyed by (community, base,
data, settings): a finished one is reused, a killed one resumes from its last
checkpoint.  The adapter and its training curve are registered in the store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from ..errors import CciError
from ..store import find_community
from .data import data_hash, encode, select_rows
from .gguf_lora import gguf_tensors, read_gguf_arch, write_gguf_lora
from .peft_trainer import TrainConfig, add_lora, pick_device, train_lora


class TrainError(CciError):
    """Training cannot start as asked (no data, unknown community, base not local)."""


@dataclass
class Base:
    name: str  # as the user gave it
    gguf: Path | None  # a GGUF file (embedded, gguf:PATH, a registry entry)
    hf_dir: Path | None  # or a Hugging Face folder


def resolve_base(name: str) -> Base:
    """MODEL name -> local weights to train on."""
    path = Path(name.removeprefix("hf:")).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TrainError(f"{path} is not a Hugging Face model folder (no config.json)")
        return Base(name, None, path)
    from ..llm import BackendError, get_backend
    from ..llm.llama_cpp import LlamaCppBackend

    try:
        backend = get_backend(name)
    except BackendError as e:
        raise TrainError(str(e)) from e
    if not isinstance(backend, LlamaCppBackend):
        raise TrainError(f"{name} is served by {backend.spec.split(':')[0]}: training needs the "
                         "weights on this machine, a GGUF (embedded, gguf:PATH) or a Hugging "
                         "Face folder (--base /path/to/folder)")
    return Base(name, backend.path, None)


def base_identity(db, base: Base) -> str:
    """What the base model is, by content: the GGUF's SHA-256, or a hash of a Hugging Face
    folder's weights and config.  Adapters are found by it, whatever the file is called."""
    from ..llm.cache import file_sha256

    if base.gguf:
        return f"gguf:sha256:{file_sha256(db, base.gguf)}"
    digest = hashlib.sha256()
    for f in sorted(base.hf_dir.glob("*.safetensors")) + [base.hf_dir / "config.json"]:
        digest.update(file_sha256(db, f).encode())
    return f"hf:sha256:{digest.hexdigest()}"


def load_base(base: Base, config: TrainConfig):
    """(model, tokenizer) in torch, on the chosen device."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    device = pick_device(config.device)
    dtype = torch.float32
    # bf16 (or fp16) on CUDA and MPS halves the base; the CPU stays fp32: without
    # AVX512-BF16/AMX (most laptops) torch runs bf16 matrix products emulated, slower
    # than fp32, and a CPU run is for small bases (docs/performance.md#training-memory).
    if device == "cuda" and config.dtype in ("auto", "bf16", "fp16"):
        dtype = torch.bfloat16 if (config.dtype != "fp16" and torch.cuda.is_bf16_supported()) \
            else torch.float16
    elif device == "mps" and config.dtype in ("auto", "bf16", "fp16"):
        dtype = torch.float16 if config.dtype == "fp16" else torch.bfloat16
    folder, extra = (str(base.gguf.parent), {"gguf_file": base.gguf.name}) if base.gguf \
        else (str(base.hf_dir), {})
    if config.load_in_4bit:
        if device != "cuda":
            raise TrainError("--4bit needs a CUDA GPU (bitsandbytes)")
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, **{k: v for k, v in extra.items()
                                                         if k == "gguf_file"})
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
    if not config.load_in_4bit:
        model.to(device)
    checkpointing = config.gradient_checkpointing
    if checkpointing is None:
        checkpointing = device in ("cuda", "mps") and not config.dp_epsilon
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return model, tokenizer


def adapters_dir(db: sqlite_utils.Database) -> Path:
    """Where the adapters of this store are written: ``adapters/`` beside the store."""
    path = db.conn.execute("PRAGMA database_list").fetchone()[2]
    return Path(path).resolve().parent / "adapters"


# Settings that change memory or speed, not what is learned: not part of a run's identity,
# so a run resumed under another budget continues where it stopped.
MEMORY_ONLY = ("checkpoint_every", "device", "micro_batch", "gradient_checkpointing",
               "chunked_loss")
# dedup decides which rows are trained on, and the data hash says which they are; the
# mitigations added later leave a run's key as before while they are off (None).
DATA_ONLY = ("dedup",)
ADDED = ("template_epochs", "dp_epsilon", "dp_delta")


def run_key(community: str, base_ident: str, hashed: str, trainer: str, kinds, config) -> str:
    """The identity of a training run: the same community, base, data, trainer, kinds and
    settings (those in MEMORY_ONLY and DATA_ONLY aside) give the same key, so the run is
    reused."""
    settings = {k: v for k, v in config.as_dict().items()
                if k not in MEMORY_ONLY + DATA_ONLY and not (k in ADDED and v is None)}
    blob = json.dumps([community, base_ident, hashed, trainer, list(kinds), settings],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


TRAINERS = ("peft", "mlx")


def _pairs(db, community, kinds, max_examples, seed, split_by="random", dedup="none"):
    """(community, pairs, their kinds, what dedup removed)."""
    name = find_community(db, community)
    if name is None:
        raise TrainError(f"no community {community!r} in the store")
    if split_by not in ("random", "topic"):
        raise TrainError(f"split_by must be random or topic, not {split_by!r}")
    from .dedup import MODES

    if dedup not in MODES:
        raise TrainError(f"dedup must be one of {', '.join(MODES)}, not {dedup!r}")
    rows, removed = select_rows(db, name, kinds, max_examples=max_examples, seed=seed,
                                split_by=split_by, dedup=dedup)
    pairs = [(r["question"], r["answer"]) for r in rows]
    if not pairs:
        what = " or ".join("CommInst" if k == "open" else f"{k} pairs" for k in kinds)
        split = "unseen-topic train split" if split_by == "topic" else "train split"
        raise TrainError(f"r/{name} has no {what} in the {split}: run `cci-local generate "
                         f"r/{name}` first" + (" (or train on template pairs: --kind template)"
                                               if kinds == ("open",) else ""))
    return name, pairs, [r["kind"] for r in rows], removed


def check_mitigations(config: TrainConfig, trainer: str, kinds) -> None:
    """--template-epochs and --dp-epsilon: what they need, refused before any work."""
    if config.template_epochs is not None:
        if trainer != "peft":
            raise TrainError("--template-epochs is for the peft trainer")
        if "template" not in kinds:
            raise TrainError("--template-epochs caps template pairs, and this run trains on "
                             "none: add --kind template")
        if config.template_epochs < 1:
            raise TrainError("--template-epochs must be at least 1")
    if config.dp_epsilon is not None:
        if trainer != "peft":
            raise TrainError("--dp-epsilon is for the peft trainer (Opacus, PyTorch)")
        try:
            import opacus  # noqa: F401
        except ImportError as e:
            raise TrainError("--dp-epsilon needs Opacus: pip install 'cci-local[dp]'") from e
        from .dp import DPError, check

        try:
            check(config)
        except DPError as e:
            raise TrainError(str(e)) from e


def plan(db: sqlite_utils.Database, community: str, base: str = "embedded",
         config: TrainConfig | None = None, *, trainer: str = "peft",
         kinds: tuple[str, ...] = ("open",), max_examples: int | None = None,
         split_by: str = "random", memory: float | None = None,
         pinned: frozenset[str] = frozenset()):
    """What ``train`` would do: the settings that fit ``memory`` GiB (default: a safe
    share of the device's memory) and their estimate, without loading the model.
    ``pinned``: the TrainConfig fields the user set, which the fit keeps."""
    config = config or TrainConfig()
    check_mitigations(config, trainer, kinds)
    _, pairs, pair_kinds, _ = _pairs(db, community, kinds, max_examples, config.seed, split_by,
                                     config.dedup)
    return plan_pairs(pairs, resolve_base(base), config, trainer=trainer, memory=memory,
                      pinned=pinned, capped=_capped(config, pair_kinds))[0]


def _capped(config: TrainConfig, pair_kinds) -> list[bool] | None:
    """Which pairs --template-epochs keeps out of later epochs (None: no cap)."""
    if config.template_epochs is None:
        return None
    return [kind == "template" for kind in pair_kinds]


def plan_pairs(pairs, resolved: Base, config: TrainConfig, *, trainer: str = "peft",
               memory: float | None = None, pinned: frozenset[str] = frozenset(),
               counts=None, capped=None):
    """(plan, config to train with) for ``pairs`` on ``resolved``; ``counts``: token
    counts (whole exchanges, answers, how counted) where the pairs are only assumed;
    ``capped``: the pairs --template-epochs keeps out of later epochs."""
    import dataclasses

    from .estimate import fit, model_shape

    if trainer not in TRAINERS:
        raise TrainError(f"unknown trainer {trainer!r}: use one of {', '.join(TRAINERS)}")
    if config.load_in_4bit and trainer == "mlx":
        raise TrainError("--4bit is for the peft trainer on CUDA; mlx trains on a 4-bit base "
                         "already (--mlx-bits)")
    if config.dp_epsilon is not None:  # never fitted on: Opacus cannot recompute layers
        config = dataclasses.replace(config, gradient_checkpointing=False)
        pinned = pinned | {"gradient_checkpointing"}
    the_plan, config = fit(pairs, model_shape(resolved.gguf, resolved.hf_dir), config,
                           trainer=trainer, gguf=resolved.gguf, hf_dir=resolved.hf_dir,
                           budget_gib=memory, pinned=pinned, counts=counts)
    if capped is not None:
        the_plan = dataclasses.replace(the_plan, steps=config.total_steps(len(pairs),
                                                                          sum(capped)))
    return the_plan, config


class OverBudget(TrainError):
    """No settings fit the memory budget; nothing was started."""

    exit_code = 2


def train(db: sqlite_utils.Database, community: str, base: str = "embedded",
          config: TrainConfig | None = None, *, trainer: str = "peft",
          kinds: tuple[str, ...] = ("open",),
          max_examples: int | None = None, out_dir: Path | None = None,
          on_step: Callable[[dict], None] | None = None, force: bool = False,
          split_by: str = "random", memory: float | None = None,
          pinned: frozenset[str] = frozenset(), on_plan: Callable | None = None) -> dict:
    """Train (or resume, or reuse) ``community``'s adapter; return its store row.
    ``force``: train again from scratch even if this run finished before.
    ``split_by`` 'topic': train on the unseen-topic split's train rows, for
    ``survey --split topic`` (the adapter is keyed by its data, so it is its own).
    ``memory``: the budget in GiB (default: a safe share of the device's memory); the
    settings not in ``pinned`` are fitted to it before anything loads, and a run that
    cannot fit raises OverBudget.  ``on_plan(plan)`` sees the plan first."""
    config = config or TrainConfig()
    check_mitigations(config, trainer, kinds)
    name, pairs, pair_kinds, removed = _pairs(db, community, kinds, max_examples, config.seed,
                                              split_by, config.dedup)
    capped = _capped(config, pair_kinds)
    resolved = resolve_base(base)
    the_plan, config = plan_pairs(pairs, resolved, config, trainer=trainer, memory=memory,
                                  pinned=pinned, capped=capped)
    if on_plan:
        on_plan(the_plan)
    if not the_plan.fits:
        from .estimate import refusal

        raise OverBudget(refusal(the_plan))
    ident = base_identity(db, resolved)
    hashed = data_hash(pairs)
    key = run_key(name, ident, hashed, trainer, kinds, config)
    row = _adapter(db, "key = ?", key)
    if row is not None and row["status"] == "done" and not force:
        return row | {"reused": True}
    if row is not None and force:
        shutil.rmtree(row["path"], ignore_errors=True)
        with db.conn:
            db.conn.execute("DELETE FROM training_curve WHERE adapter_id = ?", [row["id"]])
            db.conn.execute("DELETE FROM adapters WHERE id = ?", [row["id"]])
    out = Path(out_dir) if out_dir else adapters_dir(db) / f"{name}-{key[:10]}"
    out.mkdir(parents=True, exist_ok=True)
    with db.conn:
        db.conn.execute(
            "INSERT OR IGNORE INTO adapters (key, community, base, base_identity, trainer,"
            " data_hash, examples, settings, status, path, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'training', ?, ?)",
            [key, name, base, ident, trainer, hashed, len(pairs),
             json.dumps({"kinds": list(kinds), **config.as_dict(),
                         "dedup_removed": {"exact": removed.exact, "near": removed.near}}),
             str(out), time.time()])
    adapter_id = db.execute("SELECT id FROM adapters WHERE key = ?", [key]).fetchone()[0]

    total = config.total_steps(len(pairs), sum(capped or ()))
    db.execute("UPDATE adapters SET total_steps = ? WHERE id = ?", [total, adapter_id])
    db.conn.commit()

    def step(point: dict) -> None:
        db.execute("INSERT OR REPLACE INTO training_curve VALUES (?, ?, ?, ?, ?)",
                    [adapter_id, point["step"], point["loss"], point["lr"],
                     point["tokens_per_s"]])
        if point.get("checkpoint"):
            db.execute("UPDATE adapters SET steps = ? WHERE id = ?", [point["step"], adapter_id])
        db.conn.commit()
        if on_step:
            on_step(point)

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message="Could not find a config file", module="peft")
    if trainer == "mlx":
        from .mlx_trainer import mlx_folder, train_mlx

        # QLoRA: the base quantized once, a tensor at a time, into an mlx folder.
        folder = mlx_folder(resolved.hf_dir or resolved.gguf, adapters_dir(db) / ".mlx-cache",
                            config.mlx_bits)
        result = train_mlx(folder, pairs, config, out, on_step=step)
        paths = export(None, result["state"], resolved, config, out)
    else:
        import torch

        model, tokenizer = load_base(resolved, config)
        skipped: list[int] = []
        examples = encode(tokenizer, pairs, config.max_len
                          or getattr(model.config, "max_position_embeddings", None), skipped)
        torch.manual_seed(config.seed)  # the LoRA initialisation
        model = add_lora(model, config)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
        if capped is not None:  # the pairs encode() kept
            gone = set(skipped)
            capped = [c for i, c in enumerate(capped) if i not in gone]
        from .dp import DPError

        try:
            result = train_lora(model, examples, config, out, pad_id=pad, on_step=step,
                                capped=capped)
        except DPError as e:
            raise TrainError(str(e)) from e
        paths = export(model, result["state"], resolved, config, out)
    for saved in (out / "peft", out / "mlx"):  # what it trained on, for `adapters add`
        if not saved.is_dir():  # on another machine
            continue
        (saved / "cci_training.json").write_text(json.dumps({
            "community": name, "base": base, "base_identity": ident, "trainer": trainer,
            "kinds": list(kinds), "seed": config.seed, "dedup": config.dedup,
            "split_by": split_by, "examples": len(pairs), "data_hash": hashed,
            "steps": result["steps"], "final_loss": result["final_loss"],
            "settings": config.as_dict()}, indent=2) + "\n", encoding="utf-8")
    if "dp" in result:  # the noise used and the epsilon spent, beside the settings
        settings = json.loads(_adapter(db, "id = ?", adapter_id)["settings"])
        db.execute("UPDATE adapters SET settings = ? WHERE id = ?",
                   [json.dumps(settings | {"dp": result["dp"]}), adapter_id])
    with db.conn:
        db.conn.execute(
            "UPDATE adapters SET status = 'done', steps = ?, final_loss = ?, gguf = ?,"
            " finished_at = ? WHERE id = ?",
            [result["steps"], result["final_loss"], str(paths["gguf"]), time.time(),
             adapter_id])
    return _adapter(db, "id = ?", adapter_id) | {"reused": False}


def list_adapters(db: sqlite_utils.Database) -> list[dict]:
    """Every adapter in the store, by community then age: id, community, base, trainer
    (peft, mlx, or import:peft / import:mlx for one `adapters add` brought in), status,
    steps, total_steps, final_loss, examples, path, gguf, modelfile."""
    columns = ("id", "community", "base", "trainer", "status", "steps", "total_steps",
               "final_loss", "examples", "path", "gguf", "modelfile")
    return [dict(zip(columns, row, strict=True)) for row in db.execute(
        f"SELECT {', '.join(columns)} FROM adapters ORDER BY community, id")]


def _adapter(db, where: str, value) -> dict | None:
    cur = db.execute(f"SELECT * FROM adapters WHERE {where}", [value])
    row = cur.fetchone()
    return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))


def export(model, state: dict, base: Base, config: TrainConfig, out: Path) -> dict[str, Path]:
    """The PEFT folder (PEFT trainer) and the GGUF LoRA adapter.  No Modelfile: that is
    written by `adapters export`, past the privacy gate (cci_local/adapters.py)."""
    if model is not None:
        # No embedding layers are trained; "auto" would ask the Hugging Face hub whether
        # the base has a config.json (a network call the privacy test catches).
        model.save_pretrained(str(out / "peft"), save_embedding_layers=False)
    if base.gguf:
        meta = read_gguf_arch(base.gguf)
    else:
        cfg = json.loads((base.hf_dir / "config.json").read_text())
        meta = {"arch": cfg.get("model_type", "llama"), "n_head": cfg["num_attention_heads"],
                "n_head_kv": cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
                "name": cfg.get("_name_or_path", "")}
    tensors = gguf_tensors(state, arch=meta["arch"], n_head=meta["n_head"],
                           n_head_kv=meta["n_head_kv"])
    gguf_path = write_gguf_lora(out / "adapter.gguf", tensors, arch=meta["arch"],
                                alpha=config.alpha, base_name=meta["name"])
    return {"gguf": gguf_path}


__all__ = ["TRAINERS", "Base", "OverBudget", "TrainConfig", "TrainError", "adapters_dir",
           "export", "list_adapters", "plan", "plan_pairs", "resolve_base", "train"]
