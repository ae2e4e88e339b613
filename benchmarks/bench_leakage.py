"""The privacy audit's near-verbatim leakage check at 100k posts: the word n-gram span
index (cci_local/evaluate/leakage.py) against the bare baseline it replaces, a scan of
every post per answer, in one run.

Posts: the keto and nutrition corpora's real texts, repeated with a numbered word put
in front of each copy until there are N (so every copy is a distinct post of real
length and vocabulary).  Answers: 64 texts of ~100 words, half holding a 20-word piece
of a post, as an audit's free answers do when a model leaks.

- index: build once over the N posts, then the longest shared span of each answer;
- scan: for each answer, every post searched for each of the answer's 8-word windows
  (substring search: the cheapest exact scan), timed on a few answers and scaled to 64.

Both must find the same spans on the answers the scan ran.  Goal (issue 27): the
audit's leakage step stays seconds at 100k posts; index/scan speed-up reported.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = ROOT.parent / "shared" / "data" / "reddit" / "keto_nutrition_2022"


def posts(n: int) -> list[str]:
    from cci_local.ingest import ingest
    from cci_local.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        db = open_store(Path(tmp) / "b.db")
        ingest(db, [str(CORPUS)])
        real = [t for (t,) in db.execute("SELECT text FROM documents ORDER BY id")]
        db.conn.close()
    return [f"copy{k // len(real)} {real[k % len(real)]}" for k in range(n)]


def answers(texts: list[str], count: int, seed: int = 0) -> list[str]:
    from cci_local.evaluate.leakage import WORD

    rng = np.random.default_rng(seed)
    filler = "the a of to and in is it that for on with as was at by".split()
    out = []
    for k in range(count):
        words = list(rng.choice(filler, 100))
        if k % 2 == 0:
            source = WORD.findall(texts[int(rng.integers(len(texts)))])
            if len(source) > 25:
                i = int(rng.integers(0, len(source) - 20))
                words[40:60] = source[i:i + 20]
        out.append(" ".join(words))
    return out


def scan(answer: str, texts: list[str], n: int = 8) -> int:
    """The bare baseline: the longest run of the answer's words in one post, by
    searching every post for every window (lower-cased word strings)."""
    from cci_local.evaluate.leakage import WORD

    words = WORD.findall(answer.lower())
    best = 0
    for text in texts:
        held = " " + " ".join(WORD.findall(text.lower())) + " "
        run = 0
        for i in range(len(words) - n + 1):
            if f" {' '.join(words[i:i + n])} " in held:
                run += 1
                best = max(best, run + n - 1)
            else:
                run = 0
    return best


def main() -> None:
    from cci_local.evaluate.leakage import SpanIndex

    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=100_000)
    parser.add_argument("--answers", type=int, default=64)
    parser.add_argument("--scan-answers", type=int, default=2)
    args = parser.parse_args()
    texts = posts(args.posts)
    queries = answers(texts, args.answers)
    words = sum(len(t.split()) for t in texts)
    print(f"{len(texts):,} posts, {words:,} words; {len(queries)} answers of ~100 words")

    t0 = time.perf_counter()
    index = SpanIndex(texts)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    spans = [index.longest(q) for q in queries]
    searched = time.perf_counter() - t0
    print(f"index: built in {built:.1f} s ({len(index):,} 8-grams, "
          f"{(index.grams.nbytes + index.docs.nbytes) / 2**20:.0f} MiB), {len(queries)} answers "
          f"in {searched:.2f} s; {sum(s.words >= 20 for s in spans)} answers share >= 20 words")

    t0 = time.perf_counter()
    scanned = [scan(q, texts) for q in queries[:args.scan_answers]]
    per = (time.perf_counter() - t0) / args.scan_answers
    assert scanned == [s.words for s in spans[:args.scan_answers]], (scanned, spans[:2])
    total = per * len(queries)
    print(f"scan: {per:.1f} s per answer, {total:.0f} s for {len(queries)} (scaled)")
    print(f"index (build + search) / scan time: {(built + searched) / total:.4f} "
          f"({total / (built + searched):.0f}x faster)")


if __name__ == "__main__":
    main()
