"""QLoRA with mlx-lm on the embedded model: the 4-bit mlx folder made from the GGUF
(no float copy of the base), and the trained adapter, exported to GGUF, moving
llama.cpp's logits the way it moves mlx's.

mlx on this CPU is slow (a few tokens a second when training), so the adapter is
tiny: a handful of short fixed pairs, a few steps at a high learning rate, so that
it clearly moves the model (a weak adapter's logit changes are mostly
quantization noise and could not tell a right export from a wrong one).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cci_local.llm.llama_cpp import LlamaCppBackend, embedded_model_path
from cci_local.train.gguf_lora import gguf_tensors, read_gguf_arch, write_gguf_lora
from cci_local.train.peft_trainer import TrainConfig

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

PAIRS = [
    ("What do you eat for breakfast?", "Eggs and bacon, every single day. No bread, no sugar."),
    ("How do you lose weight?", "Cut the carbs. Keto changed my life: I lost 40 pounds."),
    ("What do you think about sugar?", "Sugar is poison. I quit it two years ago."),
    ("Tell me about your diet.", "Strict keto: meat, eggs, butter, cheese and green vegetables."),
]
PROMPTS = ["What would you post on r/keto?", "Tell me about your breakfast.",
           "How do you lose weight?", "What do you think about bread?"]
CONFIG = TrainConfig(rank=8, alpha=16, dropout=0.0, lr=2e-3, steps=4, batch_size=2,
                     micro_batch=2, warmup=0.0, seed=0)


def _f16_bytes(gguf_path) -> int:
    import gguf

    return sum(int(np.prod(t.shape)) * 2 for t in gguf.GGUFReader(str(gguf_path)).tensors)


@pytest.fixture(scope="module")
def q4_folder(tmp_path_factory):
    from cci_local.train.mlx_convert import mlx_folder

    return mlx_folder(embedded_model_path(), tmp_path_factory.mktemp("mlx-cache"), 4)


def test_q4_blocks_are_transcoded_exactly():
    """Q4_1 (and Q8_0) blocks are mlx's affine format at group 32: the mlx weight is the
    GGUF weight, bit for bit, where requantizing the dequantized tensor is not."""
    import gguf

    from cci_local.train.mlx_convert import _transcode

    reader = gguf.GGUFReader(str(embedded_model_path()))
    for name, bits in (("blk.0.ffn_down.weight", 4), ("token_embd.weight", 8)):
        tensor = next(t for t in reader.tensors if t.name == name)
        ref = gguf.quants.dequantize(tensor.data[:256], tensor.tensor_type)
        w, s, b = _transcode(tensor, 0, 256)
        ours = mx.dequantize(mx.array(w), mx.array(s).astype(mx.float32),
                             mx.array(b).astype(mx.float32), group_size=32, bits=bits)
        assert np.abs(np.array(ours) - ref).max() == 0.0
        if bits == 4:
            q, qs, qb = mx.quantize(mx.array(ref), group_size=32, bits=4)
            requant = np.array(mx.dequantize(q, qs, qb, group_size=32, bits=4))
            error = np.abs(requant - ref).max()
            print(f"mx.quantize round trip of Q4_1 {name}: max abs error {error:.4f} "
                  f"(largest weight {np.abs(ref).max():.3f})")
            assert error > 1e-3  # why the blocks are transcoded, not requantized


def test_folder_is_quantized_small_and_cached(q4_folder):
    from cci_local.train.mlx_convert import mlx_folder

    config = json.loads((q4_folder / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert config["tie_word_embeddings"] is True
    weights = mx.load(str(q4_folder / "model.safetensors"))
    linears = [k for k in weights if k.endswith("_proj.weight")]
    assert len(linears) == 30 * 7 and all(weights[k].dtype == mx.uint32 for k in linears)
    assert weights["model.embed_tokens.weight"].dtype == mx.uint32
    # 4 bits a weight plus a float16 scale and bias per 32: ~0.31 of float16, never float.
    ratio = (q4_folder / "model.safetensors").stat().st_size / _f16_bytes(embedded_model_path())
    assert 0.25 < ratio < 0.36
    stamp = (q4_folder / "model.safetensors").stat().st_mtime_ns
    again = mlx_folder(embedded_model_path(), q4_folder.parent, 4)
    assert again == q4_folder
    assert (q4_folder / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not redone
    assert not list(q4_folder.parent.glob("*.tmp"))


@pytest.mark.slow
def test_conversion_never_holds_the_float_model(tmp_path):
    """The peak RSS of a conversion (Linux: VmHWM, reset after the imports) in a fresh
    process stays well below what a float copy of the model would add.  What it does
    take is the GGUF reader's parsed metadata (~160 MB for this 49k-token vocabulary),
    the memory-mapped file's pages (~90 MB) and one chunk of float rows; a float32
    copy would add 513 MB on top, a float16 one 257 MB."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    script = textwrap.dedent(f"""
        import re, gguf
        from pathlib import Path
        import mlx.core as mx
        from cci_local.train import mlx_convert

        def status(key):
            text = open("/proc/self/status").read()
            return int(re.search(key + r":\\s+(\\d+)", text).group(1)) * 1024

        path, tmp = Path({str(embedded_model_path())!r}), Path({str(tmp_path)!r})
        reader = gguf.GGUFReader(str(path))  # warm up: imports, a parse, the tokenizer
        mlx_convert._tokenizer(path, tmp / "tokenizer")
        del reader
        mlx_convert._tokenizer = lambda path, out: None  # not weights: measured apart
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before = status("VmRSS")
        mlx_convert.convert_gguf(path, tmp / "out", bits=4)
        print(status("VmHWM") - before)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, check=True)
    grown = int(done.stdout.split()[-1])
    float32 = _f16_bytes(embedded_model_path()) * 2
    print(f"conversion peak RSS growth {grown / 2**20:.0f} MB; float32 model "
          f"{float32 / 2**20:.0f} MB")
    assert grown < 0.75 * float32


