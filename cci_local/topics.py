"""Topics and chunks across communities (docs/method.md#topics, docs/method.md#chunk-rows).

``fit_topics(db, communities)`` embeds every document of the selected communities
together, clusters the embeddings (cluster.py: UMAP, then HDBSCAN with outliers
dropped and counted and degenerate structure split, or KMeans when a topic count
is asked for), names each topic by class-based TF-IDF keywords with a diversity
step, and cuts each topic into chunk rows: one chunk of on-topic documents per
community, the unit the teacher sees.  Seeded and deterministic; a fit with the
same documents and parameters is reused, not redone, and what the clustering
did is stored in the run's settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import sqlite_utils

from .cluster import ClusterError, ClusterSettings, cluster
from .embed import EMBEDDERS, embed_documents
from .errors import CciError
from .store import UnknownCommunity, select_communities

EXTRA_STOP_WORDS = {
    "just", "like", "im", "dont", "ive", "thats", "really", "get", "got", "know", "think",
    "want", "going", "also", "would", "could", "one", "people", "thing", "things", "lot",
    "much", "make", "way", "use", "does", "did", "doing", "say", "said", "good", "need",
    "yes", "yeah", "sure", "pretty", "actually", "probably", "maybe", "still", "even",
    "didn", "doesn", "isn", "wasn", "aren", "won", "wouldn", "couldn", "shouldn", "youre",
    "theyre", "thanks", "thank", "anyone", "someone", "something", "anything", "post",
    "reddit", "edit", "removed", "deleted", "https", "http", "www", "com", "don", "ve",
    "doesnt", "didnt", "isnt", "cant", "wont", "lol",
}


class TopicsError(CciError):
    """The topic stage cannot run as asked (exit code 2); the message says why."""


@dataclass
class TopicParams:
    embedder: str = "wordllama"
    reducer: str = "umap"  # umap | pca
    dims: int = 5  # reduced space (the paper: UMAP, 15 neighbours, 5 dimensions)
    neighbours: int = 15
    clusterer: str | None = None  # hdbscan | kmeans; None: kmeans when n_topics is given
    n_topics: int | None = None  # KMeans with this many topics instead of HDBSCAN
    min_cluster_size: int | None = None  # HDBSCAN; None: 40 (the paper's) scaled to the corpus
    selection: str = "eom"  # HDBSCAN's cluster selection: eom (excess of mass) | leaf
    split: bool = True  # split a dominant topic, or too few topics (cluster.split_degenerate)
    max_share: float = 0.25  # a topic holding more of the clustered documents is dominant
    min_topics: int = 12  # fewer is degenerate, where the corpus can hold that many
    n_keywords: int = 10
    diversity: float = 0.3
    seed: int = 0
    sample: int = 20_000  # cluster at most this many; the rest join their neighbours' topic
    # Chunks (the paper's defaults; scaled down for small corpora, with a note)
    chunk_min_docs: int = 30
    chunk_max_docs: int = 50
    max_chunks: int = 5
    min_communities: int | None = None  # None: 80% of the communities (the paper: 4 of 5)


@dataclass
class TopicSummary:
    run_id: int
    reused: bool
    n_documents: int
    n_outliers: int
    silhouette: float | None
    silhouette_shuffled: float | None
    topics: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    embedded_now: int = 0
    settings: dict = field(default_factory=dict)  # what the clustering did (cluster.py)


# --------------------------------------------------------------------------- fitting


def _silhouettes(reduced, labels, seed) -> tuple[float | None, float | None]:
    from sklearn.metrics import silhouette_score

    keep = labels >= 0
    if len(set(labels[keep])) < 2:
        return None, None
    x, y = reduced[keep], labels[keep]
    size = min(5000, len(y))
    ours = silhouette_score(x, y, sample_size=size, random_state=seed)
    shuffled = np.random.default_rng(seed).permutation(y)
    return float(ours), float(silhouette_score(x, shuffled, sample_size=size, random_state=seed))


def keywords(texts: list[str], labels: np.ndarray, n_keywords: int, diversity: float,
             word_vectors: Callable[[list[str]], np.ndarray] | None = None) -> list[list[str]]:
    """Class-based TF-IDF keywords per topic, then maximal marginal relevance so a
    topic is not named by five forms of one word."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    k = int(labels.max()) + 1
    keep = labels >= 0
    docs = [t for t, lab in zip(texts, labels, strict=True) if lab >= 0]
    stop = sorted(ENGLISH_STOP_WORDS | EXTRA_STOP_WORDS)
    vectorizer = CountVectorizer(stop_words=stop, min_df=2 if len(docs) > 200 else 1,
                                 token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]{2,}\b", lowercase=True)
    counts = vectorizer.fit_transform(docs)
    vocab = vectorizer.get_feature_names_out()
    from scipy.sparse import csr_matrix

    member = csr_matrix((np.ones(len(docs)), (labels[keep], np.arange(len(docs)))),
                        shape=(k, len(docs)))
    per_topic = np.asarray((member @ counts).todense(), dtype=np.float64)  # topics x terms
    tf = per_topic / np.maximum(per_topic.sum(axis=1, keepdims=True), 1)
    average_words = per_topic.sum() / k
    idf = np.log(1 + average_words / np.maximum(per_topic.sum(axis=0), 1))
    ctfidf = tf * idf
    term_vectors = None
    out = []
    for t in range(k):
        candidates = np.argsort(-ctfidf[t])[: n_keywords * 3]
        candidates = [c for c in candidates if ctfidf[t, c] > 0]
        if not candidates:
            out.append([])
            continue
        if word_vectors is not None:
            vecs = word_vectors([vocab[c] for c in candidates])
        else:  # a term is represented by how it spreads over the topics
            if term_vectors is None:
                term_vectors = ctfidf.T / np.maximum(
                    np.linalg.norm(ctfidf.T, axis=1, keepdims=True), 1e-12)
            vecs = term_vectors[candidates]
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        relevance = ctfidf[t, candidates] / ctfidf[t, candidates[0]]
        chosen = [0]
        while len(chosen) < min(n_keywords, len(candidates)):
            similarity = (vecs @ vecs[chosen].T).max(axis=1)
            score = (1 - diversity) * relevance - diversity * similarity
            score[chosen] = -np.inf
            chosen.append(int(np.argmax(score)))
        out.append([str(vocab[candidates[i]]) for i in chosen])
    return out


