"""Near-verbatim leakage: the word n-gram span index the audit runs over a community's
posts.  Exact answers are checked against a brute-force longest-common-run on real
keto posts, so the index can be wrong only where the test can see it."""

from __future__ import annotations

import numpy as np
from conftest import CORPUS_2022

from cci_local.evaluate.leakage import WORD, SpanIndex
from cci_local.ingest import ingest
from cci_local.store import open_store


def _brute(answer: str, texts: list[str], n: int) -> int:
    """Longest run of the answer's words found, contiguous, in one text (words >= n)."""
    words = WORD.findall(answer.lower())
    best = 0
    for text in texts:
        held = " " + " ".join(WORD.findall(text.lower())) + " "
        for i in range(len(words)):
            j = i + max(n, best + 1)
            while j <= len(words) and f" {' '.join(words[i:j])} " in held:
                best = j - i
                j += 1
    return best


def test_finds_a_copied_span_across_case_punctuation_and_spacing():
    docs = ["I have been on keto for three months and lost twenty pounds, feeling great.",
            "Bacon and eggs every morning is my go to breakfast on this diet honestly.",
            "short one"]
    index = SpanIndex(docs)
    span = index.longest("Well... I HAVE been on keto for three   months, and lost twenty pounds!")
    assert span.document == 0 and span.words == 12
    assert span.text == "I HAVE been on keto for three   months, and lost twenty pounds"
    assert span.chars == len(span.text)
    # seven shared words is under the n-gram: not seen; words spliced across two
    # documents are not one document's span
    assert index.longest("I have been on keto for three weeks now").chars == 0
    spliced = index.longest("lost twenty pounds feeling great bacon and eggs every morning is my")
    assert spliced.chars == 0  # 5 words of one post, then 7 of another: neither is 8
    assert index.longest("").chars == 0 and index.longest("keto").chars == 0


def test_agrees_with_brute_force_on_real_posts(tmp_path):
    db = open_store(tmp_path / "s.db")
    ingest(db, [str(CORPUS_2022)])
    texts = [t for (t,) in db.execute("SELECT text FROM documents WHERE community = 'keto'"
                                      " ORDER BY id LIMIT 400")]
    index = SpanIndex(texts)
    rng = np.random.default_rng(1)
    for k in range(12):
        # an answer made of pieces of two posts and words of none
        a, b = (WORD.findall(texts[i]) for i in rng.choice(len(texts), 2, replace=False))
        i, j = int(rng.integers(0, max(1, len(a) - 20))), int(rng.integers(0, max(1, len(b) - 9)))
        answer = " ".join(["zyx"] * 3 + a[i:i + 5 + 3 * k] + ["qwv"] + b[j:j + 9] + ["pqr"])
        span = index.longest(answer)
        assert span.words == _brute(answer, texts, 8), answer
        if span.words:
            held = " ".join(WORD.findall(texts[span.document].lower()))
            assert " ".join(WORD.findall(span.text.lower())) in held
