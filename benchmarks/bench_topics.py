"""Topics on 100,000 documents: embed + cluster throughput, peak RSS, and
embedding throughput against raw WordLlama on the same texts.

Documents are the shared keto/nutrition posts and comments, resampled (with a
short random suffix so no two are identical) into a fresh store.  Each
measurement runs in its own process so peak RSS is its own.

Target (issue 4): cci-local's embedding (including writing the vectors to the
store's cache) >= 80% of raw WordLlama's throughput.

A second store resamples only the r/keto texts, split into two pseudo-communities
by a hash of the text: communities that share a domain, where the clustering
must split a dominant topic (issue 19).  Its clustering time is reported too.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
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


def build_store(path: Path, n: int, same_domain: bool = False) -> None:
    from cci_local.ingest.clean import clean_text
    from cci_local.store import open_store

    csv.field_size_limit(2**31 - 1)
    rows = []
    for name in ("keto_comments.csv", "nutrition_comment.csv", "keto_subs.csv",
                 "nutrition_subs.csv"):
        with open(POSTS / name, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                text = r.get("body") or f"{r.get('title', '')}\n{r.get('selftext', '')}"
                if same_domain and r["subreddit"] != "keto":
                    continue
                text = clean_text(text)
                half = hashlib.sha256(text.encode()).digest()[0] % 2
                rows.append((f"keto_{'ab'[half]}" if same_domain else r["subreddit"], text))
    rng = random.Random(11)
    words = "today really also though maybe again honestly anyway lately".split()
    db = open_store(path)
    for name in sorted({community for community, _ in rows}):
        db.execute("INSERT INTO communities VALUES (?, 0)", [name])
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
        sizes = [t["size"] for t in summary.topics]
        result["largest_share"] = max(sizes) / sum(sizes)
        # (getattr: the same script times a checkout from before runs kept settings)
        result["split"] = getattr(summary, "settings", {}).get("degenerate", {}).get("splits", [])
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
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, same_domain in (("raw", False), ("ours", False), ("same_domain", True)):
            store = Path(tmp) / f"bench-{same_domain}.db"
            if not store.exists():
                build_store(store, args.documents, same_domain)
            out = subprocess.run([sys.executable, __file__, "--child",
                                  "raw" if kind == "raw" else "ours", str(store)],
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
            results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    raw, ours, same = results["raw"], results["ours"], results["same_domain"]
    n = ours["documents"]
    raw_rate = n / raw["embed_seconds"]
    our_rate = n / ours["embed_seconds"]
    total = ours["embed_seconds"] + ours["cluster_seconds"]
    print(f"topics benchmark: {n:,} documents (resampled shared texts), WordLlama, UMAP, HDBSCAN")
    print(f"  raw WordLlama embed       {raw_rate:>8,.0f} docs/s  "
          f"peak RSS {raw['peak_rss_mb']:.0f} MB")
    print(f"  cci-local embed + cache   {our_rate:>8,.0f} docs/s")
    for label, r in (("cluster", ours), ("cluster, r/keto halves", same)):
        split = "; split: " + ", ".join(f"{s['share']:.0%} into {s['into']} ({s['method']})"
                                         for s in r["split"]) if r.get("split") else ""
        print(f"  cci-local {label:<22}{r['cluster_seconds']:>6.1f} s "
              f"({r['topics']} topics, largest {r['largest_share']:.0%}, "
              f"{r['outliers']:,} outliers, {r['chunk_rows']} chunk rows, silhouette "
              f"{r['silhouette'][0]:.2f} vs {r['silhouette'][1]:.2f} shuffled{split})")
    print(f"  embed + cluster           {n / total:>8,.0f} docs/s ({total:.0f} s)  "
          f"peak RSS {ours['peak_rss_mb']:.0f} MB")
    ratio = our_rate / raw_rate
    print(f"  embedding / raw WordLlama: {ratio:.0%} (target >= 80%): "
          f"{'ok' if ratio >= 0.8 else 'MISSED'}")


if __name__ == "__main__":
    main()
