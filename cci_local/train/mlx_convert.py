"""An mlx-lm model folder, quantized, made from a GGUF file or a Hugging Face folder.

mlx-lm trains LoRA on a quantized base (QLoRA): its ``LoRALinear`` wraps an
``nn.QuantizedLinear`` and the frozen weights stay packed.  The folder holds
``config.json`` (with ``"quantization": {"group_size", "bits"}`` and, per
module, any layer whose quantization differs), ``model*.safetensors`` with mlx
quantized weights (``weight`` uint32 packed, ``scales``, ``biases``) and the
tokenizer files.  It is made once, cached under a key of (source identity,
bits, group size), written to a temporary folder and renamed, so a killed
conversion is redone, never half-used.

From a GGUF file the tensors are read one at a time from the memory-mapped file
(``gguf.GGUFReader``), never the whole model in float:

* Q4_0, Q4_1 and Q8_0 blocks are *transcoded*, not requantized: each block of
  32 is ``d * q + m`` (Q4_1), ``d * (q - 8)`` (Q4_0) or ``d * q`` (Q8_0, q
  signed), which is exactly mlx's affine format with group 32 (scale ``d``,
  bias ``m``, ``-8 d`` or ``-128 d``, the 4- or 8-bit codes repacked into
  uint32).  The mlx weight equals the dequantized GGUF weight bit for bit.
  (``mx.quantize`` of the dequantized tensor does *not*: mlx picks its own
  scale so that the larger-magnitude end of each group is exact, which moves
  the grid; on SmolLM2's Q4_1 q-projection its round trip is off by up to
  0.28, ~5 % of the largest weight.)  A source with more bits than asked
  (Q8_0 with ``bits=4``) is requantized instead.
* Any other type (F16, BF16, F32, K-quants) is dequantized in chunks of rows
  and quantized with ``mx.quantize(group_size, bits)``.

llama.cpp's converter permutes the rows of the q and k projections of
llama-architecture models (rotary halves interleaved); the inverse is applied so
the folder is in Hugging Face layout (``rope_traditional`` false), like the PEFT
trainer's.  Each tensor is written to its safetensors shard as soon as it is
packed, so the converter holds one packed tensor plus one chunk of float rows
(``CHUNK_VALUES``) at a time; with ``bits=None`` one float16 tensor.

From a Hugging Face folder mlx-lm's own ``convert`` runs (lazy loading,
``quantize=True, q_bits=bits``).  ``bits=None`` makes a float16 folder, the
same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

SHARD_BYTES = 4 << 30  # bytes per safetensors shard (written as it comes, not held)
CHUNK_VALUES = 1 << 20  # float values dequantized at once (4 MB as float32)
FLOAT_DTYPE = "float16"

# GGUF tensor -> mlx-lm (Hugging Face) Llama module.
_BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_SKIP = {"rope_freqs"}  # Llama 3 rope factors: become config's rope_scaling


def mlx_folder(source: Path, cache: Path, bits: int | None = 4,
               group_size: int | None = None) -> Path:
    """The cached mlx-lm folder of ``source`` (a .gguf file or a Hugging Face folder),
    quantized to ``bits`` (None: float16); made on first use."""
    source = Path(source)
    if source.is_dir():
        stat = [(p.name, p.stat().st_size, p.stat().st_mtime_ns)
                for p in sorted(source.glob("*")) if p.is_file()]
        ident = f"{source.resolve()}:{stat}"
    else:
        st = source.stat()
        ident = f"{source.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    tag = f"q{bits}g{group_size or 'auto'}" if bits else "f16"
    key = hashlib.sha256(f"{ident}:{tag}".encode()).hexdigest()[:12]
    folder = Path(cache) / f"{source.stem}-{tag}-{key}"
    if (folder / "config.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        _convert_hf(source, tmp, bits, group_size or 64)
    else:
        convert_gguf(source, tmp, bits=bits, group_size=group_size)
    tmp.replace(folder)
    return folder


def _convert_hf(source: Path, out: Path, bits: int | None, group: int) -> None:
    from mlx_lm.convert import convert

    if bits:
        convert(str(source), str(out), quantize=True, q_bits=bits, q_group_size=group)
    else:
        convert(str(source), str(out), dtype=FLOAT_DTYPE)


def _default_group(reader) -> int:
    """32 when the file's weights are mostly Q4_0/Q4_1/Q8_0 (their blocks are 32: the
    transcoded tensors and the rest share one group size), else mlx's default 64."""
    counts = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) == 2)
    common = counts.most_common(1)[0][0] if counts else "F16"
    return 32 if common in _TRANSCODE else 64


# ---------------------------------------------------------------- GGUF -> mlx