def _chunk_rows(doc_ids, communities_of, labels, names, params: TopicParams,
                notes: list[str]) -> tuple[dict, dict]:
    """topic -> [row -> {community: [doc ids]}], and the chunking actually used."""
    k = int(labels.max()) + 1
    groups: dict[tuple[int, str], list[str]] = {}
    for doc_id, community, label in zip(doc_ids, communities_of, labels, strict=True):
        if label >= 0:
            groups.setdefault((int(label), community), []).append(doc_id)
    need = params.min_communities or max(1, math.ceil(0.8 * len(names)))
    need = min(need, len(names))
    # A row needs `need` communities, so a topic's row count is limited by its
    # need-th largest community.  Chunks keep the paper's size unless the corpus
    # is small: when that community, in a typical topic, cannot fill even half a
    # chunk, chunks shrink to fit it.  Between the two, a topic too thin for a
    # full chunk gives one row of what each community has, when that is at least
    # half a chunk, so that many thin topics do not count as a small corpus.
    bottleneck = [sorted((len(groups.get((t, n), [])) for n in names), reverse=True)[need - 1]
                  for t in range(k)]
    typical = int(statistics.median(bottleneck)) if bottleneck else 0
    min_docs, max_docs = params.chunk_min_docs, params.chunk_max_docs
    if typical < math.ceil(min_docs / 2):
        min_docs = max(3, min(min_docs, typical // 2))
        max_docs = max(min_docs, min(max_docs, typical))
        notes.append(f"small corpus: in a typical topic the {need} best-represented communities "
                     f"have only {typical} documents each, so chunks hold {min_docs}-{max_docs} "
                     f"documents instead of {params.chunk_min_docs}-{params.chunk_max_docs}")
    least = max(3, math.ceil(min_docs / 2))
    rows: dict[int, list[dict]] = {}
    thin = 0
    for t in range(k):
        per_community = {}
        full = bottleneck[t] >= min_docs
        for name in names:
            docs = sorted(groups.get((t, name), []))
            if len(docs) < (min_docs if full else least):
                continue
            seed = int(hashlib.sha256(f"{params.seed}:{t}:{name}".encode()).hexdigest()[:8], 16)
            docs = [docs[i] for i in np.random.default_rng(seed).permutation(len(docs))]
            count = max(1, min(params.max_chunks, len(docs) // min_docs))
            size = min(max_docs, len(docs) // count)
            per_community[name] = [docs[r * size:(r + 1) * size] for r in range(count)]
        most = max((len(c) for c in per_community.values()), default=0)
        rows[t] = []
        for r in range(most if full else min(most, 1)):
            row = {name: chunks[r] for name, chunks in per_community.items() if r < len(chunks)}
            if len(row) >= need:
                rows[t].append(row)
        thin += bool(rows[t]) and not full
    if thin:
        notes.append(f"{thin} topic{'s' if thin > 1 else ''} too thin for chunks of {min_docs} "
                     f"gave one row each, of the {least}-{min_docs - 1} documents per community "
                     "they have")
    chunking = {"min_docs": min_docs, "max_docs": max_docs, "max_chunks": params.max_chunks,
                "min_communities": need, "thin_min_docs": least, "thin_topics": thin}
    return rows, chunking


# --------------------------------------------------------------------------- the stage


def fit_topics(db: sqlite_utils.Database, communities: list[str] | None = None,
               params: TopicParams | None = None, *, force: bool = False,
               progress: Callable | None = None) -> TopicSummary:
    """Fit topics jointly over ``communities`` (all in the store when None) and cut
    chunk rows; store everything and return a summary.

    ``progress(kind, n)``: kind 'total' (documents to embed) or 'advance'."""
    params = params or TopicParams()
    if params.embedder not in EMBEDDERS:
        raise TopicsError(f"unknown embedder {params.embedder!r}: use one of "
                          f"{', '.join(EMBEDDERS)}")
    wanted = cluster_settings(params)
    names = _communities(db, communities)
    marks = ",".join("?" * len(names))
    rows = db.execute(f"SELECT id, community, text FROM documents WHERE community IN ({marks})"
                      " ORDER BY id", names).fetchall()
    if len(rows) < 50:
        raise TopicsError(f"{len(rows)} documents in {', '.join(names)}: topics need at least "
                          "50 (run `cci-local ingest` first)")
    doc_ids = [r[0] for r in rows]
    key_source = json.dumps({"communities": names, "params": asdict(params),
                             "documents": hashlib.sha256("\n".join(doc_ids).encode())
                             .hexdigest()}, sort_keys=True)
    key = hashlib.sha256(key_source.encode()).hexdigest()
    existing = db.execute("SELECT id FROM topic_runs WHERE key = ?", [key]).fetchone()
    if existing and not force:
        return load_summary(db, existing[0], reused=True)
    notes: list[str] = []
    if progress:
        progress("total", len(rows))
    vectors, embedded_now = embed_documents(
        db, params.embedder, doc_ids, [r[2] for r in rows], seed=params.seed,
        advance=(lambda n: progress("advance", n)) if progress else None)
    try:
        clustering = cluster(vectors, wanted)
    except ClusterError as e:
        raise TopicsError(str(e)) from e
    notes.extend(clustering.notes)
    labels, reduced, sample_labels = (clustering.labels, clustering.reduced,
                                      clustering.sample_labels)
    if labels.max() < 0:
        raise TopicsError("no topic found: every document is an outlier; lower "
                          "--min-cluster-size or ask for --topics K")
    silhouette, shuffled = _silhouettes(reduced, sample_labels, params.seed)
    word_vectors = None
    if params.embedder == "wordllama":
        from .embed import get_embedder

        word_vectors = get_embedder("wordllama").embed  # the instance embedding just used
    names_of = keywords([r[2] for r in rows], labels, params.n_keywords, params.diversity,
                        word_vectors)
    chunk_rows, chunking = _chunk_rows(doc_ids, [r[1] for r in rows], labels, names, params,
                                       notes)
    settings = {**clustering.settings, "notes": notes}
    run_id = _store(db, key, names, params, settings, rows, labels, names_of, chunk_rows,
                    chunking, silhouette, shuffled, existing[0] if existing else None)
    summary = load_summary(db, run_id, reused=False)
    summary.embedded_now = embedded_now
    return summary


def cluster_settings(params: TopicParams) -> ClusterSettings:
    """The clustering part of the topic parameters, checked."""
    if params.clusterer not in (None, "hdbscan", "kmeans"):
        raise TopicsError(f"unknown clusterer {params.clusterer!r}: use hdbscan or kmeans")
    if params.clusterer == "hdbscan" and params.n_topics:
        raise TopicsError("--topics K sets KMeans's topic count and HDBSCAN finds its own: "
                          "drop --topics, or use --clusterer kmeans")
    if params.clusterer == "kmeans" and not params.n_topics:
        raise TopicsError("--clusterer kmeans needs a topic count: add --topics K")
    if params.selection not in ("eom", "leaf"):
        raise TopicsError(f"unknown selection {params.selection!r}: use eom or leaf")
    return ClusterSettings(
        reducer=params.reducer, dims=params.dims, neighbours=params.neighbours,
        clusterer=params.clusterer or ("kmeans" if params.n_topics else "hdbscan"),
        n_topics=params.n_topics, min_cluster_size=params.min_cluster_size,
        selection=params.selection, split=params.split, max_share=params.max_share,
        min_topics=params.min_topics, sample=params.sample, seed=params.seed)


def _communities(db, communities: list[str] | None) -> list[str]:
    try:
        return select_communities(db, communities)
    except UnknownCommunity as e:
        raise TopicsError(str(e)) from e


def _store(db, key, names, params, settings, rows, labels, keyword_lists, chunk_rows, chunking,
           silhouette, shuffled, replace_id) -> int:
    conn = db.conn
    with conn:
        if replace_id is not None:
            conn.execute("DELETE FROM topic_runs WHERE id = ?", [replace_id])
        run_id = conn.execute(
            "INSERT INTO topic_runs (key, communities, params, n_documents, n_outliers,"
            " silhouette, silhouette_shuffled, chunking, settings, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [key, json.dumps(names), json.dumps(asdict(params)), len(rows),
             int((labels < 0).sum()), silhouette, shuffled, json.dumps(chunking),
             json.dumps(settings), time.time()]).lastrowid
        topic_ids = {}
        for t, words in enumerate(keyword_lists):
            topic_ids[t] = conn.execute(
                "INSERT INTO topics (run_id, number, keywords, size) VALUES (?, ?, ?, ?)",
                [run_id, t, json.dumps(words), int((labels == t).sum())]).lastrowid
        conn.executemany(
            "INSERT INTO doc_topics (run_id, doc_id, topic_id) VALUES (?, ?, ?)",
            [(run_id, r[0], topic_ids[int(lab)]) for r, lab in zip(rows, labels, strict=True)
             if lab >= 0])
        counts: dict[tuple[int, str], int] = {}
        for r, lab in zip(rows, labels, strict=True):
            if lab >= 0:
                counts[(int(lab), r[1])] = counts.get((int(lab), r[1]), 0) + 1
        conn.executemany(
            "INSERT INTO topic_communities (topic_id, community, documents) VALUES (?, ?, ?)",
            [(topic_ids[t], name, counts.get((t, name), 0)) for t in topic_ids for name in names])
        for t, row_list in chunk_rows.items():
            for number, row in enumerate(row_list):
                row_id = conn.execute(
                    "INSERT INTO chunk_rows (topic_id, row_number) VALUES (?, ?)",
                    [topic_ids[t], number]).lastrowid
                conn.executemany(
                    "INSERT INTO chunks (chunk_row_id, community, doc_ids) VALUES (?, ?, ?)",
                    [(row_id, name, json.dumps(ids)) for name, ids in row.items()])
    return run_id


def load_summary(db, run_id: int, reused: bool = False) -> TopicSummary:
    """A stored topic run as ``fit_topics`` returns it: topics, keywords, community
    shares, chunk rows, silhouettes and notes (``reused``: it was found, not fitted)."""
    run = db.execute("SELECT communities, n_documents, n_outliers, silhouette,"
                     " silhouette_shuffled, settings FROM topic_runs WHERE id = ?",
                     [run_id]).fetchone()
    names = json.loads(run[0])
    topics = []
    for topic_id, number, words, size in db.execute(
            "SELECT id, number, keywords, size FROM topics WHERE run_id = ? ORDER BY number",
            [run_id]):
        counts = dict(db.execute("SELECT community, documents FROM topic_communities"
                                 " WHERE topic_id = ?", [topic_id]).fetchall())
        n_rows = db.execute("SELECT count(*) FROM chunk_rows WHERE topic_id = ?",
                            [topic_id]).fetchone()[0]
        topics.append({"topic": number, "keywords": json.loads(words), "size": size,
                       "communities": {name: counts.get(name, 0) for name in names},
                       "chunk_rows": n_rows})
    settings = json.loads(run[5]) if run[5] else {}
    return TopicSummary(run_id, reused, run[1], run[2], run[3], run[4], topics,
                        notes=list(settings.get("notes", [])), settings=settings)