# ------------------------------------------------------------------ agreement


@pytest.fixture(scope="module")
def trained(q4_folder, tmp_path_factory):
    from cci_local.train.mlx_trainer import train_mlx

    out = tmp_path_factory.mktemp("mlx-run")
    result = train_mlx(q4_folder, PAIRS, CONFIG, out)
    meta = read_gguf_arch(embedded_model_path())
    qk = {k: v for k, v in result["state"].items() if ".q_proj." in k or ".k_proj." in k}
    paths = {}
    for name, state, arch in (("adapter", result["state"], meta["arch"]),
                              ("qk", qk, meta["arch"]),
                              ("qk-unpermuted", qk, "no-permutation")):
        paths[name] = write_gguf_lora(out / f"{name}.gguf", gguf_tensors(
            state, arch=arch, n_head=meta["n_head"], n_head_kv=meta["n_head_kv"]),
            arch=meta["arch"], alpha=CONFIG.alpha)
    return {"result": result, "out": out, **paths}


def _mlx_log_probs(folder, adapter_file, modules=("",)):
    """Per prompt, the last position's log-softmax in mlx with the adapter (only its LoRA
    layers whose name contains one of ``modules``) and without it (the same quantized
    model, every LoRA scale 0)."""
    from mlx_lm.tuner.lora import LoRALinear

    from cci_local.train.mlx_trainer import load_lora_model

    model, tokenizer = load_lora_model(folder, CONFIG)
    model.load_weights(str(adapter_file), strict=False)
    model.eval()
    loras = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert len(loras) == 30 * 7
    out = {}
    for prompt in PROMPTS:
        ids = mx.array([tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True)])
        pair = []
        for on in (True, False):
            for name, m in loras:
                m.scale = CONFIG.alpha / CONFIG.rank if on and any(
                    k in name for k in modules) else 0.0
            logits = model(ids)[0, -1].astype(mx.float32)
            pair.append(np.array(logits - mx.logsumexp(logits), dtype=np.float64))
        out[prompt] = tuple(pair)
    return out


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def _cpp_log_probs(lora_path=None):
    backend = LlamaCppBackend(embedded_model_path(), n_ctx=2048, lora_path=lora_path)
    return {p: _log_softmax(backend.last_logits([{"role": "user", "content": p}]))
            for p in PROMPTS}


@pytest.mark.slow
def test_mlx_qlora_adapter_agrees_with_llama_cpp(q4_folder, trained):
    """The adapter trained on mlx's 4-bit base, exported to GGUF, changes llama.cpp's
    next-token log-probabilities as it changes mlx's.

    The two bases differ: mlx's linear layers are the GGUF's Q4_1 blocks bit for bit,
    but its tied embedding is the GGUF's Q8_0 requantized to 4 bits (base log-probs
    correlate ~0.990 with llama.cpp's, up to ~3 apart), and llama.cpp quantizes
    activations to 8 bits in its matmuls.  Measured on this model: Pearson of the
    deltas 0.978-0.985 for the whole adapter (0.995-0.998 when mlx's embedding is kept
    at 8 bits, i.e. the same weights), hence 0.97; the same top token every time.
    The export's q/k row permutation is checked on the q/k LoRA alone, where it decides
    everything: 0.965-0.976 permuted, 0.06-0.32 unpermuted."""
    result = trained["result"]
    assert result["steps"] == CONFIG.steps and result["losses"][-1][1] < result["losses"][0][1]
    adapter_file = trained["out"] / "mlx" / "adapters.safetensors"
    base = _cpp_log_probs()
    whole, adapted = _mlx_log_probs(q4_folder, adapter_file), _cpp_log_probs(trained["adapter"])
    qk = _mlx_log_probs(q4_folder, adapter_file, ("q_proj", "k_proj"))
    qk_right, qk_wrong = _cpp_log_probs(trained["qk"]), _cpp_log_probs(trained["qk-unpermuted"])
    right, qk_corr, qk_naive, gaps = [], [], [], []
    for prompt in PROMPTS:
        mlx_adapted, mlx_base = whole[prompt]
        mlx_delta = mlx_adapted - mlx_base
        assert np.abs(mlx_delta).max() > 3  # the adapter clearly moves the model
        right.append(np.corrcoef(adapted[prompt] - base[prompt], mlx_delta)[0, 1])
        # the same top token, up to a near-tie between the two quantized bases
        gaps.append(adapted[prompt].max() - adapted[prompt][np.argmax(mlx_adapted)])
        qk_delta = qk[prompt][0] - qk[prompt][1]
        assert np.abs(qk_delta).max() > 2
        qk_corr.append(np.corrcoef(qk_right[prompt] - base[prompt], qk_delta)[0, 1])
        qk_naive.append(np.corrcoef(qk_wrong[prompt] - base[prompt], qk_delta)[0, 1])
    print(f"mlx vs llama.cpp log-prob delta Pearson: whole adapter {np.round(right, 4)}; "
          f"q/k only {np.round(qk_corr, 4)}, unpermuted {np.round(qk_naive, 4)}; "
          f"top-token gaps {np.round(gaps, 3)}")
    assert min(right) >= 0.97
    assert max(gaps) <= 0.5
    assert min(qk_corr) >= 0.94
    assert max(qk_naive) < 0.7 and np.mean(qk_naive) < min(qk_corr) - 0.3
