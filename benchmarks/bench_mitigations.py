"""The trainer's privacy mitigations, each measured by the audit on the canary setup
of tests/test_audit.py (docs/method.md#mitigations, docs/performance.md#mitigations).

A canary sentence is planted as the whole answer of 8 of 32 keto template pairs
(the seeded sample train keeps; the other keto training pairs are left out, so
every configuration trains on those 32, less what it removes); 16 steps of 8 at
lr 3e-3, then `audit` with k=8, m=16 on 32 training and 24 held-out texts.  Each
configuration trains in a child process (its wall time and peak RSS) and is
audited here, one after another:

    python benchmarks/bench_mitigations.py            # every configuration (~15 min)
    python benchmarks/bench_mitigations.py none dp8   # some of them
    python benchmarks/bench_mitigations.py dedup      # dedup's speed only (20k, 100k texts)

`variants` plants 8 near copies of the canary (its number 4811..4818) instead of 8
exact ones: what exact dedup misses and near dedup finds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

CANARY = ("the violet lighthouse keeper Quimby Ostrander counts 4817 brass marbles every "
          "Tuesday at dawn before feeding his seven grey herons")
TRAIN = ("train", "keto", "--kind", "template", "--max-examples", "32", "--steps", "16",
         "--lr", "3e-3", "--batch-size", "8", "--micro-batch", "8", "--max-len", "96",
         "--rank", "8", "--alpha", "16")
# name: (planted canaries, extra train options)
CONFIGS = {
    "none": ("exact", ("--dedup", "none")),
    "exact": ("exact", ("--dedup", "exact")),
    "near": ("exact", ("--dedup", "near")),
    "variants-exact": ("variants", ("--dedup", "exact")),
    "variants-near": ("variants", ("--dedup", "near")),
    "template-epochs-1": ("exact", ("--dedup", "none", "--template-epochs", "1")),
    "dp8": ("exact", ("--dedup", "none", "--dp-epsilon", "8")),
    "dp1": ("exact", ("--dedup", "none", "--dp-epsilon", "1")),
}


def _store(folder: Path, planted: str) -> tuple[Path, list[int]]:
    from conftest import CORPUS_2022

    from cci_local.generate import template_pairs
    from cci_local.ingest import ingest
    from cci_local.store import open_store

    db_path = folder / "a.db"
    db = open_store(db_path)
    ingest(db, [str(CORPUS_2022)])
    template_pairs(db)
    ids = [i for (i,) in db.execute(
        "SELECT i.id FROM instructions i JOIN community_answers a ON a.instruction_id = i.id"
        " WHERE a.community = 'keto' AND i.kind = 'template' AND i.split = 'train'"
        " ORDER BY i.id")]
    keep = [ids[i] for i in np.sort(np.random.default_rng(0).permutation(len(ids))[:32])]
    chosen = keep[:8]
    texts = [CANARY if planted == "exact" else CANARY.replace("4817", f"481{k + 1}")
             for k in range(8)]
    with db.conn:
        db.conn.executemany("DELETE FROM community_answers WHERE instruction_id = ? AND"
                            " community = 'keto'", [(i,) for i in set(ids) - set(keep)])
        db.conn.executemany("UPDATE community_answers SET answer = ? WHERE instruction_id = ?"
                            " AND community = 'keto'", list(zip(texts, chosen, strict=True)))
        db.conn.executemany("UPDATE documents SET text = ? WHERE id = (SELECT substr(source, 10)"
                            " FROM instructions WHERE id = ?)", list(zip(texts, chosen,
                                                                         strict=True)))
    db.conn.close()
    return db_path, chosen


def measure(name: str, folder: Path) -> dict:
    from cci_local.evaluate.audit import AuditOptions, audit
    from cci_local.store import open_store

    planted, extra = CONFIGS[name]
    db_path, chosen = _store(folder, planted)
    start = time.perf_counter()
    run = subprocess.run(["/usr/bin/time", "-f", "peak-kib %M", sys.executable, "-m",
                          "cci_local", "--db", str(db_path), *TRAIN, *extra],
                         capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode:
        raise SystemExit(f"{name}: train failed\n{run.stdout}\n{run.stderr}")
    peak = int(run.stderr.rsplit("peak-kib ", 1)[1].split()[0]) / 2**20
    db = open_store(db_path)
    row = db.execute("SELECT examples, steps, final_loss, settings FROM adapters").fetchone()
    settings = json.loads(row[3])
    result = audit(db, "keto", "embedded",
                   AuditOptions(samples=32, prefix=8, suffix=16, held_out=24))
    found = {e["instruction_id"] for e in result.extracted}
    removed = settings.get("dedup_removed", {})
    return {"name": name, "examples": row[0], "steps": row[1], "final_loss": row[2],
            "removed": removed.get("exact", 0) + removed.get("near", 0),
            "extracted": len(found), "canaries_extracted": len(found & set(chosen)),
            "rate": result.extraction["aligned"].value,
            "auc": result.membership["auc"].value, "auc_low": result.membership["auc"].low,
            "auc_high": result.membership["auc"].high,
            "epsilon": (settings.get("dp") or {}).get("epsilon_spent"),
            "sigma": (settings.get("dp") or {}).get("noise_multiplier"),
            "train_s": seconds, "peak_gib": peak}


def dedup_speed() -> None:
    """dedup near on 20,000 and 100,000 random texts of 40-120 words (~480 characters,
    the shared keto posts' mean is 510) with 5% near copies (one word changed)."""
    from test_mitigations import _synthetic

    from cci_local.train.dedup import dedup

    for n in (20_000, 100_000):
        texts, copies = _synthetic(n, n // 20)
        start = time.perf_counter()
        result = dedup(texts, "near")
        seconds = time.perf_counter() - start
        found = len(set(copies) - set(result.keep))
        print(f"dedup near: {len(texts):,} texts in {seconds:.2f} s; {found:,} of "
              f"{len(copies):,} near copies removed, {result.removed - found} others",
              flush=True)


def main(names: list[str]) -> None:
    if names == ["dedup"]:
        return dedup_speed()
    rows = []
    for name in names or list(CONFIGS):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(measure(name, Path(tmp)))
        r = rows[-1]
        print(f"{name}: {r['examples']} examples ({r['removed']} removed), {r['steps']} steps,"
              f" extracted {r['extracted']}/32 (canaries {r['canaries_extracted']}/8), AUC "
              f"{r['auc']:.2f}, {r['train_s']:.0f} s, {r['peak_gib']:.2f} GiB", flush=True)
    print("\n| configuration | examples (removed) | steps | extracted of 32 (canaries of 8) |"
          " membership AUC [95% CI] | epsilon (sigma) | train s | peak RSS GiB | final loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        eps = f"{r['epsilon']:.2f} ({r['sigma']:.2f})" if r["epsilon"] is not None else "-"
        print(f"| {r['name']} | {r['examples']} ({r['removed']}) | {r['steps']} | "
              f"{r['extracted']} ({r['canaries_extracted']}) | {r['auc']:.2f} "
              f"[{r['auc_low']:.2f}, {r['auc_high']:.2f}] | {eps} | {r['train_s']:.0f} | "
              f"{r['peak_gib']:.2f} | {r['final_loss']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
