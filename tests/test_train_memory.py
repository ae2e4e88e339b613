"""Training within a memory budget (issue 26): the chunked loss is the full loss, the plan
for an 8B base fits a 16 GB laptop where the issue says it must and is refused where it
cannot, before any work, with what would fit.

The 8B base is Llama-3.1-8B's own config.json, alone in a folder (no weights can be
had here): a dry run needs nothing more.  Its 198 training pairs are about 600 tokens,
the size of the Community-Cross-Instruct release's r/Liberal CommInst.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from cci_local.cli import cli
from cci_local.store import open_store

LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16"}


@pytest.fixture
def store_8b(tmp_path):
    """A store with 198 CommInst pairs of ~600 tokens for r/Liberal, and the 8B config."""
    db_path = tmp_path / "s.db"
    db = open_store(db_path)
    rng = np.random.default_rng(0)
    words = ("policy vote rights health care economy taxes climate court union wage school "
             "housing immigration justice freedom").split()
    with db.conn:
        db.conn.execute("INSERT INTO communities (name, first_seen) VALUES ('Liberal', 0)")
        for i in range(198):
            question = " ".join(rng.choice(words, 30))
            answer = " ".join(rng.choice(words, 200 + int(rng.integers(0, 40))))
            cur = db.conn.execute(
                "INSERT INTO instructions (kind, question, source, split, created_at)"
                " VALUES ('open', ?, 'test', 'train', ?)", [f"{i}: {question}", time.time()])
            db.conn.execute("INSERT INTO community_answers VALUES (?, 'Liberal', ?, '[]')",
                            [cur.lastrowid, answer])
    db.conn.close()
    base = tmp_path / "llama-3.1-8b"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(LLAMA_31_8B))
    return db_path, base


def dry_run(db_path, base, *args):
    result = CliRunner().invoke(cli, ["--db", str(db_path), "train", "Liberal", "--base",
                                      str(base), "--dry-run", *args])
    return result


def plan_json(db_path, base, *args) -> dict:
    result = dry_run(db_path, base, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_8b_on_apple_silicon_with_mlx_fits_12_gib(store_8b):
    plan = plan_json(*store_8b, "--device", "mps", "--trainer", "mlx")
    assert plan["fits"] and plan["peak_gib"] <= 12, plan
    assert plan["dtype"].startswith("4-bit")
    assert plan["budget_gib"] == pytest.approx(12.0)  # 75% of an assumed 16 GiB Mac
    assert plan["base"]["params"] == pytest.approx(8.03e9, rel=0.01)
    assert 550 <= plan["longest"] <= 700  # ~600-token pairs, estimated from characters
    assert plan["tokens_counted"].startswith("estimated")


def test_8b_qlora_on_cuda_fits_12_gib(store_8b):
    plan = plan_json(*store_8b, "--device", "cuda", "--4bit")
    assert plan["fits"] and plan["peak_gib"] <= 12, plan
    assert plan["dtype"] == "nf4" and plan["gradient_checkpointing"]
    # Without --4bit the bf16 base alone is 15 GiB: over budget, and --4bit is named.
    result = dry_run(*store_8b, "--device", "cuda")
    assert result.exit_code == 2
    assert "--4bit (about" in " ".join(result.output.split())


def test_8b_peft_on_a_16_gib_mac_is_refused_and_points_to_mlx(store_8b):
    db_path, base = store_8b
    result = dry_run(db_path, base, "--device", "mps", "--trainer", "peft", "--memory", "16")
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert "over the 16.0 GiB budget (--memory); nothing was started" in text
    assert "--trainer mlx, 4-bit base" in text
    assert "DOES NOT FIT" in text  # the plan table is printed before the refusal
    # A real run refuses the same way before loading anything, and stores nothing.
    result = CliRunner().invoke(cli, ["--db", str(db_path), "train", "Liberal", "--base",
                                      str(base), "--device", "mps", "--memory", "16"])
    assert result.exit_code == 2 and "--trainer mlx" in result.output
    db = open_store(db_path)
    assert db.execute("SELECT count(*) FROM adapters").fetchone()[0] == 0


def test_fit_lowers_micro_batch_then_checkpoints_and_keeps_what_the_user_set(store_8b):
    roomy = plan_json(*store_8b, "--device", "cuda", "--4bit", "--memory", "60")
    assert roomy["micro_batch"] == 4 and roomy["changed"] == []
    tight = plan_json(*store_8b, "--device", "cuda", "--4bit", "--memory", "12")
    assert tight["micro_batch"] < 4 and tight["changed"]
    assert tight["peak_gib"] < roomy["peak_gib"]
    # The user's micro-batch is kept, even when it does not fit.
    result = dry_run(*store_8b, "--device", "cuda", "--4bit", "--memory", "12",
                     "--micro-batch", "4", "--json")
    assert result.exit_code == 2
    assert json.loads(result.output[:result.output.rindex("}") + 1])["micro_batch"] == 4


def test_each_lever_lowers_the_estimate(store_8b):
    def peak(*args):
        return plan_json(*store_8b, "--device", "cuda", "--4bit", "--memory", "500",
                         *args)["peak_gib"]

    base = peak("--micro-batch", "4", "--no-grad-checkpoint")
    assert peak("--micro-batch", "4", "--grad-checkpoint") < base
    assert peak("--micro-batch", "1", "--no-grad-checkpoint") < base
    assert peak("--micro-batch", "4", "--no-grad-checkpoint", "--no-chunked-loss") > base
    assert peak("--micro-batch", "4", "--no-grad-checkpoint", "--max-len", "256") < base
    full = plan_json(*store_8b, "--device", "cuda", "--4bit")
    half = plan_json(*store_8b, "--device", "cuda", "--4bit", "--lora-layers", "16")
    assert half["lora_params"] * 2 == full["lora_params"]
    assert half["lora_layers"] == 16


def test_chunked_loss_equals_the_full_loss_and_its_gradient():
    """A small real Llama (random weights) with LoRA: the chunked loss over answer
    tokens and the loss from the whole logits give the same value and gradients."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cci_local.train import peft_trainer
    from cci_local.train.data import IGNORE
    from cci_local.train.peft_trainer import TrainConfig, add_lora, answer_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2))
    model = add_lora(model, TrainConfig(rank=4, dropout=0.0))
    for p in model.parameters():  # LoRA B starts at zero: move it so gradients flow to A
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    ids = torch.randint(0, 512, (3, 20))
    labels = ids.clone()
    labels[:, :7] = IGNORE
    labels[2, 15:] = IGNORE
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0
    old = peft_trainer.LOSS_CHUNK_BYTES
    peft_trainer.LOSS_CHUNK_BYTES = 4 * 512 * 5  # chunks of 5 tokens: several chunks
    try:
        results = []
        for chunked in (False, True):
            model.zero_grad()
            loss = answer_loss(model, ids, labels, mask, chunked=chunked)
            loss.backward()
            results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                                          if p.requires_grad}))
    finally:
        peft_trainer.LOSS_CHUNK_BYTES = old
    (full, g_full), (chunk, g_chunk) = results
    assert chunk == pytest.approx(full, rel=1e-5)
    assert g_full.keys() == g_chunk.keys() and g_full
    for name in g_full:
        assert torch.allclose(g_full[name], g_chunk[name], atol=1e-6, rtol=1e-4), name
    assert any(g.abs().sum() > 0 for g in g_full.values())


