"""Emotional tone of a set of texts, and how far two sets are apart
(docs/method.md#emotion-and-sentiment).

Emotions come from the NRC Emotion Lexicon (Mohammad & Turney; free for
research), shipped inside the ``nrclex`` package and used offline with our own
tokenizer (nrclex's raw-text path needs NLTK data that cannot be downloaded).
Sentiment is VADER's compound score (the lexicon ships with ``vaderSentiment``).
Two sets are compared by the Jensen-Shannon divergence (base 2, 0 = same, 1 =
disjoint) of their emotion distributions and of their sentiment histograms.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

EMOTIONS = ("anger", "anticipation", "disgust", "fear", "joy", "negative", "positive",
            "sadness", "surprise", "trust")
SENTIMENT_BINS = np.linspace(-1, 1, 11)  # ten bins of VADER's compound score
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@functools.lru_cache(maxsize=1)
def _lexicon() -> dict[str, list[str]]:
    from nrclex import NRCLex

    return NRCLex(None).__lexicon__


@functools.lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def emotion_counts(text: str) -> Counter:
    """NRC category -> how many of the text's words carry it."""
    lexicon = _lexicon()
    counts: Counter = Counter()
    for word in _WORD.findall(text.lower()):
        counts.update(lexicon.get(word, ()))
    return counts


def emotion_matrix(texts: Sequence[str]) -> np.ndarray:
    """One row per text: its word counts per NRC category (columns as EMOTIONS)."""
    rows = [emotion_counts(t) for t in texts]
    return np.array([[row[e] for e in EMOTIONS] for row in rows], dtype=float).reshape(
        len(rows), len(EMOTIONS))


def pooled_distribution(matrix: np.ndarray) -> np.ndarray:
    """The share of each category among all emotion-bearing words of the rows;
    uniform when no word carries any."""
    counts = matrix.sum(axis=0)
    return counts / counts.sum() if counts.sum() else np.full(len(counts), 1 / len(counts))


def emotion_distribution(texts: Sequence[str]) -> np.ndarray:
    return pooled_distribution(emotion_matrix(texts))


def sentiment(texts: Sequence[str]) -> np.ndarray:
    """VADER's compound score (-1 ... 1) of each text."""
    vader = _vader()
    return np.array([vader.polarity_scores(t)["compound"] for t in texts])


def sentiment_histogram(scores: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(np.clip(scores, -1, 1), bins=SENTIMENT_BINS)
    return counts / counts.sum() if counts.sum() else np.full(len(counts), 1 / len(counts))


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence in bits: 0 for equal distributions, 1 at most."""
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(np.asarray(p, float), np.asarray(q, float), base=2) ** 2)


def emotion_divergence(a: Sequence[str], b: Sequence[str]) -> float:
    return js_divergence(emotion_distribution(a), emotion_distribution(b))


def sentiment_divergence(a: Sequence[str], b: Sequence[str]) -> float:
    return js_divergence(sentiment_histogram(sentiment(a)), sentiment_histogram(sentiment(b)))
