"""Does generated text read like the community's own?  (DESIGN 2.2, authenticity.)

- ``screen``: the paper's filter before scoring: near-copies of real texts
  (max ROUGE-L >= 0.7), exact duplicates, and gibberish (perplexity over a cap);
- ``identifiability``: a community classifier trained on real texts of every
  selected community labels each generated text (weighted F1 against the
  community the model speaks for, and the confusion matrix);
- ``frechet_distance``: between the embedding distributions of two text sets;
- ``real_vs_generated_auc``: cross-validated AUC of a classifier told to separate
  real from generated texts: 0.5 when it cannot, 1.0 when it always can.

Plain functions over lists of texts and vectors; the classifiers are TF-IDF
(words and character n-grams) with logistic regression from scikit-learn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..rouge import words
from .metrics import Estimate, bootstrap_ci, two_sample_ci

COPY_ROUGE = 0.7


@dataclass
class Screened:
    kept: list[int]  # indices of the texts that pass
    dropped: dict[str, list[int]] = field(default_factory=dict)  # reason -> indices
    copy_scores: list[float] = field(default_factory=list)  # max ROUGE-L per text

    def counts(self) -> dict[str, int]:
        return {reason: len(ix) for reason, ix in self.dropped.items()}


def _normal(text: str) -> str:
    return " ".join(words(text))


def screen(generated: Sequence[str], real: Sequence[str], *,
           perplexities: Sequence[float] | None = None, max_perplexity: float | None = None,
           copy_threshold: float = COPY_ROUGE) -> Screened:
    """Indices of the generated texts to score, and of those dropped, by reason:
    'empty', 'near copy' (ROUGE-L >= ``copy_threshold`` against any real text),
    'duplicate' (the same words as an earlier kept text) and 'gibberish'
    (``perplexities[i] > max_perplexity``)."""
    from rapidfuzz.distance import LCSseq

    real_words = [words(t) for t in real]
    out = Screened([], {"empty": [], "near copy": [], "duplicate": [], "gibberish": []})
    seen: set[str] = set()
    for i, text in enumerate(generated):
        tokens = words(text)
        best = 0.0
        for ref in real_words:
            if tokens and ref:
                # ROUGE-L F1 bounded above by 2 min / (len + len): skip hopeless pairs
                if 2 * min(len(tokens), len(ref)) / (len(tokens) + len(ref)) < max(
                        best, copy_threshold):
                    continue
                lcs = LCSseq.similarity(tokens, ref)
                if lcs:
                    p, r = lcs / len(tokens), lcs / len(ref)
                    best = max(best, 2 * p * r / (p + r))
        out.copy_scores.append(best)
        key = _normal(text)
        if not tokens:
            out.dropped["empty"].append(i)
        elif best >= copy_threshold:
            out.dropped["near copy"].append(i)
        elif key in seen:
            out.dropped["duplicate"].append(i)
        elif perplexities is not None and max_perplexity is not None and \
                perplexities[i] > max_perplexity:
            out.dropped["gibberish"].append(i)
        else:
            seen.add(key)
            out.kept.append(i)
    return out


def _vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion([
        ("words", TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2),
                                  max_features=50_000)),
        ("chars", TfidfVectorizer(sublinear_tf=True, min_df=2, analyzer="char_wb",
                                  ngram_range=(3, 5), max_features=50_000)),
    ])


def _classifier():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(_vectorizer(), LogisticRegression(max_iter=2000, C=4.0))


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@dataclass
class Identifiability:
    f1: Estimate  # weighted F1 of the predicted community against the target one
    confusion: dict[str, dict[str, int]]  # generating model -> predicted community -> count
    held_out_f1: float  # the classifier's weighted F1 on held-out real texts (its ceiling)


def identifiability(real: dict[str, Sequence[str]], generated: dict[str, Sequence[str]],
                    target: dict[str, str], *, seed: int = 0) -> Identifiability:
    """Train a community classifier on ``real`` (community -> texts), then label
    ``generated`` (model -> texts); ``target``: model -> the community it speaks for."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split

    texts = [_clean(t) for c in real for t in real[c]]
    labels = [c for c in real for _ in real[c]]
    train_x, test_x, train_y, test_y = train_test_split(
        texts, labels, test_size=0.2, random_state=seed, stratify=labels)
    model = _classifier().fit(train_x, train_y)
    held_out = float(f1_score(test_y, model.predict(test_x), average="weighted"))
    model = _classifier().fit(texts, labels)
    confusion, truth, predicted = {}, [], []
    for name, texts_ in generated.items():
        guess = list(model.predict([_clean(t) for t in texts_])) if len(texts_) else []
        confusion[name] = {c: guess.count(c) for c in real}
        truth += [target[name]] * len(guess)
        predicted += guess
    pairs = np.array(list(zip(truth, predicted, strict=True)), dtype=object)
    labels_ = sorted(real)

    def weighted_f1(rows: np.ndarray) -> float:
        return float(f1_score(list(rows[:, 0]), list(rows[:, 1]), labels=labels_,
                              average="weighted", zero_division=0))

    f1 = bootstrap_ci(np.arange(len(pairs)), lambda ix: weighted_f1(pairs[ix.astype(int)]),
                      resamples=500, seed=seed) if len(pairs) else \
        Estimate(float("nan"), float("nan"), float("nan"), 0)
    return Identifiability(f1, confusion, held_out)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two sets of
    embeddings (rows), as FID/FED compute it."""
    from scipy import linalg

    mu = a.mean(axis=0) - b.mean(axis=0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.real(linalg.sqrtm(sa @ sb))  # n < dimensions: tiny imaginary parts
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * np.trace(root))


def frechet_ci(a: np.ndarray, b: np.ndarray, *, resamples: int = 200,
               seed: int = 0) -> Estimate:
    return two_sample_ci(a, b, frechet_distance, resamples=resamples, seed=seed)


def real_vs_generated_auc(real: Sequence[str], generated: Sequence[str], *, folds: int = 5,
                          seed: int = 0) -> Estimate:
    """Cross-validated AUC of telling ``generated`` from ``real`` (equal numbers are
    drawn from the larger set); the interval resamples the out-of-fold scores."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(seed)
    n = min(len(real), len(generated))
    if n < folds:
        raise ValueError(f"need at least {folds} texts on each side, have {n}")
    pick_real = rng.choice(len(real), n, replace=False)
    pick_gen = rng.choice(len(generated), n, replace=False)
    texts = [_clean(real[i]) for i in pick_real] + [_clean(generated[i]) for i in pick_gen]
    y = np.array([0] * n + [1] * n)
    scores = cross_val_predict(_classifier(), texts, y, method="predict_proba",
                               cv=StratifiedKFold(folds, shuffle=True, random_state=seed))[:, 1]
    rows = np.column_stack([y, scores])

    def auc(r: np.ndarray) -> float:
        return float(roc_auc_score(r[:, 0], r[:, 1])) if len(set(r[:, 0])) == 2 else 0.5

    return bootstrap_ci(rows, auc, resamples=500, seed=seed)


