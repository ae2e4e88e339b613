"""Degenerate topic structure is detected and split (cluster.py), on synthetic
points whose shape is known: no UMAP, no model, fast."""

from __future__ import annotations

import numpy as np

from cci_local.cluster import (
    ClusterSettings,
    _hdbscan,
    _shares,
    cluster,
    describe,
    split_degenerate,
)


def split(points, before, size):
    labels, splits, stuck = split_degenerate(points, before, size, ClusterSettings())
    record, note = describe(before, labels, splits, stuck, size, ClusterSettings())
    return labels, record, note


def blob_and_islands(seed=0):
    """3,000 points of uniform density (one topic to excess-of-mass selection)
    beside two small dense islands."""
    rng = np.random.default_rng(seed)
    return np.vstack([rng.uniform(0, 10, size=(3000, 5)), rng.normal(30, 0.3, size=(150, 5)),
                      rng.normal(-20, 0.3, size=(100, 5))])


def test_excess_of_mass_keeps_a_uniform_blob_whole():
    labels = _hdbscan(blob_and_islands(), 32, "eom")
    counts, kept = _shares(labels)
    assert max(counts.values()) / kept > 0.9 and len(counts) <= 3  # the failure being fixed


def test_a_dominant_topic_is_split_and_no_document_is_dropped():
    points = blob_and_islands()
    before = _hdbscan(points, 32, "eom")
    labels, record, note = split(points, before, 32)
    counts, kept = _shares(labels)
    assert len(counts) >= 12 and max(counts.values()) / kept <= 0.25
    assert (labels < 0).sum() == (before < 0).sum()  # splitting never makes outliers
    # The islands are untouched: every point of each keeps one label.
    assert len(set(labels[3000:3150])) == 1 and len(set(labels[3150:])) == 1
    assert record["found"] == len(_shares(before)[0]) and record["largest_share"] > 0.9
    assert record["splits"][0]["method"] == "leaf selection"
    assert record["topics"] == len(counts)
    assert note.startswith("the largest topic held 92% of the clustered documents: split it "
                           "into "), note


def test_too_few_topics_are_split_towards_the_minimum():
    rng = np.random.default_rng(1)
    points = np.vstack([rng.normal(m, 1.0, size=(1000, 5)) for m in (0, 20, 40, 60)])
    before = _hdbscan(points, 40, "eom")
    assert len(_shares(before)[0]) == 4  # four clean topics of 25%: not dominant, too few
    labels, record, note = split(points, before, 40)
    counts, kept = _shares(labels)
    assert len(counts) >= 12 and max(counts.values()) / kept < 0.25
    assert note.startswith("4 topics (fewer than 12): split the largest into"), note
    # Each new topic lies inside one of the four: a split never merges documents.
    for t in counts:
        assert len({int(i // 1000) for i in np.where(labels == t)[0]}) == 1


def test_healthy_structure_is_left_alone():
    rng = np.random.default_rng(2)
    centres = rng.uniform(-200, 200, size=(14, 5))
    points = np.vstack([rng.normal(c, 1.0, size=(200, 5)) for c in centres])
    before = _hdbscan(points, 28, "eom")
    labels, record, note = split(points, before, 28)
    assert record is None and note is None and (labels == before).all()


def test_a_topic_too_small_to_split_is_reported_not_looped():
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 1, size=(60, 5))
    before = np.zeros(60, dtype=int)
    labels, record, note = split(points, before, 40)
    assert (labels == before).all() and record["splits"] == []
    assert "too small to split further" in note


def test_no_split_keeps_the_blob_and_says_so():
    settings = ClusterSettings(reducer="pca", min_cluster_size=32, split=False)
    result = cluster(blob_and_islands(), settings)
    counts, kept = _shares(result.labels)
    assert max(counts.values()) / kept > 0.9
    assert any("left whole (--no-split)" in n for n in result.notes), result.notes
    assert "degenerate" not in result.settings and result.settings["split"] is False
    split = cluster(blob_and_islands(), ClusterSettings(reducer="pca", min_cluster_size=32))
    assert split.settings["degenerate"]["topics"] >= 12
    assert split.labels.max() + 1 == split.settings["degenerate"]["topics"]
    sizes = np.bincount(split.labels[split.labels >= 0])
    assert (np.diff(sizes) <= 0).all()  # numbered by size, largest first

