"""The trainer's privacy mitigations (docs/method.md#mitigations): duplicate answers
removed (train/dedup.py), template pairs kept to a number of epochs
(peft_trainer.example_stream), and differentially private LoRA (train/dp.py).

The dedup, epoch-cap and settings tests are fast; one slow test trains a DP
adapter of a few steps and checks it in llama.cpp: it loads, moves the next-token
log-probabilities, and its loss on held-out posts is not far above the base's.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import CORPUS_2022, cci

from cci_local.generate import template_pairs
from cci_local.ingest import ingest
from cci_local.store import open_store
from cci_local.train.dedup import dedup, jaccard, shingles, signatures
from cci_local.train.peft_trainer import TrainConfig, example_order, example_stream

CANARY = ("the violet lighthouse keeper Quimby Ostrander counts 4817 brass marbles every "
          "Tuesday at dawn before feeding his seven grey herons")


def _words(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(n)]


def _synthetic(n: int, copies: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """``n`` random texts of 40-120 words and ``copies`` near copies of some of them (one
    word changed), appended; returns the texts and the indices of the copies."""
    rng = np.random.default_rng(seed)
    vocab = np.array(_words(5000, seed))
    texts = [" ".join(rng.choice(vocab, rng.integers(40, 120))) for _ in range(n)]
    for k in range(copies):
        words = texts[k * (n // copies)].split()
        words[len(words) // 2] = "xyzzy"
        texts.append(" ".join(words))
    return texts, list(range(n, n + copies))


def test_exact_dedup_ignores_case_and_spacing_and_keeps_the_first():
    texts = ["Keto day 3", "keto  DAY 3\n", "keto day 4", "Keto day 3 "]
    result = dedup(texts, "exact")
    assert result.keep == [0, 2] and result.exact == 2 and result.near == 0
    assert dedup(texts, "none").keep == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="none, exact, near"):
        dedup(texts, "fuzzy")


def test_near_dedup_at_the_threshold():
    changed = CANARY.replace("4817", "4818")  # 5 of 131 5-grams differ
    assert 0.9 < jaccard(shingles(CANARY), shingles(changed)) < 0.95
    # a sentence rewritten: 0.7 < Jaccard < 0.8, kept; a few words: >= 0.8, removed
    below = CANARY.replace("brass marbles every Tuesday", "copper coins each Monday")
    above = CANARY.replace("grey herons", "gray herons")
    j_below = jaccard(shingles(CANARY), shingles(below))
    j_above = jaccard(shingles(CANARY), shingles(above))
    assert 0.6 < j_below < 0.8 <= j_above, (j_below, j_above)
    result = dedup([CANARY, below, changed, above], "near")
    assert result.keep == [0, 1] and result.near == 2
    assert dedup([CANARY, changed], "exact").keep == [0, 1]
    # the signatures agree with the sets they estimate (128 values: +-0.1 is 3 sigma)
    sigs = signatures([CANARY, below, above])
    assert abs((sigs[0] == sigs[1]).mean() - j_below) < 0.12
    assert abs((sigs[0] == sigs[2]).mean() - j_above) < 0.12


def test_near_dedup_on_real_posts_removes_reposts_only():
    db = open_store(":memory:")
    ingest(db, [str(CORPUS_2022)])
    template_pairs(db)
    answers = [a for (a,) in db.execute(
        "SELECT a.answer FROM instructions i JOIN community_answers a ON a.instruction_id ="
        " i.id WHERE a.community = 'keto' AND i.split = 'train' ORDER BY i.id")]
    result = dedup(answers, "near")
    kept = set(result.keep)
    assert 1 <= result.near <= 20 and len(answers) > 900  # a few edited reposts
    for j in set(range(len(answers))) - kept:  # each has an earlier kept twin at >= 0.8
        assert max(jaccard(shingles(answers[j]), shingles(answers[i]))
                   for i in result.keep if i < j) >= 0.8


def test_near_dedup_finds_every_copy_among_20k_texts_in_seconds():
    texts, copies = _synthetic(20_000, 1_000)
    start = time.perf_counter()
    result = dedup(texts, "near")
    seconds = time.perf_counter() - start
    print(f"dedup near: {len(texts):,} texts in {seconds:.2f} s")
    assert set(copies).isdisjoint(result.keep)  # every near copy found
    assert result.removed == len(copies)  # and nothing else: random texts are distinct
    assert seconds < 30  # ~1-3 s on 2 cores


def test_template_epochs_keep_template_pairs_out_of_later_epochs():
    capped = np.array([True] * 6 + [False] * 4)  # 6 template pairs, 4 others
    stream = example_stream(10, 0, 0, 10 + 4 * 3, capped, cap=1)
    assert sorted(stream[:10]) == list(range(10))  # epoch 0: everything
    assert stream[:10] == example_order(10, 0, 0, 10)  # as without a cap
    assert all(not capped[i] for i in stream[10:])  # then the other pairs only
    assert sorted(stream[10:14]) == [6, 7, 8, 9]
    assert example_stream(10, 0, 5, 7, capped, cap=None) == example_order(10, 0, 5, 7)
    only_templates = np.ones(10, bool)
    assert len(example_stream(10, 0, 16, 8, only_templates, cap=2)) == 4  # the stream ends
    assert example_stream(10, 0, 20, 8, only_templates, cap=2) == []

    config = TrainConfig(epochs=3, batch_size=4, template_epochs=1)
    assert config.total_steps(10) == 8  # nothing capped: ceil(3 * 10 / 4)
    assert config.total_steps(10, 6) == 5  # 10 + 4 + 4 examples
    assert config.total_steps(10, 10) == 3  # one epoch of 10, then the end
    assert TrainConfig(epochs=2.5, batch_size=4, template_epochs=1).total_steps(10, 6) == 4
    assert TrainConfig(steps=16, batch_size=8, template_epochs=1).total_steps(32, 32) == 4
    assert TrainConfig(steps=16, batch_size=8, template_epochs=1).total_steps(32, 16) == 16
    assert TrainConfig(epochs=3, batch_size=4, template_epochs=3).total_steps(10, 6) == 8


def _fake_training(monkeypatch, tmp_path):
    """train() with every model step replaced: its choice of rows and its settings are
    real, nothing is loaded or trained."""
    import cci_local.train as train_module
    from cci_local.train import Base

    class Model:
        config = type("Config", (), {"max_position_embeddings": 2048})()

    tokenizer = type("Tokenizer", (), {"pad_token_id": 0, "eos_token_id": 0})()
    seen = {}

    def fake_train_lora(model, examples, config, out, **kw):
        seen["capped"] = kw.get("capped")
        return {"state": {}, "steps": 1, "final_loss": 1.0}

    monkeypatch.setattr(train_module, "resolve_base", lambda name: Base(name, None, tmp_path))
    monkeypatch.setattr(train_module, "base_identity", lambda db, base: "fake")
    monkeypatch.setattr(train_module, "plan_pairs", lambda pairs, resolved, config, **kw: (
        type("Plan", (), {"fits": True})(), config))
    monkeypatch.setattr(train_module, "load_base", lambda base, config: (Model(), tokenizer))
    monkeypatch.setattr(train_module, "encode", lambda tok, pairs, max_len, skipped=None: [
        ([1, 2], [1, 2]) for _ in pairs])
    monkeypatch.setattr(train_module, "add_lora", lambda model, config: model)
    monkeypatch.setattr(train_module, "train_lora", fake_train_lora)
    monkeypatch.setattr(train_module, "export", lambda *a: {"gguf": tmp_path / "a.gguf"})
    return seen


def test_dedup_settings_round_trip_to_the_audit(tmp_path, monkeypatch):
    from cci_local.evaluate.audit import AuditError, training_texts
    from cci_local.train import train

    seen = _fake_training(monkeypatch, tmp_path)
    db = open_store(tmp_path / "s.db")
    ingest(db, [str(CORPUS_2022)])
    template_pairs(db)
    ids = [i for (i,) in db.execute(
        "SELECT i.id FROM instructions i JOIN community_answers a ON a.instruction_id = i.id"
        " WHERE a.community = 'keto' AND i.kind = 'template' AND i.split = 'train'"
        " ORDER BY i.id")]
    with db.conn:  # 8 copies of one answer, one of them changed a little
        db.conn.executemany("UPDATE community_answers SET answer = ? WHERE instruction_id = ?"
                            " AND community = 'keto'", [(CANARY, i) for i in ids[:7]]
                            + [(CANARY.replace("4817", "4818"), ids[7])])
    row = train(db, "keto", "embedded", TrainConfig(template_epochs=1), kinds=("template",),
                max_examples=64)
    settings = json.loads(row["settings"])
    assert settings["dedup"] == "near" and settings["template_epochs"] == 1
    assert settings["dedup_removed"]["exact"] == 6 and settings["dedup_removed"]["near"] >= 1
    assert row["examples"] == 64 and seen["capped"] == [True] * 64
    rows = training_texts(db, row)  # rebuilt with the setting: the hash check passes
    assert sum(r["answer"] == CANARY for r in rows) <= 1
    assert len(rows) == 64 and not {r["id"] for r in rows} & set(ids[1:7])

    # without the setting (an adapter from before dedup) the rows are the undeduplicated
    # ones: here they differ, and the audit says so instead of auditing the wrong texts
    old = row | {"settings": json.dumps({k: v for k, v in settings.items() if k != "dedup"})}
    with pytest.raises(AuditError, match="no longer the ones"):
        training_texts(db, old)
    none = train(db, "keto", "embedded", TrainConfig(dedup="none"), kinds=("template",),
                 max_examples=64)
    assert json.loads(none["settings"])["dedup_removed"] == {"exact": 0, "near": 0}
    assert training_texts(db, none | {"settings": json.dumps({"kinds": ["template"]})})


def test_mitigation_options_are_checked_before_any_work(tmp_path):
    db_path = tmp_path / "m.db"
    db = open_store(db_path)
    ingest(db, [str(CORPUS_2022)])
    template_pairs(db)
    db.conn.close()
    cases = [(("--template-epochs", "1"), "add --kind template"),
             (("--kind", "template", "--template-epochs", "1", "--dp-epsilon", "4"),
              "--template-epochs cannot be combined with --dp-epsilon"),
             (("--kind", "template", "--dp-epsilon", "4", "--grad-checkpoint"),
              "use --no-grad-checkpoint"),
             (("--kind", "template", "--dp-epsilon", "4", "--trainer", "mlx"),
              "for the peft trainer"),
             (("--kind", "template", "--dp-delta", "1e-5"), "--dp-delta goes with"),
             (("--kind", "template", "--dedup", "fuzzy"), "'fuzzy' is not one of")]
    for args, message in cases:
        result = cci("train", "keto", *args, db=db_path, check=False)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    assert open_store(db_path).execute("SELECT count(*) FROM adapters").fetchone()[0] == 0


@pytest.mark.slow
def test_dp_adapter_loads_in_llama_cpp_and_is_not_degenerate(tmp_path):
    """DP-SGD at epsilon 8 on 32 keto posts, 8 steps: the adapter moves the model, and
    its mean log-likelihood per token on held-out posts is within 0.1 nat of the base's
    (the noise of a working run nudges it; a broken one, e.g. opacus#820's, is off by
    nats), and the settings carry the accounting."""
    from cci_local.llm.llama_cpp import LlamaCppBackend, embedded_model_path

    db_path = tmp_path / "dp.db"
    db = open_store(db_path)
    ingest(db, [str(CORPUS_2022)])
    template_pairs(db)
    db.conn.close()
    result = cci("train", "keto", "--kind", "template", "--max-examples", "32", "--steps", "8",
                 "--lr", "2e-3", "--batch-size", "8", "--micro-batch", "4", "--max-len", "96",
                 "--rank", "8", "--alpha", "16", "--dp-epsilon", "8", db=db_path)
    assert "differential privacy: epsilon 8.00" in result.stdout, result.stdout
    db = open_store(db_path)
    gguf, settings = db.execute("SELECT gguf, settings FROM adapters").fetchone()
    dp = json.loads(settings)["dp"]
    assert dp["sample_rate"] == 0.25 and dp["delta"] == pytest.approx(1 / 320)
    assert 0.3 < dp["noise_multiplier"] < 2 and dp["epsilon_spent"] <= 8.01

    base = LlamaCppBackend(embedded_model_path(), n_ctx=2048)
    adapted = LlamaCppBackend(embedded_model_path(), n_ctx=2048, lora_path=gguf)
    messages = [{"role": "user", "content": "What would you post on r/keto?"}]
    assert np.abs(adapted.last_logits(messages) - base.last_logits(messages)).max() > 1e-2
    held_out = db.execute(
        "SELECT i.question, a.answer FROM instructions i JOIN community_answers a"
        " ON a.instruction_id = i.id WHERE a.community = 'keto' AND i.split = 'test'"
        " ORDER BY i.id LIMIT 12").fetchall()
    scores = {"base": [0.0, 0], "adapted": [0.0, 0]}
    for question, answer in held_out:
        answer = " ".join(answer.split()[:40])
        for name, backend in (("base", base), ("adapted", adapted)):
            logprob, n = backend.answer_logprob([{"role": "user", "content": question}],
                                                answer)
            scores[name][0] += logprob
            scores[name][1] += n
    per_token = {k: s / n for k, (s, n) in scores.items()}
    print(f"held-out keto posts, mean log-likelihood per token: {per_token}")
    assert per_token["adapted"] > per_token["base"] - 0.1
