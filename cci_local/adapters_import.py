"""Adapters trained anywhere, into the store: `cci-local adapters add PATH --community NAME`.

PATH is a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``,
as PEFT, LLaMA-Factory, axolotl, unsloth and `cci-local train` write it) or an mlx-lm
adapter (``adapters.safetensors`` + ``adapter_config.json``).  Before anything is
stored the adapter is checked against the base (its targets, layers, shapes and
rank), converted to a GGUF LoRA (train/gguf_lora.py: names, q/k row permutation,
mlx's transposes and scale), loaded by llama.cpp and required to move the base's
next-token log-probabilities.  Then it is copied under the store's ``adapters/``
and registered with its provenance (where it came from, its hash, its training
config), and every stage uses it as the community's newest adapter on that base.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlite_utils

from .adapters import AdapterError, _sha256
from .train.gguf_lora import MODULES

# Prompts whose next-token distribution an imported adapter must move.
PROBES = ("What do you usually eat for breakfast?",
          "How do you feel about the people in your community?")
MOVED = 1e-3  # the smallest largest change in log-probability that counts as moved
_LAYER = re.compile(r"layers\.(\d+)\.(.+?)\.lora_[ABab]")
# Files that carry how an adapter was trained, kept in its provenance when present.
TRAINING_FILES = ("adapter_config.json", "cci_training.json", "training_args.yaml",
                  "trainer_state.json", "all_results.json", "train_results.json")


@dataclass
class Incoming:
    kind: str  # peft | mlx
    folder: Path
    state: dict[str, np.ndarray]  # PEFT names and layout (lora_A: r x in, lora_B: out x r)
    config: dict
    rank: int
    alpha: float  # for llama.cpp: scale = alpha / rank; 0: the scale is folded into lora_B
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterError(f"{path}: not a readable JSON adapter config ({e})") from e
    if not isinstance(data, dict):
        raise AdapterError(f"{path}: expected a JSON object of adapter settings")
    return data


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return {k: np.asarray(v, dtype=np.float32) for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        if "bfloat16" in str(e) or "bf16" in str(e).lower():
            return _safetensors_torch(path)
        raise AdapterError(f"{path}: not a safetensors file ({e})") from e


def _safetensors_torch(path: Path) -> dict[str, np.ndarray]:
    """bfloat16 tensors, which numpy has no type for, read through torch."""
    from safetensors.torch import load_file

    return {k: v.float().numpy() for k, v in load_file(str(path)).items()}


def read_adapter(path: str | Path) -> Incoming:
    """The adapter at ``path`` in PEFT names and layout, or AdapterError saying what is
    missing or wrong."""
    folder = Path(path).expanduser()
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise AdapterError(f"{path}: no such folder (give the folder that holds "
                           "adapter_config.json)")
    config_path = folder / "adapter_config.json"
    if (folder / "adapters.safetensors").is_file():
        return _read_mlx(folder, config_path)
    weights = folder / "adapter_model.safetensors"
    if not config_path.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise AdapterError(f"{folder} is not an adapter folder: expected adapter_config.json "
                           "with adapter_model.safetensors (PEFT, LLaMA-Factory, axolotl) or "
                           f"adapters.safetensors (mlx-lm); found {found}")
    if not weights.is_file():
        hint = " (adapter_model.bin: re-save it with safetensors)" \
            if (folder / "adapter_model.bin").is_file() else ""
        raise AdapterError(f"{folder}: adapter_config.json but no adapter_model.safetensors"
                           + hint)
    return _read_peft(folder, _load_json(config_path), weights)


def _read_peft(folder: Path, config: dict, weights: Path) -> Incoming:
    if config.get("peft_type", "LORA").upper() != "LORA":
        raise AdapterError(f"{folder}: a {config['peft_type']} adapter; only LoRA converts to "
                           "a GGUF adapter")
    if config.get("use_dora"):
        raise AdapterError(f"{folder}: a DoRA adapter (use_dora); llama.cpp loads plain LoRA "
                           "only")
    if config.get("modules_to_save"):
        raise AdapterError(f"{folder}: the adapter also trains {config['modules_to_save']} "
                           "whole (modules_to_save); a GGUF LoRA holds low-rank deltas only")
    raw = _safetensors(weights)
    state = {k: v for k, v in raw.items() if "lora_" in k}
    others = sorted(set(raw) - set(state))
    if others:
        raise AdapterError(f"{weights}: tensors that are not LoRA matrices ({others[0]}, ...): "
                           "a GGUF LoRA holds low-rank deltas only")
    if not state:
        raise AdapterError(f"{weights}: no LoRA tensors (lora_A / lora_B) in it")
    rank = int(config.get("r", 0))
    ranks = {v.shape[0] for k, v in state.items() if ".lora_A" in k}
    if rank <= 0 or ranks != {rank} or config.get("rank_pattern") or config.get("alpha_pattern"):
        alpha = 0.0  # per-module ranks or scales: each folded into its lora_B
    else:
        alpha = float(config.get("lora_alpha", rank))
    if config.get("use_rslora"):
        alpha = 0.0
    if alpha == 0.0:
        state = _fold(state, config)
    return Incoming("peft", folder, state, config, max(ranks), alpha)


def _fold(state: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    """Each module's PEFT scale (lora_alpha / r, or / sqrt(r) with rsLoRA, after
    rank_pattern and alpha_pattern) multiplied into its lora_B."""
    out = dict(state)
    for name, b in state.items():
        if ".lora_B" not in name:
            continue
        module = name.split(".lora_B")[0]
        r = b.shape[1]
        alpha = float(config.get("lora_alpha", r))
        for pattern, value in (config.get("alpha_pattern") or {}).items():
            if re.search(pattern, module):
                alpha = float(value)
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        out[name] = b * scale
    return out


def _read_mlx(folder: Path, config_path: Path) -> Incoming:
    from .train.gguf_lora import from_mlx

    if not config_path.is_file():
        raise AdapterError(f"{folder}: adapters.safetensors but no adapter_config.json (mlx-lm "
                           "writes both; its lora_parameters give the rank and scale)")
    config = _load_json(config_path)
    if config.get("fine_tune_type", "lora") != "lora":
        raise AdapterError(f"{folder}: an mlx-lm {config['fine_tune_type']} adapter; only "
                           "LoRA converts to a GGUF adapter")
    params = config.get("lora_parameters") or {}
    raw = _safetensors(folder / "adapters.safetensors")
    try:
        state = from_mlx(raw)
    except ValueError as e:
        raise AdapterError(f"{folder / 'adapters.safetensors'}: {e}") from e
    ranks = {v.shape[0] for k, v in state.items() if ".lora_A" in k}
    if not ranks:
        raise AdapterError(f"{folder / 'adapters.safetensors'}: no LoRA tensors in it")
    rank = int(params.get("rank", max(ranks)))
    if ranks != {rank}:
        raise AdapterError(f"{config_path}: lora_parameters.rank is {rank} but the tensors "
                           f"have rank {sorted(ranks)}")
    scale = float(params.get("scale", 20.0))  # mlx-lm's default
    return Incoming("mlx", folder, state, config, rank, scale * rank)


def base_shapes(resolved) -> tuple[str, int, dict[tuple[int, str], tuple[int, int]]]:
    """(architecture, blocks, {(block, HF module): (out, in)}) of the base's adapted
    matrices, from the GGUF's tensor table or the safetensors headers."""
    gguf_module = {v: k for k, v in MODULES.items()}
    shapes: dict[tuple[int, str], tuple[int, int]] = {}
    if resolved.gguf:
        from .train.estimate import _gguf_reader
        from .train.gguf_lora import gguf_value

        reader = _gguf_reader(Path(resolved.gguf))  # parsed once per base (seconds at 8B)
        arch = gguf_value(reader, "general.architecture")
        blocks = gguf_value(reader, f"{arch}.block_count")
        for t in reader.tensors:
            parts = t.name.split(".")
            if len(parts) == 4 and parts[0] == "blk" and parts[2] in gguf_module:
                n_in, n_out = (int(x) for x in t.shape[:2])  # ggml order: ne0 = in
                shapes[(int(parts[1]), gguf_module[parts[2]])] = (n_out, n_in)
        return arch, blocks, shapes
    from safetensors import safe_open

    cfg = json.loads((resolved.hf_dir / "config.json").read_text())
    for f in sorted(resolved.hf_dir.glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                match = re.search(r"layers\.(\d+)\.(.+)\.weight$", name)
                if match and match.group(2) in MODULES:
                    out, n_in = st.get_slice(name).get_shape()
                    shapes[(int(match.group(1)), match.group(2))] = (out, n_in)
    return cfg.get("model_type", "llama"), cfg["num_hidden_layers"], shapes


def check_fits(incoming: Incoming, resolved, base_name: str) -> dict:
    """AdapterError unless every LoRA matrix targets a block's linear layer of the base
    with the base's shapes; returns what was checked (for provenance)."""
    arch, blocks, shapes = base_shapes(resolved)
    modules: set[str] = set()
    layers: set[int] = set()
    for name, value in sorted(incoming.state.items()):
        match = _LAYER.search(name)
        if not match:
            raise AdapterError(f"{incoming.folder}: tensor {name!r} is not LoRA on a "
                               "transformer block's linear layer")
        layer, module = int(match.group(1)), match.group(2)
        if module not in MODULES:
            raise AdapterError(f"{incoming.folder}: LoRA on {module!r}, which a GGUF adapter "
                               f"cannot carry (targets it can: {', '.join(MODULES)})")
        if layer >= blocks:
            raise AdapterError(f"{incoming.folder}: LoRA on block {layer}, but {base_name} has "
                               f"{blocks} blocks: the adapter was trained on another base")
        out, n_in = shapes[(layer, module)]
        want = (value.shape[0], n_in) if ".lora_A" in name else (out, value.shape[1])
        if value.ndim != 2 or tuple(value.shape) != want:
            side = "in" if ".lora_A" in name else "out"
            raise AdapterError(
                f"{incoming.folder}: {name} is {tuple(value.shape)}, but {base_name}'s "
                f"block {layer} {module} takes {n_in} in and gives {out} out ({side} side "
                f"differs): the adapter was trained on another base, not {base_name}")
        modules.add(module.split(".")[-1])
        layers.add(layer)
    halves: dict[str, dict[str, np.ndarray]] = {}
    for name, value in incoming.state.items():
        side = "A" if ".lora_A" in name else "B"
        halves.setdefault(name.replace(f".lora_{side}", ""), {})[side] = value
    for stem, pair in halves.items():
        if pair.keys() != {"A", "B"} or pair["A"].shape[0] != pair["B"].shape[1]:
            raise AdapterError(f"{incoming.folder}: {stem} lacks its lora_A or lora_B, or "
                               "their ranks differ")
    return {"arch": arch, "blocks": sorted(layers), "targets": sorted(modules),
            "rank": incoming.rank}


def moved_by(base_gguf: Path, adapter_gguf: Path) -> float:
    """The largest change the adapter makes to the base's next-token log-probabilities
    over PROBES (llama.cpp loads it, or AdapterError)."""
    from .llm import BackendError
    from .llm.llama_cpp import LlamaCppBackend

    base = LlamaCppBackend(base_gguf, n_ctx=512)
    try:
        adapted = base.with_adapter(adapter_gguf)
        largest = 0.0
        for question in PROBES:
            messages = [{"role": "user", "content": question}]
            plain, tuned = base.last_logits(messages), adapted.last_logits(messages)
            plain = plain - np.logaddexp.reduce(plain)
            tuned = tuned - np.logaddexp.reduce(tuned)
            largest = max(largest, float(np.abs(tuned - plain).max()))
        return largest
    except BackendError as e:
        raise AdapterError(f"llama.cpp refused the converted adapter: {e}") from e
    finally:
        base.close()


def add_adapter(db: sqlite_utils.Database, path: str | Path, community: str,
                base: str) -> dict:
    """Check, convert, verify and register the adapter at ``path`` as ``community``'s
    newest on ``base``; nothing is stored unless every check passes.  Adding the same
    adapter again returns its row (``reused``)."""
    from .store import find_community
    from .train import _adapter, adapters_dir, base_identity, resolve_base
    from .train.gguf_lora import gguf_tensors, read_gguf_arch, write_gguf_lora

    name = find_community(db, community)
    if name is None:
        raise AdapterError(f"no community {community!r} in the store: ingest its posts first "
                           "(the audit and the survey need them)")
    incoming = read_adapter(path)
    resolved = resolve_base(base)
    if resolved.gguf is None:
        raise AdapterError(f"{base} is a Hugging Face folder: adapters are served by llama.cpp "
                           "on a GGUF base; name the GGUF with --base")
    checked = check_fits(incoming, resolved, base)
    weights = [p for p in sorted(incoming.folder.iterdir())
               if p.name in ("adapter_model.safetensors", "adapters.safetensors")]
    # the adapter is its weights and its config (the same matrices at another scale,
    # rsLoRA or not, are another adapter)
    digest = _sha256(weights[0])
    config_hash = hashlib.sha256(json.dumps(incoming.config, sort_keys=True).encode()
                                 ).hexdigest()
    ident = base_identity(db, resolved)
    key = "import:" + hashlib.sha256(f"{name}|{ident}|{digest}|{config_hash}".encode()
                                     ).hexdigest()
    row = db.execute("SELECT id FROM adapters WHERE key = ?", [key]).fetchone()
    if row is not None:
        return _adapter(db, "id = ?", row[0]) | {"reused": True}

    meta = read_gguf_arch(resolved.gguf)
    out = adapters_dir(db) / f"{name}-{key[7:17]}"
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        source = tmp / ("peft" if incoming.kind == "peft" else "mlx")
        shutil.copytree(incoming.folder, source,
                        ignore=shutil.ignore_patterns("checkpoint-*", "*.bin", "optimizer.*",
                                                      "*.pt", "*.pth"))
        tensors = gguf_tensors(incoming.state, arch=meta["arch"], n_head=meta["n_head"],
                               n_head_kv=meta["n_head_kv"])
        gguf_path = write_gguf_lora(tmp / "adapter.gguf", tensors, arch=meta["arch"],
                                    alpha=incoming.alpha, base_name=meta["name"])
        moved = moved_by(resolved.gguf, gguf_path)
        if moved < MOVED:
            raise AdapterError(f"{incoming.folder}: llama.cpp loads it, but it moves no "
                               f"next-token log-probability of {base} by {MOVED} or more "
                               f"(largest {moved:.1e}): an untrained adapter (lora_B zero)?")
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    provenance = _provenance(incoming, checked, digest, moved, path, name)
    trained = provenance.get("cci", {})
    settings = {"imported": provenance, "kinds": trained.get("kinds", []),
                "seed": trained.get("seed", 0), "dedup": trained.get("dedup", "none"),
                "rank": incoming.rank, "alpha": incoming.alpha}
    steps, loss = provenance.get("steps"), provenance.get("final_loss")
    with db.conn:
        db.conn.execute(
            "INSERT INTO adapters (key, community, base, base_identity, trainer, data_hash,"
            " examples, settings, status, steps, total_steps, final_loss, path, gguf,"
            " created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'done', ?, ?, ?, ?, ?,"
            " ?, ?)",
            [key, name, base, ident, f"import:{incoming.kind}", trained.get("data_hash", ""),
             int(trained.get("examples", 0)), json.dumps(settings), steps, steps, loss,
             str(out), str(out / "adapter.gguf"), time.time(), time.time()])
    return _adapter(db, "key = ?", key) | {"reused": False}


def _provenance(incoming: Incoming, checked: dict, digest: str, moved: float,
                given: str | Path, community: str) -> dict:
    """Where the adapter came from, its hash, what was checked, and how it was trained
    (the training files its folder holds; a cci-local export's record of its data)."""
    record: dict = {"source": str(Path(given).expanduser().resolve()), "format": incoming.kind,
                    "sha256": digest, "checked": checked, "logprob_moved": round(moved, 4)}
    configs = {}
    for fname in TRAINING_FILES:
        p = incoming.folder / fname
        if p.is_file() and p.stat().st_size < 1 << 20:
            text = p.read_text(encoding="utf-8", errors="replace")
            try:
                configs[fname] = json.loads(text)
            except json.JSONDecodeError:
                configs[fname] = text
    record["training_files"] = sorted(configs)
    record["config"] = configs.get("adapter_config.json")
    state = configs.get("trainer_state.json")
    if isinstance(state, dict):
        record["steps"] = state.get("global_step")
        losses = [h["loss"] for h in state.get("log_history", []) if "loss" in h]
        record["final_loss"] = losses[-1] if losses else None
    # What it trained on, where cci-local wrote it down: `train` (cci_training.json in
    # its peft/ folder) or `export --format llamafactory` (cci_export.json, two levels
    # up from LLaMA-Factory's saves/<community>).  Only for this community's data.
    own = configs.get("cci_training.json")
    if isinstance(own, dict):
        if own.get("community") == community:
            record["cci"] = own
            record["steps"] = record.get("steps") or own.get("steps")
            record["final_loss"] = record.get("final_loss") or own.get("final_loss")
        else:
            record["note"] = (f"trained by cci-local on r/{own.get('community')}'s data, "
                              f"added as r/{community}'s")
    else:
        for up in (incoming.folder, *list(incoming.folder.resolve().parents)[:3]):
            export = up / "cci_export.json"
            if export.is_file():
                data = json.loads(export.read_text(encoding="utf-8"))
                settings = data.get("communities", {}).get(community)
                if settings and incoming.folder.resolve().name == community:
                    record["cci"] = settings | {"export": str(export.resolve())}
                break
    return record
