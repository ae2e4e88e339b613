"""Reproduce Community-Cross-Instruct's survey result on the paper's own released data
(docs/reproduce.md).

    python benchmarks/reproduce_paper.py RELEASE_DIR [--domain politics] [--base embedded]
        [--steps 16] [--db reproduce.db] [--scoring letter|text]

RELEASE_DIR is a copy of the public repository zihaohe123/community-cross-instruct
(its 3_instruction_generation/ folder is enough).  The script runs the commands a
researcher would, printing each and its output:

1. ``cci-local import`` the release's CommInst and CommSurvey CSVs for the domain;
2. per community, ``cci-local train`` an adapter on its CommInst train rows, once
   on the random split and once on the unseen-topic split;
3. after each, ``cci-local survey --survey <CommSurvey CSV> --split random|topic``
   to base, persona and aligned: the file's held-out rows, with CIs, baselines
   and the verdict in words.

Everything is resumable: a re-run imports nothing twice, reuses finished
adapters and asks no question twice.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path


def communities(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    return [h[len("answer_"):] for h in header if h.startswith("answer_")]


def run(db: Path, *args: str) -> None:
    command = [sys.executable, "-m", "cci_local", "--db", str(db), *args]
    print(f"\n$ cci-local {' '.join(args)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, env=None)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): cci-local {' '.join(args)}")
    print(f"({time.perf_counter() - start:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("release", type=Path, help="the release's folder")
    ap.add_argument("--domain", default="politics", choices=["politics", "fitness"])
    ap.add_argument("--base", default="embedded")
    ap.add_argument("--steps", type=int, default=16, help="training steps per adapter")
    ap.add_argument("--db", type=Path, default=Path("reproduce.db"))
    ap.add_argument("--scoring", default="letter", choices=["letter", "text"])
    args = ap.parse_args()
    folder = args.release / "3_instruction_generation"
    inst = folder / "CommInst" / f"comm_inst_{args.domain}.csv"
    survey = folder / "CommSurvey" / f"comm_survey_{args.domain}.csv"
    for path in (inst, survey):
        if not path.is_file():
            raise SystemExit(f"{path}: not found; RELEASE_DIR must be a copy of "
                             "zihaohe123/community-cross-instruct")
    names = communities(inst)
    print(f"reproducing on {args.domain}: {', '.join(names)}; base {args.base}, "
          f"{args.steps} steps per adapter", flush=True)
    run(args.db, "import", str(inst), str(survey))
    for split in ("random", "topic"):
        for name in names:
            run(args.db, "train", name, "--base", args.base, "--steps", str(args.steps),
                "--split-by", split)
        run(args.db, "survey", *names, "--survey", str(survey), "--split", split,
            "--base", args.base, "--scoring", args.scoring)


if __name__ == "__main__":
    main()
