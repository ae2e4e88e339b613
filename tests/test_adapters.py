"""One base in memory, adapters switched per call (llama.cpp's adapter API), against
llama-cpp-python's own ``Llama(lora_path=...)``: a separate model per adapter.

The adapters are real GGUF LoRA files written by the trainer's own exporter from
seeded random low-rank weights of the shape training gives (rank 8, q/k/v/o), so
they load in llama.cpp exactly as a trained adapter does and move the model far
more than a few training steps would: a difference between the paths shows."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from cci_local.llm.llama_cpp import LlamaCppBackend, _log_softmax, embedded_model_path
from cci_local.train.gguf_lora import gguf_tensors, write_gguf_lora

PROMPTS = ["What do you eat for breakfast on keto?",
           "Is fruit healthy? Answer A) yes B) no",
           "Describe your community in one sentence.",
           "How many grams of protein a day?"]
LAYERS, HIDDEN, KV = 30, 576, 192  # SmolLM2-135M: 30 blocks, 9 heads of 64, 3 KV heads


def random_adapter(path, seed: int, scale: float = 0.05):
    """A GGUF LoRA of seeded random weights on every block's q/k/v/o projections."""
    rng = np.random.default_rng(seed)
    state = {}
    for i in range(LAYERS):
        for module, out in (("q_proj", HIDDEN), ("k_proj", KV), ("v_proj", KV),
                            ("o_proj", HIDDEN)):
            prefix = f"base_model.model.model.layers.{i}.self_attn.{module}"
            state[f"{prefix}.lora_A.weight"] = rng.normal(0, scale, (8, HIDDEN)).astype(
                np.float32)
            state[f"{prefix}.lora_B.weight"] = rng.normal(0, scale, (out, 8)).astype(
                np.float32)
    return write_gguf_lora(path, gguf_tensors(state, arch="llama", n_head=9, n_head_kv=3),
                           arch="llama", alpha=16)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    return [random_adapter(folder / f"c{k}.gguf", seed=k) for k in range(3)]


def reference_logprobs(lora_path, prompts_tokens) -> list[np.ndarray]:
    """Next-token log-probabilities from llama-cpp-python's own path: a Llama made
    with ``lora_path`` (its own copy of the base), each prompt evaluated afresh."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(embedded_model_path()), n_ctx=1024, verbose=False,
                          lora_path=str(lora_path) if lora_path else None)
    out = []
    try:
        for tokens in prompts_tokens:
            llm.reset()
            llm.eval(tokens)
            pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            logits = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                           shape=(llm.n_vocab(),)).astype(np.float64)
            out.append(_log_softmax(logits))
    finally:
        llm.close()
    return out


def test_switched_adapters_equal_separate_models(adapters):
    base = LlamaCppBackend(embedded_model_path(), n_ctx=1024)
    views = [base.with_adapter(p) for p in adapters]
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    tokens = [base.prompt_tokens(m) for m in messages]
    try:
        # Interleaved on purpose: every call switches the adapter on the one context.
        switched: dict[int, list] = {k: [] for k in range(-1, len(adapters))}
        for m in messages:
            for k, backend in [(-1, base), *enumerate(views)]:
                switched[k].append(_log_softmax(backend.last_logits(m)))
        assert base.model.loaded_adapters == [v.lora_path for v in views]
        assert base.model.switches >= len(PROMPTS) * (len(adapters) + 1) - 1
    finally:
        base.close()
    worst = 0.0
    for k, path in [(-1, None), *enumerate(adapters)]:
        reference = reference_logprobs(path, tokens)
        for ours, theirs in zip(switched[k], reference, strict=True):
            worst = max(worst, float(np.abs(ours - theirs).max()))
    assert worst < 1e-3, worst
    # ... and the adapters really move the model, so equality is not trivial.
    moved = float(np.abs(switched[0][0] - switched[-1][0]).max())
    assert moved > 1.0, moved
    assert float(np.abs(switched[0][0] - switched[1][0]).max()) > 1.0


def test_prefix_cache_is_not_reused_across_adapters(adapters):
    """The same prompt under A, then B, then A: each answer equals a fresh evaluation
    under its own adapter, so no keys/values computed under A served B."""
    base = LlamaCppBackend(embedded_model_path(), n_ctx=1024)
    a, b = base.with_adapter(adapters[0]), base.with_adapter(adapters[1])
    m = [{"role": "user", "content": PROMPTS[0]}]
    longer = m + [{"role": "assistant", "content": "Eggs."},
                  {"role": "user", "content": "And lunch?"}]
    try:
        first_a = a.last_logits(longer)
        b_after_a = b.last_logits(longer)  # the whole prompt is cached, under A
        again_a = a.last_logits(longer)
        fresh_b = LlamaCppBackend(embedded_model_path(), n_ctx=1024, lora_path=adapters[1])
        try:
            expected_b = fresh_b.last_logits(longer)
        finally:
            fresh_b.close()
    finally:
        base.close()
    assert np.abs(b_after_a - expected_b).max() < 1e-3
    assert np.abs(first_a - again_a).max() < 1e-3
    assert np.abs(first_a - b_after_a).max() > 1.0


def test_a_file_that_is_not_an_adapter_is_a_clear_error(tmp_path):
    from cci_local.llm import BackendError

    bad = tmp_path / "not-an-adapter.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    base = LlamaCppBackend(embedded_model_path(), n_ctx=512)
    try:
        with pytest.raises(BackendError, match="could not load the LoRA adapter"):
            base.with_adapter(bad).last_logits([{"role": "user", "content": "hi"}])
        # the base still answers
        assert base.last_logits([{"role": "user", "content": "hi"}]).shape[0] > 1000
    finally:
        base.close()
