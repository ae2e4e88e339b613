"""`cci-local export --format llamafactory`: each community's training data and a
LLaMA-Factory YAML that trains the adapter `cci-local train` would, on one GPU,
several (torchrun, DeepSpeed) or a Ray cluster (docs/scale-out.md).

The data are the very pairs `train` reads (train.data.training_rows: the same
split, kinds, duplicate removal and seed), in ShareGPT form with a
dataset_info.json; the YAML carries TrainConfig's hyper-parameters.  LLaMA-Factory
is told no chat template, so it parses the base tokenizer's own, the template
`train` uses.  A GGUF base has no Hugging Face form to name: a small one is
written dequantized beside the data (DIR/base/), a big one is named by its hub
id (the registry's ``hf``) or ``--hf-base``.

cci_export.json records what was exported (community, settings, data hash), so
`cci-local adapters add DIR/saves/<community>` knows what the adapter trained on
and the privacy audit can test it on those texts.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import sqlite_utils

from .errors import CciError

METHODS = ("lora", "qlora", "full")
# The largest GGUF base written out dequantized (float32) without being asked: a 1B
# model's 4 GiB; an 8B base would be 32 GiB, so it is named by its hub id instead.
DEQUANTIZE_LIMIT = 1.2e9


class ExportError(CciError):
    """The export cannot be written as asked: the message says what to do."""


def hf_base(db, base: str, out: Path, given: str | None) -> tuple[str, str]:
    """(model_name_or_path for LLaMA-Factory, how it was chosen)."""
    from .llm.registry import resolve
    from .train import resolve_base

    if given:
        path = Path(given).expanduser()
        return (str(path.resolve()), "--hf-base") if path.is_dir() else (given, "--hf-base")
    resolved = resolve_base(base)
    if resolved.hf_dir:
        return str(resolved.hf_dir.resolve()), "the base's folder"
    from .train.estimate import model_shape

    params = model_shape(resolved.gguf, None).params
    hub = resolve(base)[1].get("hf")
    if params > DEQUANTIZE_LIMIT:
        if hub:
            return hub, f"the registry's hub id for {base}"
        raise ExportError(
            f"{base} is a GGUF of {params / 1e9:.1f}B parameters: LLaMA-Factory needs its "
            "Hugging Face form; name its hub id or folder with --hf-base (e.g. "
            "meta-llama/Llama-3.1-8B-Instruct)")
    folder = out / "base"
    if not (folder / "config.json").is_file():
        write_hf_form(resolved.gguf, folder)
    note = f"{base} dequantized from its GGUF" + (f" (hub: {hub})" if hub else "")
    return str(folder.resolve()), note


def write_hf_form(gguf: Path, folder: Path) -> None:
    """The GGUF's weights, dequantized to float32, as a Hugging Face folder (with its
    tokenizer and chat template): the same numbers `train` trains on."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    tmp = folder.with_name(folder.name + ".tmp")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # transformers dequantizes a GGUF on load but keeps a "gguf quantizer" that refuses
    # to save; the weights are plain float32 by then (saved and read back: identical)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.replace(folder)


def _cutoff(pairs, folder: str, config) -> int:
    """cutoff_len: TrainConfig.max_len, else the longest pair in the chat template
    (counted with the base's tokenizer when it is on this machine), else 2048."""
    if config.max_len:
        return config.max_len
    if not Path(folder).is_dir():
        return 2048
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    longest = max(len(tokenizer.apply_chat_template(
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        tokenize=True, return_dict=False)) for q, a in pairs)
    return int(longest)


