"""The fidelity metrics work before they are trusted: on the shared corpora, real
against real is indistinguishable and close, the embedded model's writing is
told apart and further away, and a planted copy is caught."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CORPUS_POSTS, read_csv_rows

from cci_local.embed import get_embedder
from cci_local.evaluate.authenticity import (
    frechet_distance,
    identifiability,
    real_vs_generated_auc,
    screen,
)
from cci_local.evaluate.emotion import (
    EMOTIONS,
    emotion_distribution,
    emotion_divergence,
    js_divergence,
    sentiment,
    sentiment_divergence,
)
from cci_local.llm import Sampling, chat, get_backend

TOPICS = ["breakfast", "electrolytes", "keto flu", "fasting", "sweeteners", "weight loss",
          "cheat days", "net carbs", "eating out", "bulletproof coffee", "snacks", "ketones",
          "cholesterol", "exercise", "sleep", "cravings", "beer", "fruit", "meal prep", "plateaus"]


def comments(name: str, n: int, seed: int) -> list[str]:
    rows = [r["body"] for r in read_csv_rows(CORPUS_POSTS / name)
            if 15 <= len(r["body"].split()) <= 120]
    pick = np.random.default_rng(seed).choice(len(rows), n, replace=False)
    return [rows[i] for i in pick]


@pytest.fixture(scope="module")
def keto():
    return comments("keto_comments.csv", 200, seed=1)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Comments the embedded base model writes for r/keto (40, sampled, seeded)."""
    from cci_local.store import open_store

    db = open_store(tmp_path_factory.mktemp("gen") / "g.db")
    backend = get_backend("embedded")
    texts = []
    for seed in (0, 1):
        for topic in TOPICS:
            messages = [{"role": "user", "content": "Write a short comment you would post on "
                                                    f"the r/keto subreddit about {topic}."}]
            texts.append(chat(db, backend, messages, sampling=Sampling(
                max_tokens=80, temperature=0.8, seed=seed)).text)
    backend.close()
    return texts


def test_split_half_real_texts_are_indistinguishable(keto):
    auc = real_vs_generated_auc(keto[:100], keto[100:])
    print(f"real vs real (split half) AUC {auc}")
    assert abs(auc.value - 0.5) < 0.12 and auc.low < 0.5 < auc.high


@pytest.mark.slow
def test_the_embedded_model_is_told_apart(keto, generated):
    auc = real_vs_generated_auc(keto, generated)
    print(f"real vs embedded model AUC {auc}")
    assert auc.value > 0.85 and auc.low > 0.7


def test_emotion_and_sentiment_divergence(keto, generated):
    dist = emotion_distribution(keto)
    assert dist.shape == (len(EMOTIONS),) and dist.sum() == pytest.approx(1)
    real_real = emotion_divergence(keto[:100], keto[100:])
    gen_real = emotion_divergence(generated, keto[:100])
    print(f"emotion JSD real/real {real_real:.4f}, generated/real {gen_real:.4f}")
    assert real_real < gen_real
    assert 0 <= sentiment_divergence(keto[:100], keto[100:]) < \
        sentiment_divergence(generated, keto[:100])
    assert js_divergence([1, 0], [1, 0]) == 0 and js_divergence([1, 0], [0, 1]) == \
        pytest.approx(1)
    scores = sentiment(["I love this, it is wonderful!", "This is awful and I hate it."])
    assert scores[0] > 0.5 > -0.5 > scores[1]


def test_screen_catches_copies_duplicates_and_gibberish(keto, generated):
    planted = [generated[0], keto[5], generated[0].upper(), generated[1],
               keto[7][:-5] + " lol", "", generated[2]]
    ppl = [10, 10, 10, 10, 10, 10, 5000]
    out = screen(planted, keto, perplexities=ppl, max_perplexity=1000)
    assert out.kept == [0, 3]
    assert out.dropped == {"empty": [5], "near copy": [1, 4], "duplicate": [2],
                           "gibberish": [6]}
    assert out.copy_scores[1] == pytest.approx(1.0) and out.copy_scores[0] < 0.7
    assert out.counts()["near copy"] == 2


