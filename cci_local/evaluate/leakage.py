"""Near-verbatim leakage in free generation: the longest stretch of a model's answer
that also stands, word for word, in one of the community's stored documents.

An index of hashed word n-grams (numpy, sorted) over every document answers each
query with binary searches: building it is linear in the corpus, a query costs
O(words x log(n-grams)), so an audit stays seconds long at 100k documents where a
scan of every document per answer would not.  Words are lower-cased runs of letters
and digits, so case, punctuation and spacing do not hide a copy; the shared span is
then measured in characters of the answer, from its first word to its last.  Spans
shorter than ``n`` words cannot be seen (n=8 by default: ~40 characters)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"[^\W_]+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: a rolling hash over word hashes, mod 2^64


def _word_hashes(words: list[str]) -> np.ndarray:
    return np.fromiter((hash(w) for w in words), dtype=np.int64, count=len(words)).view(np.uint64)


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """The hash of each window of ``n`` consecutive word hashes (len(ids) - n + 1)."""
    if len(ids) < n:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        out = ids[: len(ids) - n + 1].copy()
        for k in range(1, n):
            out = out * _MULT + ids[k: len(ids) - n + 1 + k]
    return out


@dataclass
class Span:
    chars: int  # characters of the answer the shared words cover (0: none of n words)
    words: int
    document: int | None  # the index of a document holding it
    text: str


class SpanIndex:
    """Every word ``n``-gram of ``texts``, hashed and sorted, with the text it is in."""

    def __init__(self, texts: list[str], n: int = 8):
        self.n, self.texts = n, texts
        word_lists = [WORD.findall(t.lower()) for t in texts]
        lengths = np.array([len(w) for w in word_lists], dtype=np.int64)
        ids = _word_hashes([w for words in word_lists for w in words])
        grams = _ngram_hashes(ids, n)
        doc = np.repeat(np.arange(len(texts), dtype=np.int32), lengths)
        # a window is kept only when its first and last word are in the same document
        valid = doc[: len(grams)] == doc[n - 1:] if len(grams) else np.zeros(0, dtype=bool)
        grams, doc = grams[valid], doc[: len(valid)][valid]
        order = np.argsort(grams, kind="stable")
        self.grams, self.docs = grams[order], doc[order]

    def __len__(self) -> int:
        return len(self.grams)

    def longest(self, answer: str, max_docs: int = 5000) -> Span:
        """The longest run of the answer's words that one document also holds."""
        matches = list(WORD.finditer(answer.lower()))
        grams = _ngram_hashes(_word_hashes([m.group() for m in matches]), self.n)
        if not len(grams):
            return Span(0, 0, None, "")
        lo = np.searchsorted(self.grams, grams, side="left")
        hi = np.searchsorted(self.grams, grams, side="right")
        best = (0, -1, None)  # (windows in the run, last window, document)
        runs: dict[int, int] = {}
        for p in range(len(grams)):
            docs = set(self.docs[lo[p]: min(hi[p], lo[p] + max_docs)].tolist())
            runs = {d: runs.get(d, 0) + 1 for d in docs}
            for d, r in runs.items():
                if r > best[0]:
                    best = (r, p, d)
        windows, last, document = best
        if not windows:
            return Span(0, 0, None, "")
        first = last - windows + 1
        start, end = matches[first].start(), matches[last + self.n - 1].end()
        # hash collisions are possible in principle: confirm the words in the document
        words = WORD.findall(answer.lower())[first: last + self.n]
        held = " " + " ".join(WORD.findall(self.texts[document].lower())) + " "
        if f" {' '.join(words)} " not in held:
            return Span(0, 0, None, "")
        return Span(end - start, windows + self.n - 1, document, answer[start:end])
