"""Toxicity and harm scorers: Detoxify from a local checkpoint, and the LLM judge on
the real embedded model (with and without option log-probabilities)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CLEAN, TOXIC
from test_survey import WithoutLogprobs

from cci_local.evaluate.judges import (
    HARM_RUBRIC,
    RATINGS,
    TOXICITY_RUBRIC,
    DetoxifyScorer,
    LLMJudge,
)
from cci_local.llm import option_logprobs
from cci_local.llm.llama_cpp import LlamaCppBackend, embedded_model_path

TEXTS = ["I had eggs and bacon for breakfast and stayed under 20 g of carbs.",
         "You are a stupid worthless idiot and everyone here hates you.",
         "Stop eating for a week and hide it from your parents. Skinny is worth it."]


def test_detoxify_scores_toxicity_from_a_local_checkpoint(detoxify_checkpoint, db):
    checkpoint, config = detoxify_checkpoint
    scorer = DetoxifyScorer(db, checkpoint, config, batch_size=3)
    assert scorer.name.startswith("Detoxify tiny.ckpt (")
    # Unseen sentences built from the words it learned: insults score high, the rest low.
    toxic = scorer.judge(db, ["shut up you pathetic moron", "you stupid loser"])
    clean = scorer.judge(db, ["thanks for the advice about breakfast",
                              "keto helped me lose pounds"])
    print("toxic", [round(j.score, 3) for j in toxic], "clean", [round(j.score, 3) for j in clean])
    assert min(j.score for j in toxic) > 0.8
    assert max(j.score for j in clean) < 0.2
    # Batched scores equal one-at-a-time scores (padding does not leak into the result).
    one = [scorer.judge(db, [t])[0].score for t in TOXIC + CLEAN]
    batched = [j.score for j in scorer.judge(db, TOXIC + CLEAN)]
    assert batched == pytest.approx(one, abs=1e-5)


def test_detoxify_errors_name_the_file(tmp_path, db):
    with pytest.raises(ValueError, match="no such Detoxify checkpoint"):
        DetoxifyScorer(db, tmp_path / "missing.ckpt")
    bad = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ValueError, match=f"{bad}: not a Detoxify checkpoint"):
        DetoxifyScorer(db, bad)


def test_llm_judge_score_is_the_expected_rating(db):
    backend = LlamaCppBackend(embedded_model_path(), n_ctx=2048)
    judge = LLMJudge(backend, HARM_RUBRIC, criterion="harm", reasons=True)
    assert judge.name.endswith("fixed rubric")
    found = judge.judge(db, TEXTS)
    for text, j in zip(TEXTS, found, strict=True):
        logprobs = option_logprobs(db, backend, judge._messages(text), RATINGS)
        p = np.exp([logprobs[r] for r in RATINGS])
        assert j.score == pytest.approx(float(p @ np.arange(5)) / p.sum() / 4)
        assert 0 <= j.score <= 1 and j.reason and j.call_id
        print(f"{j.score:.3f} {text[:40]!r}: {j.reason}")
    calls = db.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    assert calls == 2 * len(TEXTS)  # a forward pass and a reason per text
    again = judge.judge(db, TEXTS)
    assert db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == calls
    assert [j.score for j in again] == [j.score for j in found]
    # Another rubric is another judge: its own name and its own calls.
    other = LLMJudge(backend, "Spam: adverts and links. 0 = none ... 4 = pure spam.",
                     criterion="harm")
    assert "rubric " in other.name and "fixed" not in other.name
    other.judge(db, TEXTS[:1])
    assert db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == calls + 1
    judge.close()


def test_llm_judge_without_logprobs_rates_by_schema(db):
    backend = WithoutLogprobs(embedded_model_path(), spec="no-logprobs", n_ctx=2048)
    judge = LLMJudge(backend, TOXICITY_RUBRIC, criterion="toxicity", reasons=True)
    for j in judge.judge(db, TEXTS[:2]):
        assert j.score in (0, 0.25, 0.5, 0.75, 1) and isinstance(j.reason, str)
    judge.close()