def convert_gguf(path: Path, out: Path, *, bits: int | None = 4,
                 group_size: int | None = None) -> Path:
    """Write an mlx-lm folder for the llama-architecture GGUF at ``path`` into ``out``
    (``group_size`` None: 32 for a Q4_0/Q4_1/Q8_0 file, else 64)."""
    import gguf

    from .gguf_lora import gguf_value

    reader = gguf.GGUFReader(str(path))
    arch = gguf_value(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path.name}: GGUF architecture {arch!r} is not supported by the "
                         "mlx converter (llama only); give a Hugging Face folder instead")
    config = _config(reader, arch)
    group_size = group_size or _default_group(reader)
    names = {t.name for t in reader.tensors}
    config["tie_word_embeddings"] = "output.weight" not in names
    out.mkdir(parents=True)
    writer = _ShardWriter(out)
    layers: dict[str, dict] = {}
    for tensor in reader.tensors:
        base = tensor.name.removesuffix(".weight")
        if base in _SKIP:
            continue
        module = _module_name(base)
        if tensor.name.endswith(".bias"):
            raise ValueError(f"{tensor.name}: biases are not supported")
        rows = int(tensor.shape[-1]) if len(tensor.shape) > 1 else 1
        n_head = None
        if base.endswith(".attn_q"):
            n_head = config["num_attention_heads"]
        elif base.endswith(".attn_k"):
            n_head = config["num_key_value_heads"]
        if len(tensor.shape) == 1:
            writer.add(f"{module}.weight", _float_rows(tensor, 0, 1).reshape(-1)
                       .astype(FLOAT_DTYPE))
            continue
        qtype = tensor.tensor_type.name
        native = _TRANSCODE.get(qtype)
        if bits is None:
            parts = [_float_rows(tensor, a, b).astype(FLOAT_DTYPE)
                     for a, b in _row_chunks(tensor, rows)]
            writer.add(f"{module}.weight", _unpermute(np.concatenate(parts), n_head))
            continue
        if native is not None and native <= bits:
            q_bits, q_group = native, 32
            packed = [_transcode(tensor, a, b) for a, b in _row_chunks(tensor, rows)]
        else:
            q_bits, q_group = bits, group_size
            packed = [_quantize(_float_rows(tensor, a, b), q_group, q_bits)
                      for a, b in _row_chunks(tensor, rows)]
        w, s, z = (np.concatenate(p) for p in zip(*packed, strict=True))
        # The permutation moves whole rows, so it commutes with row-wise packing.
        writer.add(f"{module}.weight", _unpermute(w, n_head))
        writer.add(f"{module}.scales", _unpermute(s, n_head))
        writer.add(f"{module}.biases", _unpermute(z, n_head))
        if (q_bits, q_group) != (bits, group_size):
            layers[module] = {"group_size": q_group, "bits": q_bits}
    writer.close()
    if bits is not None:
        config["quantization"] = {"group_size": group_size, "bits": bits, **layers}
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    _tokenizer(path, out)
    return out


def _module_name(base: str) -> str:
    parts = base.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in _BLOCK:
        return f"model.layers.{parts[1]}.{_BLOCK[parts[2]]}"
    if base in _TOP:
        return _TOP[base]
    raise ValueError(f"GGUF tensor {base!r} has no mlx-lm Llama counterpart")


def _config(reader, arch: str) -> dict:
    from .gguf_lora import gguf_value

    def key(name, default=None):
        return gguf_value(reader, f"{arch}.{name}", default)

    n_head = key("attention.head_count")
    hidden = key("embedding_length")
    vocab = key("vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": key("block_count"), "num_attention_heads": n_head,
        "num_key_value_heads": key("attention.head_count_kv") or n_head,
        "head_dim": key("attention.key_length") or hidden // n_head,
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": key("rope.freq_base", 10000.0),
        "max_position_embeddings": key("context_length", 4096),
        "vocab_size": vocab, "attention_bias": False, "mlp_bias": False,
        "rope_traditional": False, "torch_dtype": FLOAT_DTYPE,
    }
    for field, name in (("bos_token_id", "tokenizer.ggml.bos_token_id"),
                        ("eos_token_id", "tokenizer.ggml.eos_token_id")):
        value = gguf_value(reader, name)
        if value is not None:
            config[field] = value
    freqs = [t for t in reader.tensors if t.name == "rope_freqs.weight"]
    if freqs:
        config["rope_scaling"] = _llama3_rope(np.asarray(freqs[0].data, dtype=np.float64),
                                              config["rope_theta"], config["head_dim"])
    return config


def _llama3_rope(factors: np.ndarray, base: float, dim: int) -> dict:
    """The Llama 3 ``rope_scaling`` whose per-frequency factors (what llama.cpp's converter
    writes as ``rope_freqs``) are ``factors``; the GGUF keeps only the factors."""
    freqs = 1.0 / base ** (np.arange(0, dim, 2) / dim)
    wavelen = 2 * math.pi / freqs
    factor = float(factors.max())
    for low, high, old in ((1.0, 4.0, 8192), (1.0, 4.0, 4096), (1.0, 2.0, 8192)):
        smooth = (old / wavelen - low) / (high - low)
        expect = np.where(wavelen < old / high, 1.0, np.where(
            wavelen > old / low, factor, 1 / ((1 - smooth) / factor + smooth)))
        if np.allclose(expect, factors, rtol=1e-3):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                    "high_freq_factor": high, "original_max_position_embeddings": old}
    raise ValueError("the GGUF's rope_freqs match no Llama 3 rope scaling; give a "
                     "Hugging Face folder instead")


