"""ROUGE-L (longest common subsequence of words), as the papers use it to drop
near-duplicate questions (generation) and near-copies of real posts (fidelity).

The LCS is computed by rapidfuzz (C++), so comparing one text against thousands
stays fast."""

from __future__ import annotations

import re
from collections.abc import Iterable

from rapidfuzz.distance import LCSseq

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-case alphanumeric tokens, as rouge-score's default tokenizer makes them."""
    return _WORD.findall(text.lower())


def rouge_l(candidate: str | list[str], reference: str | list[str]) -> float:
    """ROUGE-L F1 between two texts (or token lists): 0 (nothing shared) to 1."""
    a = words(candidate) if isinstance(candidate, str) else candidate
    b = words(reference) if isinstance(reference, str) else reference
    if not a or not b:
        return 0.0
    lcs = LCSseq.similarity(a, b)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def max_rouge_l(candidate: str, references: Iterable[str | list[str]]) -> float:
    """The highest ROUGE-L F1 of ``candidate`` against any of ``references``."""
    tokens = words(candidate)
    return max((rouge_l(tokens, r) for r in references), default=0.0)
