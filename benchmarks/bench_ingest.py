"""Ingest throughput and memory on a 1,000,000-record NDJSON .zst dump.

The dump is built by resampling the shared keto/nutrition texts into Pushshift-shaped
comment and submission records (cached under benchmarks/.cache/).  Each measurement
runs in a fresh child process so peak RSS is its own:

  baseline  decompress + orjson parse + executemany of the same rows into a plain table
  ingest    cci-local's ingest (sniffing, validation, cleaning, pseudonymising, provenance)

Targets (issue 2): ingest >= 50% of baseline throughput; peak RSS < 300 MB.

Files written with `zstd --long=31` (as Arctic Shift's are) oblige any decoder to
keep up to 2 GiB of decompressed history: their RSS grows to min(2 GiB, file size)
in the bare baseline too, so the second case also prints what ingest adds to it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import zstandard
from common import peak_rss_mb  # benchmarks/ is on sys.path when a script runs

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
SHARED = Path(os.environ.get("CCI_LOCAL_SHARED", HERE.parent.parent / "shared"))
POSTS = SHARED / "data" / "reddit" / "keto_nutrition_posts_comments"


def build_dump(path: Path, n: int, window_log: int) -> None:
    csv.field_size_limit(2**31 - 1)
    texts = []
    for name in ("keto_comments.csv", "nutrition_comment.csv", "keto_subs.csv",
                 "nutrition_subs.csv"):
        with open(POSTS / name, newline="", encoding="utf-8") as fh:
            texts.extend(csv.DictReader(fh))
    rng = random.Random(7)
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=window_log, enable_ldm=window_log > 27)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as fh, zstandard.ZstdCompressor(
            compression_params=params).stream_writer(fh) as out:
        lines = []
        for i in range(n):
            row = rng.choice(texts)
            record = {
                "id": f"b{i:08x}", "subreddit": row["subreddit"],
                "author": f"member{rng.randrange(50_000)}",
                "created_utc": 1640995200 + i * 31, "score": rng.randrange(-5, 400),
                "retrieved_on": 1700000000, "edited": False, "gilded": 0, "stickied": False,
                "distinguished": None, "author_flair_text": None,
            }
            if "body" in row:
                record.update(body=row["body"], link_id=f"t3_p{i // 40:07x}",
                              parent_id=f"t3_p{i // 40:07x}")
            else:
                record.update(title=row["title"], selftext=row["selftext"],
                              num_comments=rng.randrange(80))
            lines.append(orjson.dumps(record))
            if len(lines) == 10_000:
                out.write(b"\n".join(lines) + b"\n")
                lines.clear()
        if lines:
            out.write(b"\n".join(lines) + b"\n")
    tmp.rename(path)


def child_baseline(dump: Path, db_path: Path) -> dict:
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE docs (id TEXT, subreddit TEXT, text TEXT, created_utc INTEGER,"
                 " score INTEGER, link_id TEXT, parent_id TEXT, author TEXT)")
    dctx = zstandard.ZstdDecompressor(max_window_size=2**31)
    rows, n = [], 0
    with open(dump, "rb") as fh:
        stream = io.BufferedReader(dctx.stream_reader(fh, read_across_frames=True), 1 << 16)
        for line in stream:
            r = orjson.loads(line)
            text = r.get("body") or f"{r.get('title', '')}\n{r.get('selftext', '')}"
            rows.append((r["id"], r["subreddit"], text, r["created_utc"], r["score"],
                         r.get("link_id"), r.get("parent_id"), r["author"]))
            if len(rows) == 5000:
                conn.executemany("INSERT INTO docs VALUES (?,?,?,?,?,?,?,?)", rows)
                conn.commit()
                n += len(rows)
                rows.clear()
    conn.executemany("INSERT INTO docs VALUES (?,?,?,?,?,?,?,?)", rows)
    conn.commit()
    return {"records": n + len(rows), "stored": n + len(rows)}


def child_ingest(dump: Path, db_path: Path) -> dict:
    from cci_local.ingest import ingest
    from cci_local.store import open_store

    report = ingest(open_store(db_path), [str(dump)])
    return {"records": report.total("records"), "stored": report.total("added")}


def run_child(kind: str, dump: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, __file__, "--child", kind, str(dump),
                              str(Path(tmp) / "b.db")], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{kind} failed:\n{out.stderr}")
        return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--child", nargs=3, metavar=("KIND", "DUMP", "DB"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, dump, db = args.child
        start = time.perf_counter()
        result = (child_baseline if kind == "baseline" else child_ingest)(Path(dump), Path(db))
        result["seconds"] = time.perf_counter() - start
        result["peak_rss_mb"] = peak_rss_mb()
        # Worker processes (joined by now); forked, so this includes pages shared with us.
        result["worker_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(json.dumps(result))
        return

    CACHE.mkdir(exist_ok=True)
    small_window_rss = 0.0
    print(f"ingest benchmark: {args.records:,} records, NDJSON .zst (resampled shared texts)")
    for label, window_log in (("zstd -3 (8 MiB window)", 23),
                              ("zstd -3 --long=31 (Arctic Shift style)", 31)):
        dump = CACHE / f"bench_{args.records}_w{window_log}.ndjson.zst"
        if not dump.exists():
            t = time.perf_counter()
            build_dump(dump, args.records, window_log)
            print(f"  built {dump.name} ({dump.stat().st_size / 2**20:.0f} MiB) "
                  f"in {time.perf_counter() - t:.0f} s")
        base = run_child("baseline", dump)
        ours = run_child("ingest", dump)
        base_rate = base["records"] / base["seconds"]
        our_rate = ours["records"] / ours["seconds"]
        print(f"\n  {label}: {dump.stat().st_size / 2**20:.0f} MiB compressed")
        print(f"  {'':10} {'records/s':>10} {'seconds':>8} {'stored':>10} {'peak RSS':>9}")
        for name, r, rate in (("baseline", base, base_rate), ("ingest", ours, our_rate)):
            print(f"  {name:10} {rate:>10,.0f} {r['seconds']:>8.1f} {r['stored']:>10,} "
                  f"{r['peak_rss_mb']:>6.0f} MB")
        if ours["worker_rss_mb"]:
            print(f"  {'':10} worker processes: peak RSS {ours['worker_rss_mb']:.0f} MB each")
        ratio = our_rate / base_rate
        rss = ours["peak_rss_mb"]
        note = ""
        if window_log > 27:  # the decoder's window is the format's, not ours
            window = base["peak_rss_mb"] - small_window_rss
            rss -= window
            note = f" after taking off the {window:.0f} MB zstd window that the baseline holds too"
        else:
            small_window_rss = base["peak_rss_mb"]
        verdict = ("ok" if rss < 300 else "MISSED") + note
        print(f"  ingest / baseline throughput: {ratio:.0%} (target >= 50%): "
              f"{'ok' if ratio >= 0.5 else 'MISSED'}; peak RSS {rss:.0f} MB "
              f"(target < 300 MB): {verdict}")


if __name__ == "__main__":
    main()
