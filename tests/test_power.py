"""The power of the survey's paired comparisons (evaluate/power.py), against simulated
verdicts: answers with a known difference, judged as the verdict judges them."""

from __future__ import annotations

import numpy as np
import pytest

from cci_local.evaluate.metrics import difference_ci
from cci_local.evaluate.power import discordance, min_detectable_difference, questions_needed


def test_the_formula_and_its_inverse_agree():
    # (1.960 sqrt(0.5) + 0.842 sqrt(0.49))^2 / 0.01 = 390.1: Connor's n, rounded up
    assert questions_needed(0.10, 0.5) == 391
    for n in (20, 46, 120, 400):
        d = min_detectable_difference(n, 0.5)
        assert questions_needed(d, 0.5) in (n, n + 1)
    # the release's 20-46 held-out questions: only differences of ~0.3-0.4 can be shown
    assert 0.27 < min_detectable_difference(46) < 0.30
    assert 0.40 < min_detectable_difference(20) < 0.43
    assert discordance([1, 1, 0, 0], [1, 0, 1, 0]) == 0.5
    with pytest.raises(ValueError):
        questions_needed(0.6, 0.5)


@pytest.mark.parametrize("n, p_d", [(60, 0.4), (150, 0.6)])
def test_the_stated_power_is_what_simulated_verdicts_show(n, p_d):
    delta = min_detectable_difference(n, p_d)
    rng = np.random.default_rng(n)
    shown, trials = 0, 400
    for t in range(trials):
        split = rng.random(n) < p_d  # exactly one of the two is right
        a_wins = rng.random(n) < (p_d + delta) / (2 * p_d)
        both = rng.random(n) < 0.5  # the concordant: both right or both wrong
        a = np.where(split, a_wins, both).astype(float)
        b = np.where(split, ~a_wins, both).astype(float)
        diff = difference_ci(a, b, resamples=1000, seed=t)
        shown += diff.low > 0 or diff.high < 0
    assert abs(shown / trials - 0.8) < 0.07, shown / trials
