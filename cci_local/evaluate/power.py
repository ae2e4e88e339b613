"""Power before the work: how big a paired difference in survey accuracy a number of
held-out questions can show (docs/method.md#power).

Two respondents answer the same n questions; their difference in accuracy is shown
when its 95% interval excludes 0 (evaluate/verdict.py).  Only the questions where
exactly one of them is right (the discordant share p_d) carry the difference, as in
McNemar's test.  Connor's sample size for a paired difference delta (Connor 1987,
"Sample size for testing differences in proportions for the paired-sample design",
Biometrics 43:207-211):

    n = (z_{1-alpha/2} sqrt(p_d) + z_{power} sqrt(p_d - delta^2))^2 / delta^2

questions_needed() is that n; min_detectable_difference() solves it for delta.
tests/test_power.py checks it against simulated verdicts.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

ASSUMED_DISCORDANCE = 0.5  # before any answer: half the questions split the two


def _z(level: float, power: float) -> tuple[float, float]:
    return float(norm.ppf(1 - (1 - level) / 2)), float(norm.ppf(power))


def questions_needed(difference: float, discordance: float = ASSUMED_DISCORDANCE, *,
                     power: float = 0.8, level: float = 0.95) -> int:
    """Questions that show a paired accuracy difference of ``difference`` with
    ``power`` at confidence ``level``, for a discordant share ``discordance``."""
    d = abs(difference)
    if not 0 < d <= discordance <= 1:
        raise ValueError("need 0 < difference <= discordance <= 1")
    za, zb = _z(level, power)
    return math.ceil((za * math.sqrt(discordance) +
                      zb * math.sqrt(discordance - d * d)) ** 2 / (d * d))


def min_detectable_difference(n: int, discordance: float = ASSUMED_DISCORDANCE, *,
                              power: float = 0.8, level: float = 0.95) -> float:
    """The smallest paired accuracy difference ``n`` questions show with ``power``
    (Connor's n solved for the difference; at most the discordant share)."""
    if n < 1:
        raise ValueError("need at least one question")
    za, zb = _z(level, power)
    low, high = 1e-6, discordance
    if (za * math.sqrt(discordance)) ** 2 / discordance ** 2 > n:
        return discordance  # not even the largest possible difference
    for _ in range(60):  # n falls as the difference grows: bisect
        mid = (low + high) / 2
        needed = (za * math.sqrt(discordance) + zb * math.sqrt(max(0.0, discordance - mid * mid))
                  ) ** 2 / (mid * mid)
        low, high = (mid, high) if needed > n else (low, mid)
    return high


def discordance(a_hits, b_hits) -> float:
    """The share of questions where exactly one of two respondents is right."""
    a, b = np.asarray(a_hits, bool), np.asarray(b_hits, bool)
    return float(np.mean(a != b)) if len(a) else ASSUMED_DISCORDANCE
