"""Reduce and cluster document embeddings for the topic stage (docs/method.md#topics).

``cluster(vectors, settings)`` gives every document a topic (or -1, an outlier):

1. UMAP to a few dimensions (PCA when umap-learn is missing), on a seeded sample
   of at most ``sample`` documents;
2. HDBSCAN (excess-of-mass or leaf selection), or KMeans for a given topic count;
3. degenerate structure handled: when one topic holds more than ``max_share`` of
   the clustered documents, or there are fewer than ``min_topics`` topics, the
   largest topic is clustered again on its own (HDBSCAN leaf selection, KMeans
   when that finds no structure) until neither holds.  Communities that talk
   about the same things embed as one blob of near-uniform density, and
   excess-of-mass selection then keeps the blob whole (BERTopic users meet the
   same failure);
4. documents outside the sample take the topic most of their 10 nearest sampled
   neighbours have.

Everything is seeded; the returned ``Clustering`` says what was done, in settings
and in one note line per decision.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import CciError


class ClusterError(CciError):
    """The clustering cannot run as asked (exit code 2); the message says why."""


@dataclass
class ClusterSettings:
    reducer: str = "umap"  # umap | pca
    dims: int = 5  # the paper: UMAP, 15 neighbours, 5 dimensions
    neighbours: int = 15
    clusterer: str = "hdbscan"  # hdbscan | kmeans
    n_topics: int | None = None  # kmeans: this many topics
    min_cluster_size: int | None = None  # hdbscan; None: 40 scaled to the corpus
    selection: str = "eom"  # hdbscan's cluster selection: eom | leaf
    split: bool = True  # split degenerate structure
    max_share: float = 0.25  # a topic holding more of the clustered documents is dominant
    min_topics: int = 12  # fewer topics is degenerate (for corpora big enough to hold them)
    sample: int = 20_000
    seed: int = 0


@dataclass
class Clustering:
    labels: np.ndarray  # every document: topic 0..k-1 by size, largest first; -1 outlier
    reduced: np.ndarray  # the clustered sample's reduced coordinates
    sample_labels: np.ndarray  # and its labels (for the silhouette)
    settings: dict = field(default_factory=dict)  # what was actually done
    notes: list[str] = field(default_factory=list)


def reduce(vectors: np.ndarray, settings: ClusterSettings, notes: list[str]) -> np.ndarray:
    """UMAP (cosine, min_dist 0, seeded) to ``settings.dims`` dimensions; PCA when
    umap-learn is not installed, with a note."""
    dims = min(settings.dims, vectors.shape[1], max(2, len(vectors) - 2))
    if settings.reducer == "umap":
        try:
            import umap
        except ImportError:
            notes.append("umap-learn is not installed: reduced with PCA instead "
                         "(pip install umap-learn for the paper's UMAP)")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reducer = umap.UMAP(n_neighbors=min(settings.neighbours, len(vectors) - 1),
                                    n_components=dims, min_dist=0.0, metric="cosine",
                                    random_state=settings.seed, low_memory=True)
                return reducer.fit_transform(vectors)
    from sklearn.decomposition import PCA

    return PCA(dims, random_state=settings.seed).fit_transform(vectors)


def min_cluster_size(n: int) -> int:
    """The paper's 40, scaled down for corpora under 4,000 documents (never below 5)."""
    return max(5, min(40, n // 100))


def _hdbscan(points: np.ndarray, size: int, selection: str) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    return HDBSCAN(min_cluster_size=size, min_samples=min(10, size),
                   cluster_selection_method=selection, copy=True).fit_predict(points)


def _kmeans(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(k, n_init=4, random_state=seed).fit_predict(points)


def _shares(labels: np.ndarray) -> tuple[Counter, int]:
    counts = Counter(int(t) for t in labels if t >= 0)
    return counts, sum(counts.values())


def split_degenerate(points: np.ndarray, labels: np.ndarray, size: int,
                     settings: ClusterSettings) -> tuple[np.ndarray, list[dict], bool]:
    """Split the largest topic while one holds more than ``max_share`` of the
    clustered documents or there are fewer topics than the corpus can hold
    (``min_topics``, at most one per ``2 * size`` clustered documents).

    A topic is split by HDBSCAN with leaf selection on its own points; the points
    that leaf selection leaves out were in the topic and join their nearest
    sub-topic, so splitting never makes outliers.  When leaf selection finds
    fewer than two sub-topics, KMeans cuts the topic into pieces of a typical
    topic's size.  Returns the labels, the splits made (share, documents, pieces,
    method) and whether a topic that should be split was too small to."""
    labels = labels.copy()
    counts, kept = _shares(labels)
    splits: list[dict] = []
    if not kept:
        return labels, splits, False
    want = wanted_topics(kept, size, settings)
    for _ in range(4 * settings.min_topics):
        counts, kept = _shares(labels)
        big, big_size = counts.most_common(1)[0]
        if big_size <= settings.max_share * kept and len(counts) >= want:
            return labels, splits, False
        if big_size < 2 * size:  # too small to hold two topics
            return labels, splits, True
        members = np.where(labels == big)[0]
        part = points[members]
        sub = _hdbscan(part, size, "leaf")
        method = "leaf selection"
        if len(set(sub.tolist()) - {-1}) < 2:
            # Pieces of a typical topic's size, and no bigger than the corpus's
            # share of the wanted topic count or the dominance threshold.
            others = [v for t, v in counts.items() if t != big]
            target = min(settings.max_share * kept, kept / want)
            if len(others) >= 3:
                target = min(target, statistics.median(others))
            pieces = max(2, math.ceil(big_size / max(target, 1)))
            pieces = min(pieces, big_size // size)
            sub = _kmeans(part, pieces, settings.seed)
            method = "KMeans"
        elif (sub < 0).any():
            from sklearn.neighbors import KNeighborsClassifier

            inside = sub >= 0
            knn = KNeighborsClassifier(n_neighbors=min(10, int(inside.sum())))
            sub[~inside] = knn.fit(part[inside], sub[inside]).predict(part[~inside])
        pieces = sorted(set(sub.tolist()))
        first = int(labels.max()) + 1
        relabel = {p: (big if i == 0 else first + i - 1) for i, p in enumerate(pieces)}
        labels[members] = [relabel[int(s)] for s in sub]
        splits.append({"share": round(big_size / kept, 4), "documents": int(big_size),
                       "into": len(pieces), "method": method})
    return labels, splits, False


def wanted_topics(kept: int, size: int, settings: ClusterSettings) -> int:
    """Fewer topics than this is degenerate: ``min_topics``, or as many topics of
    twice the minimum cluster size as the clustered documents can hold."""
    return min(settings.min_topics, max(2, kept // (2 * size)))


def describe(first: np.ndarray, final: np.ndarray, splits: list[dict], stuck: bool,
             size: int, settings: ClusterSettings) -> tuple[dict | None, str | None]:
    """The record of a split for the run's settings, and its one-line note (None,
    None when the first clustering was not degenerate)."""
    if not splits and not stuck:
        return None, None
    counts, kept = _shares(first)
    found, largest = len(counts), max(counts.values()) / kept
    after, after_kept = _shares(final)
    record = {"found": found, "largest_share": round(largest, 4), "splits": splits,
              "topics": len(after),
              "largest_share_after": round(max(after.values()) / after_kept, 4)}
    dominant = largest > settings.max_share
    why = (f"the largest topic held {largest:.0%} of the clustered documents" if dominant
           else f"{found} topic{'s' if found != 1 else ''} (fewer than "
                f"{wanted_topics(kept, size, settings)})")
    if not splits:
        return record, f"{why}, but it is too small to split further (--min-cluster-size {size})"
    head, rest = splits[0], splits[1:]
    text = (f"{why}: split {'it' if dominant else 'the largest'} into {head['into']} "
            f"sub-topics ({head['method']})")
    if rest:
        methods = sorted({s["method"] for s in rest})
        text += (f", then {len(rest)} more topic{'s' if len(rest) > 1 else ''} of up to "
                 f"{max(s['share'] for s in rest):.0%} ({', '.join(methods)})")
    text += (f"; now {record['topics']} topics, the largest holding "
             f"{record['largest_share_after']:.0%} (--no-split keeps the first clustering)")
    return record, text


def _propagate(vectors: np.ndarray, sample: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Labels for every document: the sample's own, and for the others the topic
    most of their 10 nearest sampled neighbours (in the embedding space) have."""
    full = np.full(len(vectors), -1)
    full[sample] = labels
    if len(sample) < len(vectors):
        from sklearn.neighbors import KNeighborsClassifier

        rest = np.setdiff1d(np.arange(len(vectors)), sample)
        knn = KNeighborsClassifier(n_neighbors=10).fit(vectors[sample], labels)
        for start in range(0, len(rest), 20_000):
            part = rest[start:start + 20_000]
            full[part] = knn.predict(vectors[part])
    return full


def cluster(vectors: np.ndarray, settings: ClusterSettings) -> Clustering:
    """Topic labels for every document (see the module docstring)."""
    n = len(vectors)
    notes: list[str] = []
    rng = np.random.default_rng(settings.seed)
    sample = np.sort(rng.choice(n, settings.sample, replace=False)) if n > settings.sample \
        else np.arange(n)
    reduced = reduce(vectors[sample], settings, notes)
    done: dict = {"clusterer": settings.clusterer}
    if settings.clusterer == "kmeans":
        if not settings.n_topics:
            raise ClusterError("the kmeans clusterer needs a topic count (--topics K)")
        if settings.n_topics >= len(sample):
            raise ClusterError(f"--topics {settings.n_topics} needs more than {n} documents")
        labels = _kmeans(reduced, settings.n_topics, settings.seed)
        done["n_topics"] = settings.n_topics
        full = _propagate(vectors, sample, labels)
    elif settings.clusterer == "hdbscan":
        size = settings.min_cluster_size or min_cluster_size(len(sample))
        if settings.min_cluster_size is None and size != 40:
            notes.append(f"HDBSCAN min cluster size {size} (the paper's 40 scaled to "
                         f"{len(sample):,} documents)")
        labels = _hdbscan(reduced, size, settings.selection)
        done.update(min_cluster_size=size, selection=settings.selection,
                    max_share=settings.max_share, min_topics=settings.min_topics,
                    split=settings.split)
        first, splits, stuck, threshold = labels, [], False, settings.max_share
        for _ in range(3):
            if settings.split:
                labels, more, stuck = split_degenerate(
                    reduced, labels, size, replace(settings, max_share=threshold))
                splits += more
            full = _propagate(vectors, sample, labels)
            counts, kept = _shares(full)
            big, big_size = counts.most_common(1)[0] if kept else (-1, 0)
            if not settings.split or big_size <= settings.max_share * kept:
                break
            # The documents outside the sample made a topic dominant: split the
            # sample with the threshold scaled by how much that topic grew.
            in_sample = _shares(labels)
            share = in_sample[0][big] / in_sample[1]
            threshold = share * settings.max_share * kept / big_size
        record, text = describe(first, full, splits, stuck, size, settings)
        if record:
            done["degenerate"] = record
            notes.append(text)
        elif not settings.split and kept and big_size > settings.max_share * kept:
            notes.append(f"the largest topic holds {big_size / kept:.0%} of the clustered "
                         "documents; left whole (--no-split)")
    else:
        raise ClusterError(f"unknown clusterer {settings.clusterer!r}: use hdbscan or kmeans")
    if len(sample) < n:
        notes.append(f"clustered a seeded sample of {len(sample):,} documents; the other "
                     f"{n - len(sample):,} joined their nearest neighbours' topics")
    # Number topics by size, largest first.
    found = [t for t in np.unique(full) if t >= 0]
    order = sorted(found, key=lambda t: (-int((full == t).sum()), t))
    mapping = {old: new for new, old in enumerate(order)}
    renumber = np.vectorize(lambda t: mapping.get(t, -1), otypes=[int])
    return Clustering(renumber(full), reduced, renumber(labels), done, notes)
