"""Does generated text read like the community's own?  (See docs/method.md#authenticity.)

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
    index = {c: i for i, c in enumerate(sorted(real))}
    pairs = np.array([[index[t], index[p]] for t, p in zip(truth, predicted, strict=True)])
    f1 = bootstrap_ci(pairs, lambda r: weighted_f1(r[:, 0], r[:, 1], len(index)),
                      resamples=500, seed=seed) if len(pairs) else \
        Estimate(float("nan"), float("nan"), float("nan"), 0)
    return Identifiability(f1, confusion, held_out)


def weighted_f1(truth: np.ndarray, predicted: np.ndarray, k: int) -> float:
    """Support-weighted F1 over labels 0..k-1 (scikit-learn's ``average="weighted"``,
    ``zero_division=0``), from one bincount: the bootstrap calls it hundreds of times."""
    truth, predicted = np.asarray(truth, dtype=int), np.asarray(predicted, dtype=int)
    cm = np.bincount(truth * k + predicted, minlength=k * k).reshape(k, k)
    tp, support, guessed = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    f1 = np.where(support + guessed > 0, 2 * tp / np.maximum(support + guessed, 1), 0.0)
    return float((f1 * support).sum() / support.sum()) if support.sum() else 0.0


def auc_score(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half; 0.5 when a
    class is missing (a resample can draw one class only)."""
    from scipy.stats import rankdata

    positive = np.asarray(y) == 1
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if not n1 or not n0:
        return 0.5
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two sets of
    embeddings (rows), as FID/FED compute it, without a general matrix square root.

    Tr (S_a S_b)^(1/2) is the sum of the square roots of the eigenvalues of S_a S_b.
    With centred rows X_a, X_b, S_a S_b's nonzero eigenvalues are those of K K^T,
    K = X_a X_b^T / sqrt((n_a - 1)(n_b - 1)), so the trace is K's nuclear norm: an
    SVD of an n_a x n_b matrix.  When the sets are larger than the dimensions, the
    same trace comes from the symmetric S_a^(1/2) S_b S_a^(1/2).  Exact either way,
    and ~50x faster than scipy's sqrtm on 256-dimensional embeddings, which matters
    for the bootstrap's hundreds of resamples."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    xa, xb, mu = a - mean_a, b - mean_b, mean_a - mean_b
    ca, cb = len(a) - 1, len(b) - 1
    if len(a) * len(b) <= a.shape[1] ** 2:
        root = np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / np.sqrt(ca * cb)
    else:
        sa, sb = xa.T @ xa / ca, xb.T @ xb / cb
        w, v = np.linalg.eigh(sa)
        half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        root = np.sqrt(np.clip(np.linalg.eigvalsh(half @ sb @ half), 0, None)).sum()
    return float(mu @ mu + (xa * xa).sum() / ca + (xb * xb).sum() / cb - 2 * root)


def frechet_ci(a: np.ndarray, b: np.ndarray, *, resamples: int = 200,
               seed: int = 0) -> Estimate:
    return two_sample_ci(a, b, frechet_distance, resamples=resamples, seed=seed)


def real_vs_generated_auc(real: Sequence[str], generated: Sequence[str], *, folds: int = 5,
                          seed: int = 0) -> Estimate:
    """Cross-validated AUC of telling ``generated`` from ``real`` (equal numbers are
    drawn from the larger set); the interval resamples the out-of-fold scores."""
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
    return bootstrap_ci(rows, lambda r: auc_score(r[:, 0], r[:, 1]), resamples=500, seed=seed)