def test_run_refuses_a_budget_training_cannot_meet_before_any_stage(tmp_path):
    """`run --memory` plans training first: nothing ingested, no run row, one message."""
    db_path = tmp_path / "s.db"
    result = CliRunner().invoke(cli, ["--db", str(db_path), "run", "r/keto", "--offline",
                                      "--memory", "0.2"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, text
    assert "nothing was run; fix first: --memory: r/keto: training would need about" in text
    assert "over the 0.2 GiB budget (--memory)" in text
    assert "What would fit: nothing at this budget" in text  # the runtime alone is over
    db = open_store(db_path)
    assert db.execute("SELECT count(*) FROM pipeline_runs").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM documents").fetchone()[0] == 0


def test_plan_of_the_embedded_model_counts_tokens_with_its_own_tokenizer(tmp_path):
    from cci_local.llm.llama_cpp import embedded_model_path
    from cci_local.train.estimate import model_shape, token_counts

    path = embedded_model_path()
    pairs = [("What do you eat for breakfast?", "Eggs and bacon, every single day.")]
    whole, answers, how = token_counts(pairs, path)
    assert how == "the base's tokenizer and chat template"
    # SmolLM2's template adds its default system prompt: far more than the two texts.
    assert 30 < whole[0] < 80 and 8 <= answers[0] <= 14
    shape = model_shape(path, None)
    assert (shape.layers, shape.hidden, shape.vocab, shape.tied) == (30, 576, 49152, True)
