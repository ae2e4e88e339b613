"""Duplicate training answers, removed before training (docs/method.md#mitigations).

A text seen many times is the one a model learns word for word (Kandpal et al.,
arXiv 2202.06539; Lee et al., arXiv 2107.06499): the same post reposted, or a
quote of it with a line added, is trained on once.

- ``exact``: answers equal once case and whitespace are normalised.
- ``near``: also answers whose sets of character 5-grams (bytes of the normalised
  text) have a Jaccard similarity of at least THRESHOLD (0.8, the threshold of Lee
  et al.): a 500-character post with 40 characters rewritten is about 0.84; two
  different keto posts are below 0.3.

The first text of a group (in the order given) is kept.  Near duplicates are
found without comparing all pairs: a 128-value MinHash signature per text (one
permutation hashing with rotation densification, Shrivastava & Li, ICML 2014:
one hash per 5-gram, all texts of a block at once in numpy), LSH banding (21
bands of 6 values: a pair at Jaccard 0.8 shares a bucket with probability
0.998, a pair at 0.3 with 0.015), and each candidate pair checked on its exact
5-gram sets, so no pair below the threshold is ever merged.  100,000 posts of
500 characters take a few seconds (docs/performance.md#dedup); datasketch's
MinHashLSH index, a Python call per text and band, took 13 s for the banding alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MODES = ("none", "exact", "near")
THRESHOLD = 0.8
SHINGLE = 5  # bytes per shingle
PERMS = 128  # signature length: 2**7 bins of one permutation
BANDS = (21, 6)  # LSH bands x values per band
_U = np.uint64
_EMPTY = np.iinfo(np.uint64).max
_GOLDEN = _U(0x9E3779B97F4A7C15)  # the rotation offset per bin moved


@dataclass
class Dedup:
    keep: list[int]  # indices of the texts kept, in the order given
    exact: int = 0  # removed as exact duplicates
    near: int = 0  # removed as near duplicates

    @property
    def removed(self) -> int:
        return self.exact + self.near


def normalise(text: str) -> str:
    """Case folded, whitespace runs made one space: what ``exact`` compares."""
    return " ".join(text.casefold().split())


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: a bijection on 64 bits."""
    x ^= x >> _U(30)
    x *= _U(0xBF58476D1CE4E5B9)
    x ^= x >> _U(27)
    x *= _U(0x94D049BB133111EB)
    x ^= x >> _U(31)
    return x


_PAD = b"\0" * (SHINGLE - 1)


def shingles(text: str) -> set[bytes]:
    """The 5-grams that near compares: bytes of the normalised text, padded with
    4 zero bytes at each end (so a text of any length has some)."""
    return _grams(normalise(text).encode())