def _tokenizer(path: Path, out: Path) -> None:
    """The tokenizer files (transformers reads the GGUF's vocabulary, not its weights)."""
    import transformers
    from transformers import AutoTokenizer

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    finally:
        transformers.logging.set_verbosity(level)
    tokenizer.save_pretrained(str(out))


# ------------------------------------------------------------- tensor helpers

# GGUF types that are already mlx's affine format with group 32: type -> bits.
_TRANSCODE = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}


def _row_chunks(tensor, rows: int):
    cols = int(tensor.shape[0])
    step = max(1, CHUNK_VALUES // cols)
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def _float_rows(tensor, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a GGUF tensor as float32 (dequantized if need be)."""
    import gguf

    data = tensor.data[start:stop] if len(tensor.shape) > 1 else tensor.data
    if tensor.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return np.asarray(data, dtype=np.float32)
    return gguf.quants.dequantize(np.asarray(data), tensor.tensor_type).astype(np.float32)


def _quantize(w: np.ndarray, group: int, bits: int):
    import mlx.core as mx

    q, s, b = mx.quantize(mx.array(w), group_size=group, bits=bits)
    s, b = s.astype(mx.float16), b.astype(mx.float16)
    mx.eval(q, s, b)
    return np.array(q), np.array(s), np.array(b)


def _transcode(tensor, start: int, stop: int):
    """Rows of a Q4_0 / Q4_1 / Q8_0 tensor as mlx (weight, scales, biases), exactly."""
    qtype = tensor.tensor_type.name
    raw = np.ascontiguousarray(tensor.data[start:stop])  # (rows, blocks * block bytes)
    rows = raw.shape[0]
    block = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[qtype]
    blocks = raw.reshape(rows, -1, block)
    d = blocks[..., :2].copy().view(np.float16)[..., 0]
    if qtype == "Q8_0":
        codes = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint32)
        scales, biases = d, (d.astype(np.float32) * -128).astype(np.float16)
        bits = 8
    else:
        qs = blocks[..., 4:] if qtype == "Q4_1" else blocks[..., 2:]
        # ggml: element j in the low nibble of byte j, element j + 16 in its high nibble
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.uint32)
        scales = d
        biases = (blocks[..., 2:4].copy().view(np.float16)[..., 0] if qtype == "Q4_1"
                  else (d.astype(np.float32) * -8).astype(np.float16))
        bits = 4
    per_word = 32 // bits
    codes = codes.reshape(rows, -1, per_word)
    shifts = (np.arange(per_word, dtype=np.uint32) * bits)
    packed = np.bitwise_or.reduce(codes << shifts, axis=-1).astype(np.uint32)
    return packed, scales, biases


def _unpermute(rows: np.ndarray, n_head: int | None) -> np.ndarray:
    """Undo llama.cpp's converter permutation of q/k rows (``gguf_lora.permute_rows``)."""
    if n_head is None:
        return rows
    return np.ascontiguousarray(
        rows.reshape(n_head, rows.shape[0] // n_head // 2, 2, *rows.shape[1:])
        .swapaxes(1, 2).reshape(rows.shape))


class _ShardWriter:
    """Safetensors shards written tensor by tensor (no shard is held in memory): the
    data goes to a side file as it comes, and the header is put in front when a shard
    closes.  Named like mlx-lm's shards, with an index, when done."""

    _DTYPES = {"uint32": "U32", "float16": "F16", "float32": "F32", "bfloat16": "BF16"}

    def __init__(self, out: Path):
        self.out, self.files, self.index = out, [], {}
        self._open()

    def _open(self) -> None:
        self.data_path = self.out / f"part-{len(self.files):05d}.data"
        self.data = open(self.data_path, "wb")  # noqa: SIM115 - closed in _flush
        self.header: dict[str, dict] = {}
        self.size = 0

    def add(self, name: str, value: np.ndarray) -> None:
        if self.header and self.size + value.nbytes > SHARD_BYTES:
            self._flush()
            self._open()
        value = np.ascontiguousarray(value)
        self.header[name] = {"dtype": self._DTYPES[value.dtype.name],
                             "shape": list(value.shape),
                             "data_offsets": [self.size, self.size + value.nbytes]}
        self.data.write(memoryview(value.reshape(-1)).cast("B"))
        self.size += value.nbytes

    def _flush(self) -> None:
        self.data.close()
        header = json.dumps({"__metadata__": {"format": "mlx"}, **self.header},
                            separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        path = self.data_path.with_suffix(".safetensors")
        with open(path, "wb") as f, open(self.data_path, "rb") as data:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            shutil.copyfileobj(data, f, 1 << 24)
        self.data_path.unlink()
        self.files.append((path, list(self.header)))

    def close(self) -> None:
        self._flush()
        n = len(self.files)
        total = 0
        for i, (path, names) in enumerate(self.files):
            name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            path.replace(self.out / name)
            total += (self.out / name).stat().st_size
            self.index.update(dict.fromkeys(names, name))
        (self.out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(self.index.items()))},
            indent=2), encoding="utf-8")
