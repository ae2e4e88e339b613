"""ROUGE-L against hand-computed values (the LCS definition of Lin, 2004)."""

from __future__ import annotations

import pytest

from cci_local.rouge import max_rouge_l, rouge_l, words


def test_identical_and_disjoint():
    assert rouge_l("Keto is a low carb diet", "keto IS a low-carb diet!") == 1.0
    assert rouge_l("bacon and eggs", "oatmeal with berries") == 0.0
    assert rouge_l("", "anything") == 0.0


def test_subsequence_not_substring():
    # LCS of "what do you eat for breakfast on keto" (8 words) and
    # "what do you usually eat for breakfast" (7): what do you eat for breakfast = 6.
    p, r = 6 / 8, 6 / 7
    assert rouge_l("what do you eat for breakfast on keto",
                   "what do you usually eat for breakfast") == pytest.approx(2 * p * r / (p + r))


def test_near_duplicate_threshold_of_the_papers():
    kept = ["How do you deal with keto flu in the first week?",
            "What is your favourite fat source?"]
    assert max_rouge_l("How do you deal with the keto flu in your first week?", kept) >= 0.7
    assert max_rouge_l("Which supplements help you sleep?", kept) < 0.7
    assert max_rouge_l("anything", []) == 0.0
    assert words("Don't-stop 2x!") == ["don", "t", "stop", "2x"]
