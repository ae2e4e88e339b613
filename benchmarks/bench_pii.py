"""Personal data on ingest: precision and recall per entity, and what scrubbing costs.

  quality     precision and recall of cci_local/ingest/pii.py per entity on the
              labelled file tests/fixtures/pii_labelled.jsonl (names with --names)
  ingest      ingest of the shared keto/nutrition CSVs in process (files under
              PARALLEL_MIN_BYTES), with and without scrubbing: seconds and the ratio
  pool        the same texts resampled into an NDJSON dump read by worker processes
              (--workers), with and without scrubbing
  scrub       `cci-local scrub` (rescrub()) over a store ingested with --keep-pii

Each timing is the median of --repeat runs, with and without scrubbing in turn, so
a busy machine slows both alike.

  python benchmarks/bench_pii.py [--repeat 3] [--pool-records 60000] [--workers 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("CCI_LOCAL_SHARED", ROOT.parent / "shared"))
REDDIT = SHARED / "data" / "reddit"
FIXTURE = ROOT / "tests" / "fixtures" / "pii_labelled.jsonl"


def quality(names: bool) -> None:
    from cci_local.ingest.pii_eval import evaluate, load_labelled

    examples = load_labelled(FIXTURE)
    print(f"quality on {FIXTURE.relative_to(ROOT)} ({len(examples)} texts)")
    print(f"  {'entity':8} {'precision':>9} {'recall':>7} {'found':>6} {'labelled':>8}")
    for entity, r in evaluate(examples, names=names).items():
        print(f"  {entity:8} {r['precision']:9.3f} {r['recall']:7.3f} {r['found']:6d}"
              f" {r['labelled']:8d}")


def _corpus_files() -> list[str]:
    files = sorted(str(p) for p in REDDIT.rglob("*.csv"))
    if not files:
        sys.exit(f"no CSV files under {REDDIT}: set CCI_LOCAL_SHARED to the shared folder")
    return files


def _time_ingest(paths: list[str], pii: bool, workers: int) -> tuple[float, int, dict]:
    from cci_local.ingest import CleanOptions, ingest
    from cci_local.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        db = open_store(Path(tmp) / "bench.db")
        started = time.perf_counter()
        report = ingest(db, paths, options=CleanOptions(pii=pii), workers=workers)
        seconds = time.perf_counter() - started
        db.conn.close()
    return seconds, report.total("records"), dict(report.pii())


def compare(label: str, paths: list[str], repeat: int, workers: int) -> None:
    runs = {False: [], True: []}
    for _ in range(repeat):
        for pii in (False, True):
            seconds, records, replaced = _time_ingest(paths, pii, workers)
            runs[pii].append(seconds)
    plain, scrubbed = statistics.median(runs[False]), statistics.median(runs[True])
    print(f"{label}: {records:,} records, workers={workers}")
    print(f"  without scrubbing {plain:6.2f} s  {records / plain:9,.0f} records/s")
    print(f"  with scrubbing    {scrubbed:6.2f} s  {records / scrubbed:9,.0f} records/s")
    print(f"  ratio {scrubbed / plain:.2f}x the time; replaced {replaced}")


def build_dump(path: Path, n: int) -> None:
    csv.field_size_limit(2**31 - 1)
    texts = []
    for name in _corpus_files():
        with open(name, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                text = row.get("body") or f"{row.get('title', '')}\n{row.get('selftext', '')}"
                if text.strip():
                    texts.append(text)
    rng = random.Random(7)
    with open(path, "wb") as fh:
        for i in range(n):
            fh.write(orjson.dumps({"id": f"b{i:08x}", "subreddit": "keto",
                                   "author": f"member{rng.randrange(50_000)}",
                                   "created_utc": 1640995200 + i,
                                   "body": rng.choice(texts)}) + b"\n")


def scrub_speed() -> None:
    from cci_local.ingest import CleanOptions, ingest
    from cci_local.ingest.scrub import rescrub
    from cci_local.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        db = open_store(Path(tmp) / "kept.db")
        ingest(db, _corpus_files(), options=CleanOptions(pii=False), workers=1)
        first = rescrub(db)
        second = rescrub(db)
    print(f"scrub: {first.documents:,} documents in {first.seconds:.2f} s "
          f"({first.documents / first.seconds:,.0f}/s), {first.changed:,} rewritten, "
          f"replaced {dict(first.pii)}; a second run rewrote {second.changed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pool-records", type=int, default=60_000,
                        help="records in the dump read by worker processes (0: skip)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--names", action="store_true", help="Evaluate names too.")
    args = parser.parse_args()
    quality(args.names)
    compare("ingest, in process", _corpus_files(), args.repeat, workers=1)
    if args.pool_records:
        import cci_local.ingest as ingest_module

        with tempfile.TemporaryDirectory() as tmp:
            dump = Path(tmp) / "dump.ndjson"
            build_dump(dump, args.pool_records)
            ingest_module.PARALLEL_MIN_BYTES = 0
            compare("ingest, worker processes", [str(dump)], args.repeat, args.workers)
    scrub_speed()


if __name__ == "__main__":
    main()
