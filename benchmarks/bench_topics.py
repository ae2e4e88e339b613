"""Topics on 100,000 documents: embed + cluster throughput, peak RSS, and
embedding throughput against raw WordLlama on the same texts.

Documents are the shared keto/nutrition posts and comments, resampled (with a
short random suffix so no two are identical) into a fresh store.  Each
measurement runs in its own process so peak RSS is its own.

Target (issue 4): cci-local's embedding (including writing the vectors to the
store's cache) >= 80% of raw WordLlama's throughput.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import peak_rss_mb

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("CCI_LOCAL_SHARED", HERE.parent.parent / "shared"))
POSTS = SHARED / "data" / "reddit" / "keto_nutrition_posts_comments"


def build_store(path: Path, n: int) -> None:
    from cci_local.ingest.clean import clean_text
    from cci_local.store import open_store

    csv.field_size_limit(2**31 - 1)
    rows = []
    for name in ("keto_comments.csv", "nutrition_comment.csv", "keto_subs.csv",
                 "nutrition_subs.csv"):
        with open(POSTS / name, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                text = r.get("body") or f"{r.get('title', '')}\n{r.get('selftext', '')}"
                rows.append((r["subreddit"], clean_text(text)))
    rng = random.Random(11)
    words = "today really also though maybe again honestly anyway lately".split()
    db = open_store(path)
    db.execute("INSERT INTO communities VALUES ('keto', 0), ('nutrition', 0)")
    batch = []
    for i in range(n):
        community, text = rng.choice(rows)
        batch.append((f"b{i:07d}", community, "comment", f"{text} {rng.choice(words)} {i % 97}"))
    db.conn.executemany("INSERT INTO documents (id, community, kind, text) VALUES (?,?,?,?)",
                        batch)
    db.conn.commit()


def child(kind: str, store: str) -> dict:
    from cci_local.store import open_store

    db = open_store(store)
    ids, texts = zip(*db.execute("SELECT id, text FROM documents ORDER BY id").fetchall(),
                     strict=True)
    result = {"documents": len(ids)}
    if kind == "raw":
        from cci_local.embed import WordLlamaEmbedder

        model = WordLlamaEmbedder().model  # the same weights, called directly
        start = time.perf_counter()
        model.embed(list(texts), norm=True)
        result["embed_seconds"] = time.perf_counter() - start
    else:
        from cci_local.embed import embed_documents
        from cci_local.topics import TopicParams, fit_topics

        start = time.perf_counter()
        embed_documents(db, "wordllama", list(ids), list(texts))
        result["embed_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        summary = fit_topics(db, params=TopicParams())  # vectors now come from the cache
        result["cluster_seconds"] = time.perf_counter() - start
        result["topics"] = len(summary.topics)
        result["outliers"] = summary.n_outliers
        result["chunk_rows"] = sum(t["chunk_rows"] for t in summary.topics)
        result["silhouette"] = [summary.silhouette, summary.silhouette_shuffled]
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--documents", type=int, default=100_000)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "bench.db"
        build_store(store, args.documents)
        results = {}
        for kind in ("raw", "ours"):
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(store)],
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
            results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    raw, ours = results["raw"], results["ours"]
    n = ours["documents"]
    raw_rate = n / raw["embed_seconds"]
    our_rate = n / ours["embed_seconds"]
    total = ours["embed_seconds"] + ours["cluster_seconds"]
    print(f"topics benchmark: {n:,} documents (resampled shared texts), WordLlama, UMAP, HDBSCAN")
    print(f"  raw WordLlama embed       {raw_rate:>8,.0f} docs/s  "
          f"peak RSS {raw['peak_rss_mb']:.0f} MB")
    print(f"  cci-local embed + cache   {our_rate:>8,.0f} docs/s")
    print(f"  cci-local cluster         {ours['cluster_seconds']:>8.1f} s "
          f"({ours['topics']} topics, {ours['outliers']:,} outliers, "
          f"{ours['chunk_rows']} chunk rows, silhouette {ours['silhouette'][0]:.2f} vs "
          f"{ours['silhouette'][1]:.2f} shuffled)")
    print(f"  embed + cluster           {n / total:>8,.0f} docs/s ({total:.0f} s)  "
          f"peak RSS {ours['peak_rss_mb']:.0f} MB")
    ratio = our_rate / raw_rate
    print(f"  embedding / raw WordLlama: {ratio:.0%} (target >= 80%): "
          f"{'ok' if ratio >= 0.8 else 'MISSED'}")


if __name__ == "__main__":
    main()