def _grams(data: bytes) -> set[bytes]:
    b = _PAD + data + _PAD
    return {b[i:i + SHINGLE] for i in range(len(b) - SHINGLE + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def signatures(texts: Sequence[str], block: int = 4096) -> np.ndarray:
    """(len(texts), PERMS) uint32 MinHash signatures of the texts' 5-gram sets, a block
    of texts at a time."""
    return _signatures([normalise(t).encode() for t in texts], block)


def _signatures(data: list[bytes], block: int = 4096) -> np.ndarray:
    out = np.empty((len(data), PERMS), np.uint32)
    for lo in range(0, len(data), block):
        out[lo:lo + block] = _block_signatures(data[lo:lo + block])
    return out


def _block_signatures(data: list[bytes]) -> np.ndarray:
    # [pad t0 pad t1 ... pad tn pad]: each window of 5 bytes starting in [pad ti] is a
    # shingle of ti, exactly those of shingles(); packed into 40 bits (no collision)
    joined = _PAD + _PAD.join(data) + _PAD + b"\0" * 8
    seglen = np.fromiter((len(b) + SHINGLE - 1 for b in data), np.int64, len(data))
    n = int(seglen.sum())
    windows = np.ndarray((n,), "<u8", buffer=joined, strides=(1,)) & _U(2**40 - 1)
    h = _mix(windows)
    key = np.repeat(np.arange(len(data), dtype=np.int64) * PERMS, seglen)
    key += (h >> _U(64 - 7)).astype(np.int64)  # the bin: 7 bits, PERMS bins
    out = np.full(len(data) * PERMS, _EMPTY, _U)
    np.minimum.at(out, key, h)
    out = out.reshape(len(data), PERMS)
    _densify(out)
    return (_mix(out) & _U(0xFFFFFFFF)).astype(np.uint32)


def _densify(block: np.ndarray) -> None:
    """Each empty bin takes the value of the next non-empty bin to its right
    (circularly), shifted by the distance moved, in place."""
    full = block != _EMPTY
    if full.all():
        return
    cols = np.arange(2 * PERMS)
    pos = np.where(np.concatenate([full, full], axis=1), cols, 2 * PERMS)
    nxt = np.minimum.accumulate(pos[:, ::-1], axis=1)[:, ::-1][:, :PERMS]
    moved = (nxt - cols[:PERMS]).astype(_U)
    taken = np.take_along_axis(block, nxt % PERMS, axis=1)
    block[:] = np.where(full, block, taken + moved * _GOLDEN)


def dedup(texts: Sequence[str], mode: str = "near", threshold: float = THRESHOLD) -> Dedup:
    """Which of ``texts`` to keep under ``mode`` (none, exact, near): the first of each
    group of duplicates."""
    if mode not in MODES:
        raise ValueError(f"dedup must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "none":
        return Dedup(list(range(len(texts))))
    seen: dict[str, int] = {}
    for i, text in enumerate(texts):
        seen.setdefault(normalise(text), i)
    keep = sorted(seen.values())
    exact = len(texts) - len(keep)
    if mode == "exact" or len(keep) < 2:
        return Dedup(keep, exact)
    data = [key.encode() for key, _ in sorted(seen.items(), key=lambda kv: kv[1])]
    sigs = _signatures(data)
    buckets = _buckets(sigs)  # (texts, bands): the LSH bucket of each text in each band
    shared = np.bincount(buckets.ravel())[buckets] > 1  # a bucket another text is in
    members: dict[int, list[int]] = {}  # bucket -> the kept texts in it (rows of sigs)
    cache: dict[int, set[bytes]] = {}

    def grams(row: int) -> set[bytes]:
        if row not in cache:
            cache[row] = _grams(data[row])
        return cache[row]

    dropped = set()
    for j in np.flatnonzero(shared.any(axis=1)).tolist():  # the rest have no candidate
        mine = buckets[j][shared[j]].tolist()
        candidates = {c for b in mine for c in members.get(b, ())}
        # the signatures' estimate first (cheap), the exact sets for the likely ones
        if any(jaccard(grams(j), grams(c)) >= threshold for c in sorted(candidates)
               if (sigs[c] == sigs[j]).mean() >= threshold - 0.2):
            dropped.add(j)
            continue
        for b in mine:
            members.setdefault(b, []).append(j)
    kept = [i for row, i in enumerate(keep) if row not in dropped]
    return Dedup(kept, exact, len(dropped))


def _buckets(sigs: np.ndarray) -> np.ndarray:
    """The LSH bucket of each signature in each of BANDS[0] bands of BANDS[1] values:
    two texts share a bucket when one band of their signatures is equal."""
    bands, rows = BANDS
    out = np.empty((len(sigs), bands), np.int64)
    for b in range(bands):
        part = np.ascontiguousarray(sigs[:, b * rows:(b + 1) * rows]).view(
            np.dtype((np.void, 4 * rows))).ravel()
        _, inverse = np.unique(part, return_inverse=True)
        out[:, b] = inverse.ravel() + b * len(sigs)
    return out