def test_frechet_distance_real_halves_closer_than_generated(keto, generated):
    embed = get_embedder("wordllama").embed
    a, b, g = embed(keto[:100]), embed(keto[100:]), embed(generated)
    same = frechet_distance(a, a)
    assert abs(same) < 1e-6
    halves, gen = frechet_distance(a, b), frechet_distance(g, a)
    print(f"Frechet distance real/real {halves:.4f}, generated/real {gen:.4f}")
    assert halves < gen


def test_identifiability_on_real_held_out_texts(keto):
    nutrition = comments("nutrition_comment.csv", 200, seed=2)
    real = {"keto": keto[:160], "nutrition": nutrition[:160]}
    result = identifiability(real, {"keto posts": keto[160:], "nutrition posts": nutrition[160:]},
                             {"keto posts": "keto", "nutrition posts": "nutrition"})
    print(f"identifiability of held-out real texts: F1 {result.f1}, {result.confusion}")
    assert result.confusion["keto posts"]["keto"] > result.confusion["keto posts"]["nutrition"]
    assert result.f1.value > 0.6 and result.held_out_f1 > 0.6
    assert sum(result.confusion["nutrition posts"].values()) == 40


@pytest.mark.parametrize("n_a, n_b, dims", [(12, 30, 64), (300, 200, 16), (40, 40, 40)])
def test_frechet_distance_equals_the_sqrtm_formula(n_a, n_b, dims):
    """The nuclear-norm / symmetric forms give the textbook value (scipy's sqrtm)."""
    from scipy import linalg

    rng = np.random.default_rng(n_a)
    a = rng.normal(size=(n_a, dims)) @ rng.normal(size=(dims, dims))
    b = rng.normal(0.3, 1.0, size=(n_b, dims)) @ rng.normal(size=(dims, dims))
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu = a.mean(axis=0) - b.mean(axis=0)
    textbook = mu @ mu + np.trace(sa + sb - 2 * np.real(linalg.sqrtm(sa @ sb)))
    assert frechet_distance(a, b) == pytest.approx(textbook, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6 * textbook)


def test_fast_f1_and_auc_equal_scikit_learn():
    from sklearn.metrics import f1_score, roc_auc_score

    from cci_local.evaluate.authenticity import auc_score, weighted_f1

    rng = np.random.default_rng(7)
    for k, n in ((2, 12), (3, 40), (4, 7)):
        truth, predicted = rng.integers(0, k, n), rng.integers(0, k, n)
        truth[:3] = 0  # a label can be missing from either side
        assert weighted_f1(truth, predicted, k) == pytest.approx(f1_score(
            truth, predicted, labels=list(range(k)), average="weighted", zero_division=0))
    y = np.array([0] * 10 + [1] * 10)
    scores = np.round(rng.random(20), 1)  # ties
    assert auc_score(y, scores) == pytest.approx(roc_auc_score(y, scores))
    assert auc_score(np.ones(5), scores[:5]) == 0.5


def test_fidelity_answers_from_a_server_respondent_in_parallel(db, scripted):
    """--parallel: a server respondent writes several answers at once; each lands under
    its own index with its own seed, and a re-run asks nothing."""
    import time as _time

    from cci_local.evaluate.fidelity import FidelityOptions, _generate

    db.execute("INSERT INTO fidelity_runs (key, community, base, settings, created_at)"
               " VALUES ('k', 'keto', 'embedded', '{}', ?)", [_time.time()])
    run_id = db.execute("SELECT id FROM fidelity_runs").fetchone()[0]
    instructions = [(None, f"Question {i}?") for i in range(3)]
    backend = scripted(lambda n, messages, schema: "about " + messages[-1]["content"],
                       concurrent=True, delay=0.05)
    options = FidelityOptions(samples=9)
    rows = _generate(db, run_id, "aligned:keto", backend, instructions, None, options, None,
                     parallel=4)
    assert backend.max_active > 1
    assert [r["idx"] for r in rows] == list(range(9))
    assert [r["text"] for r in rows] == [f"about Question {k % 3}?" for k in range(9)]
    assert len(backend.requests) == 9  # one call per index: the seeds differ
    again = _generate(db, run_id, "aligned:keto", backend, instructions, None, options, None,
                      parallel=4)
    assert again == rows and len(backend.requests) == 9
