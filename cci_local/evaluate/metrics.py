"""Survey metrics with 95% bootstrap confidence intervals (docs/method.md#confidence-intervals).

Plain functions over plain arrays, so the survey stage, the fidelity stage and
the report share them:

- ``bootstrap_ci``: a statistic and its percentile interval over resampled items;
- ``accuracy``: share of questions where the chosen option is the key's;
- ``majority_baseline``: always answering the key's most frequent letter;
- ``representativeness``: 1 - Wasserstein-1 distance between two answer
  distributions over ordinal options / the largest possible distance, as in
  OpinionQA (Santurkar et al. 2023), averaged over questions;
- ``cross_matrix``: accuracy of each model (aligned to or impersonating A)
  against each community's key (B); a faithful model wins its own column;
- ``two_sample_ci``: a statistic of two independent samples (a divergence, a
  Frechet distance) with an interval resampling each on its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def bootstrap_ci(values: Sequence[float] | np.ndarray,
                 statistic: Callable[[np.ndarray], float] = np.mean, *,
                 resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """``statistic`` of ``values`` with a percentile bootstrap interval (items resampled
    with replacement).  ``values`` may be 2-D: rows are items, resampled together."""
    data = np.asarray(values, dtype=float)
    n = len(data)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    value = float(statistic(data))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(resamples, n))
    stats = np.array([statistic(data[p]) for p in picks], dtype=float)
    tail = (1 - level) / 2
    return Estimate(value, float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail)),
                    n)


def accuracy(chosen: Sequence[str], key: Sequence[str], **kwargs) -> Estimate:
    if len(chosen) != len(key):
        raise ValueError("one chosen option per key entry")
    hits = np.array([c == k for c, k in zip(chosen, key, strict=True)], dtype=float)
    return bootstrap_ci(hits, **kwargs)


def majority_baseline(key: Sequence[str], **kwargs) -> Estimate:
    """Accuracy of answering every question with the key's most common letter (ties:
    the earliest letter): what a respondent with one favourite letter can score."""
    counts = Counter(key)
    top = max(sorted(counts), key=lambda letter: counts[letter]) if counts else None
    return bootstrap_ci(np.array([float(k == top) for k in key]), **kwargs)


def random_baseline(n_options: Sequence[int]) -> float:
    """Expected accuracy of picking uniformly at random."""
    return float(np.mean([1 / k for k in n_options])) if len(n_options) else float("nan")


def wasserstein_ordinal(p: Sequence[float], q: Sequence[float],
                        values: Sequence[float] | None = None) -> float:
    """Wasserstein-1 distance between two distributions over the same ordered options
    (``values``: their positions; default 0, 1, 2, ...)."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    p, q = p / p.sum(), q / q.sum()
    positions = np.arange(len(p), dtype=float) if values is None else np.asarray(values, float)
    order = np.argsort(positions)
    positions, p, q = positions[order], p[order], q[order]
    gaps = np.diff(positions)
    return float(np.sum(np.abs(np.cumsum(p)[:-1] - np.cumsum(q)[:-1]) * gaps))


def representativeness(model: Sequence[Sequence[float]], human: Sequence[Sequence[float]],
                       values: Sequence[Sequence[float] | None] | None = None,
                       **kwargs) -> Estimate:
    """Mean over questions of 1 - W1(model, human) / (max - min of the option values).
    A question whose ``values`` entry is None has unordered options: W1 under the
    discrete metric, which is the total variation distance (at most 1)."""
    scores = []
    for i, (p, q) in enumerate(zip(model, human, strict=True)):
        if values is not None and values[i] is None:
            p, q = np.asarray(p, float), np.asarray(q, float)
            scores.append(1.0 - 0.5 * float(np.abs(p / p.sum() - q / q.sum()).sum()))
            continue
        v = np.arange(len(p), dtype=float) if values is None else np.asarray(values[i], float)
        spread = v.max() - v.min()
        scores.append(1.0 - wasserstein_ordinal(p, q, v) / spread if spread > 0 else 1.0)
    return bootstrap_ci(np.array(scores), **kwargs)


def simbench_score(model: Sequence[Sequence[float]], human: Sequence[Sequence[float]],
                   **kwargs) -> Estimate:
    """SimBench's score, per question 100 * (1 - TV(model, human) / TV(uniform, human)),
    averaged over questions with an interval: 100 is the community's own
    distribution, 0 no better than answering uniformly at random, below 0 worse.
    A question whose human distribution is itself uniform has no room to score and
    is left out."""
    scores = []
    for p, q in zip(model, human, strict=True):
        p, q = np.asarray(p, float), np.asarray(q, float)
        p, q = p / p.sum(), q / q.sum()
        uniform = 0.5 * float(np.abs(np.full(len(q), 1 / len(q)) - q).sum())
        if uniform > 1e-9:
            scores.append(100.0 * (1 - 0.5 * float(np.abs(p - q).sum()) / uniform))
    return bootstrap_ci(np.array(scores), **kwargs)


def cross_matrix(chosen: dict[str, dict[int, str]], keys: dict[str, dict[int, str]],
                 **kwargs) -> dict[str, dict[str, Estimate]]:
    """rows: model (aligned to / impersonating a community) -> its choices per question;
    columns: community -> its answer key per question.  Each cell is the row model's
    accuracy on the questions both share."""
    out: dict[str, dict[str, Estimate]] = {}
    for row, answers in chosen.items():
        out[row] = {}
        for column, key in keys.items():
            shared = sorted(set(answers) & set(key))
            out[row][column] = accuracy([answers[q] for q in shared], [key[q] for q in shared],
                                        **kwargs)
    return out


def difference_ci(a: Sequence[float], b: Sequence[float], **kwargs) -> Estimate:
    """Paired difference of means (a - b) over the same items, with its interval."""
    pairs = np.column_stack([np.asarray(a, float), np.asarray(b, float)])
    return bootstrap_ci(pairs, lambda d: float(np.mean(d[:, 0] - d[:, 1])), **kwargs)


def two_sample_ci(a: np.ndarray, b: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray],
                                                                      float], *,
                  resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
    """``statistic(a, b)`` of two independent samples (rows are items), with a
    percentile bootstrap interval resampling each sample on its own."""
    a, b = np.asarray(a), np.asarray(b)
    if not len(a) or not len(b):
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    draws = [statistic(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
             for _ in range(resamples)]
    low, high = np.percentile(draws, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return Estimate(float(statistic(a, b)), float(low), float(high), min(len(a), len(b)))
