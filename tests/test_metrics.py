"""Survey metrics: hand-computed cases, and intervals that cover what they should."""

from __future__ import annotations

import numpy as np
import pytest

from cci_local.evaluate.metrics import (
    accuracy,
    bootstrap_ci,
    cross_matrix,
    difference_ci,
    majority_baseline,
    random_baseline,
    representativeness,
    wasserstein_ordinal,
)


def test_accuracy_and_its_interval():
    est = accuracy(list("ABCDABCDAB"), list("ABCDABCDCD"))
    assert est.value == pytest.approx(0.8) and est.n == 10
    assert est.low < 0.8 < est.high and 0.4 <= est.low and est.high <= 1.0
    perfect = accuracy(list("AAAA"), list("AAAA"))
    assert (perfect.value, perfect.low, perfect.high) == (1.0, 1.0, 1.0)


def test_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    covered = 0
    for trial in range(200):
        sample = rng.random(60) < 0.3  # true accuracy 0.3
        est = bootstrap_ci(sample.astype(float), resamples=500, seed=trial)
        covered += est.low <= 0.3 <= est.high
    assert 0.88 <= covered / 200 <= 0.99


def test_baselines():
    assert majority_baseline(list("AAABCD")).value == pytest.approx(0.5)
    assert majority_baseline(list("BBAA")).value == pytest.approx(0.5)  # tie: earliest letter
    assert random_baseline([4, 4, 2]) == pytest.approx((0.25 + 0.25 + 0.5) / 3)


def test_wasserstein_and_representativeness_by_hand():
    # All mass on the first vs the last of 4 ordered options: distance 3, the maximum.
    assert wasserstein_ordinal([1, 0, 0, 0], [0, 0, 0, 1]) == pytest.approx(3)
    assert wasserstein_ordinal([0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0]) == pytest.approx(1)
    assert wasserstein_ordinal([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == pytest.approx(0)
    # Unequal spacing: option values 0, 1, 10.
    assert wasserstein_ordinal([1, 0, 0], [0, 0, 1], [0, 1, 10]) == pytest.approx(10)
    rep = representativeness([[1, 0, 0, 0], [0.5, 0.5, 0, 0]], [[0, 0, 0, 1], [0, 0.5, 0.5, 0]])
    assert rep.value == pytest.approx(((1 - 3 / 3) + (1 - 1 / 3)) / 2)
    # Unordered options (values None): the discrete metric, W1 = total variation.
    # first vs last is then distance 1 (not 3/3 by position), 0.5/0.5 vs 0/0.5/0.5: 0.5.
    mixed = representativeness([[1, 0, 0, 0], [0.5, 0.5, 0]], [[0, 0, 0, 1], [0, 0.5, 0.5]],
                               [None, [0, 1, 2]])
    assert mixed.value == pytest.approx(((1 - 1) + (1 - 1 / 2)) / 2)
    nominal = representativeness([[0.5, 0.5, 0]], [[0, 0.5, 0.5]], [None])
    assert nominal.value == pytest.approx(1 - 0.5)


def test_cross_matrix_and_paired_difference():
    keys = {"keto": {1: "A", 2: "B", 3: "C"}, "nutrition": {1: "D", 2: "B", 3: "A"}}
    chosen = {"aligned:keto": {1: "A", 2: "B", 3: "C"},
              "aligned:nutrition": {1: "D", 2: "C", 3: "A"}}
    m = cross_matrix(chosen, keys)
    assert m["aligned:keto"]["keto"].value == 1.0
    assert m["aligned:keto"]["nutrition"].value == pytest.approx(1 / 3)
    assert m["aligned:nutrition"]["nutrition"].value == pytest.approx(2 / 3)
    diff = difference_ci([1, 1, 0, 1], [0, 1, 0, 0])
    assert diff.value == pytest.approx(0.5) and diff.low <= 0.5 <= diff.high