def yaml_text(community: str, model: str, how: str, dataset_dir: str, output_dir: str,
              config, method: str, cutoff: int, bf16: bool, examples: int) -> str:
    """One community's LLaMA-Factory training config, commented where it differs
    from the paper (full finetune, lr 1e-5, 3 epochs, batch 16, cosine, 10% warm-up,
    2048 tokens)."""
    accumulation = max(1, config.batch_size // config.micro_batch)
    micro = config.batch_size // accumulation
    lines = [
        f"# r/{community}: what `cci-local train r/{community}` trains, for LLaMA-Factory",
        f"# ({examples} training pairs).  Run: llamafactory-cli train {community}.yaml",
        f"# The batch is {micro} x {accumulation} = {config.batch_size} examples a step on one "
        "device;",
        "# on N devices divide gradient_accumulation_steps by N to keep it (docs/scale-out.md).",
        "",
        "### model",
        f"model_name_or_path: {model}  # {how}",
        "trust_remote_code: false",
        "",
        "### method",
        "stage: sft",
        "do_train: true",
    ]
    if method == "full":
        lines += ["finetuning_type: full  # the paper's: a whole model, not an adapter "
                  "(adapters add cannot take it)"]
    else:
        lines += [
            "finetuning_type: lora  # the paper fully finetuned; LoRA fits a laptop",
            f"lora_rank: {config.rank}",
            f"lora_alpha: {config.alpha:g}",
            f"lora_dropout: {config.dropout:g}",
            f"lora_target: {','.join(config.target_modules)}",
        ]
        if method == "qlora":
            lines += ["quantization_bit: 4  # QLoRA: bitsandbytes nf4, CUDA only",
                      "quantization_method: bitsandbytes"]
    lr = 1e-5 if method == "full" else config.lr
    lines += [
        "",
        "### dataset",
        f"dataset: cci_{community}",
        f"dataset_dir: {dataset_dir}",
        "# no template: LLaMA-Factory parses the base tokenizer's own chat template, the one "
        "train uses",
        f"cutoff_len: {cutoff}" + ("" if cutoff == 2048 else "  # the paper: 2048"),
        "overwrite_cache: true",
        "preprocessing_num_workers: 1",
        "",
        "### output",
        f"output_dir: {output_dir}",
        "logging_steps: 1",
        "save_strategy: 'no'",
        "overwrite_output_dir: true",
        "report_to: none",
        "",
        "### train",
        f"per_device_train_batch_size: {micro}",
        f"gradient_accumulation_steps: {accumulation}",
        f"learning_rate: {lr:g}" + ("" if method == "full" else "  # the paper: 1e-5 (full "
                                       "finetune); LoRA needs ~10x"),
    ]
    if config.steps:
        lines.append(f"max_steps: {config.steps}")
    else:
        lines.append(f"num_train_epochs: {config.epochs:g}")
    lines += [
        "lr_scheduler_type: cosine",
        f"warmup_ratio: {config.warmup:g}",
        f"weight_decay: {config.weight_decay:g}",
        f"max_grad_norm: {config.max_grad_norm:g}",
        f"seed: {config.seed}",
        f"bf16: {'true' if bf16 else 'false'}" + ("" if bf16 else
                                                  "  # float32: a small base, any CPU"),
    ]
    if method == "full":
        lines.append("# deepspeed: examples/deepspeed/ds_z3_config.json  # 8B full "
                     "finetune: ZeRO-3 over several GPUs")
    return "\n".join(lines) + "\n"


def export_llamafactory(db: sqlite_utils.Database, names: list[str], out_dir: str | Path, *,
                        base: str, config, kinds: tuple[str, ...] = ("open",),
                        split_by: str = "random", max_examples: int | None = None,
                        method: str = "lora", hf: str | None = None,
                        precision: str = "auto", portable: bool = False) -> dict:
    """Write DIR/<community>.json, DIR/dataset_info.json, DIR/<community>.yaml and
    DIR/cci_export.json; return {community: {"train": n}} and the base's note."""
    from .train import _pairs, check_mitigations
    from .train.data import data_hash

    if method not in METHODS:
        raise ExportError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if config.dp_epsilon is not None or config.template_epochs is not None:
        raise ExportError("--dp-epsilon and --template-epochs live in cci-local's own training "
                          "loop; LLaMA-Factory has neither: train with `cci-local train`")
    check_mitigations(config, "peft", kinds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {n: _pairs(db, n, kinds, max_examples, config.seed, split_by, config.dedup)
            for n in names}  # every community's data checked before anything is written
    model, how = hf_base(db, base, out, hf)
    if precision == "auto":
        from .train.estimate import model_shape

        local = Path(model).is_dir()
        params = model_shape(None, Path(model)).params if local else math.inf
        precision = "fp32" if params < DEQUANTIZE_LIMIT else "bf16"
    root = "." if portable else str(out.resolve())
    info, counts, record = {}, {}, {}
    for name, (_, pairs, _kinds, removed) in data.items():
        records = [{"conversations": [{"from": "human", "value": q},
                                      {"from": "gpt", "value": a}]} for q, a in pairs]
        (out / f"{name}.json").write_text(json.dumps(records, ensure_ascii=False, indent=1),
                                          encoding="utf-8")
        info[f"cci_{name}"] = {"file_name": f"{name}.json", "formatting": "sharegpt",
                               "columns": {"messages": "conversations"}}
        cutoff = _cutoff(pairs, model, config)
        (out / f"{name}.yaml").write_text(yaml_text(
            name, model, how, root, f"{root}/saves/{name}", config, method, cutoff,
            precision == "bf16", len(pairs)), encoding="utf-8")
        counts[name] = {"train": len(pairs)}
        record[name] = {"kinds": list(kinds), "seed": config.seed, "dedup": config.dedup,
                        "split_by": split_by, "max_examples": max_examples,
                        "examples": len(pairs), "data_hash": data_hash(pairs),
                        "dedup_removed": {"exact": removed.exact, "near": removed.near},
                        "method": method, "cutoff_len": cutoff}
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (out / "cci_export.json").write_text(json.dumps(
        {"format": "llamafactory", "base": base, "model_name_or_path": model,
         "exported_at": time.time(), "communities": record}, indent=2) + "\n",
        encoding="utf-8")
    return {"counts": counts, "base": f"{model} ({how})", "precision": precision}
