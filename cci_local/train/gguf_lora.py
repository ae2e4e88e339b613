"""LoRA adapters as GGUF files that llama.cpp (``lora_path``) and Ollama (``ADAPTER``) load.

The file holds ``general.type = adapter``, ``adapter.type = lora``,
``adapter.lora.alpha`` and, per adapted matrix, ``blk.N.<module>.weight.lora_a``
(rank x in) and ``.lora_b`` (out x rank); llama.cpp scales their product by
alpha / rank, as PEFT does.  llama.cpp's converter stores the q and k
projections of llama-family models with their rows permuted (rotary halves
interleaved), and transformers undoes that when it reads a GGUF, so a
``lora_b`` of q or k trained in Hugging Face layout must be permuted the same
way before it meets the GGUF base.  mlx adapters are named differently and keep
``lora_a`` transposed (in x rank); ``from_mlx`` turns them into this layout.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# Hugging Face module -> GGUF tensor, inside a block.
MODULES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
PERMUTED_ARCHS = {"llama"}  # architectures whose q/k rows llama.cpp's converter permutes
_PEFT_NAME = re.compile(r"layers\.(\d+)\.(.+)\.lora_([AB])(?:\.default)?\.weight$")
_MLX_NAME = re.compile(r"layers\.(\d+)\.(.+)\.lora_([ab])$")


def permute_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """The row permutation llama.cpp's converter applies to q (n_head = attention heads)
    and k (n_head = key-value heads) projections."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_tensors(peft_state: dict[str, np.ndarray], *, arch: str, n_head: int,
                 n_head_kv: int) -> dict[str, np.ndarray]:
    """PEFT adapter tensors (Hugging Face names and layout) -> GGUF names and layout."""
    out = {}
    for name, value in peft_state.items():
        match = _PEFT_NAME.search(name)
        if not match:
            raise ValueError(f"unexpected adapter tensor {name!r}: only LoRA on the "
                             f"block's linear layers ({', '.join(MODULES)}) can be exported")
        layer, module, which = match.groups()
        if module not in MODULES:
            raise ValueError(f"LoRA on {module!r} has no GGUF counterpart")
        value = np.ascontiguousarray(value, dtype=np.float32)
        if which == "B" and arch in PERMUTED_ARCHS and module == "self_attn.q_proj":
            value = permute_rows(value, n_head)
        elif which == "B" and arch in PERMUTED_ARCHS and module == "self_attn.k_proj":
            value = permute_rows(value, n_head_kv)
        out[f"blk.{layer}.{MODULES[module]}.weight.lora_{which.lower()}"] = value
    return out


def from_mlx(mlx_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """mlx-lm adapter tensors ('model.layers.N.self_attn.q_proj.lora_a', lora_a as
    in x rank, lora_b as rank x out) -> PEFT names and layout."""
    out = {}
    for name, value in mlx_state.items():
        match = _MLX_NAME.search(name)
        if not match:
            raise ValueError(f"unexpected mlx adapter tensor {name!r}")
        layer, module, which = match.groups()
        out[f"base_model.model.model.layers.{layer}.{module}.lora_{which.upper()}.weight"] = \
            np.ascontiguousarray(np.asarray(value, dtype=np.float32).T)
    return out


def write_gguf_lora(path: str | Path, tensors: dict[str, np.ndarray], *, arch: str,
                    alpha: float, base_name: str = "") -> Path:
    import logging

    import gguf

    # gguf's writer logs every file at INFO; some libraries (wordllama) turn the root
    # logger to INFO on import, which would put those lines in the middle of progress.
    logging.getLogger("gguf").setLevel(logging.WARNING)
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    if base_name:
        writer.add_name(f"{base_name} LoRA (cci-local)")
    for name in sorted(tensors, key=_tensor_order):
        writer.add_tensor(name, tensors[name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def _tensor_order(name: str):
    parts = name.split(".")
    return (int(parts[1]), parts[2], parts[-1])


def gguf_value(reader, key: str, default=None):
    """A scalar or string field of a ``gguf.GGUFReader``'s metadata (``default`` if absent)."""
    import gguf

    field = reader.fields.get(key)
    if field is None:
        return default
    part = field.parts[field.data[0]]
    return bytes(part).decode() if field.types[0] == gguf.GGUFValueType.STRING \
        else part.tolist()[0]


def read_gguf_arch(gguf_path: str | Path) -> dict:
    """Architecture, heads and key-value heads of a GGUF model, from its metadata."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    arch = gguf_value(reader, "general.architecture")
    n_head = gguf_value(reader, f"{arch}.attention.head_count")
    return {"arch": arch, "n_head": n_head,
            "n_head_kv": gguf_value(reader, f"{arch}.attention.head_count_kv") or n_head,
            "name": gguf_value(reader, "general.name") or ""}


def modelfile(base_gguf: str | Path, adapter: str | Path) -> str:
    """An Ollama Modelfile that puts the adapter on the base (`ollama create NAME -f ...`)."""
    return f"FROM {Path(base_gguf).resolve()}\nADAPTER {Path(adapter).resolve()}\n"
