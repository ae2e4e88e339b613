"""The privacy audit (cci_local/evaluate/audit.py): its statistics on known inputs,
and on real adapters of the embedded model, trained here with PEFT on keto posts.

The audit must be able to fail: a canary (a sentence no keto post holds) is
planted as the whole answer of K training texts and the adapter trained; the audit
must report those texts as extractable, and with the canary planted in no training
text (K = 0) it must report none of them.  K = 8 of 32 texts, 16 steps at lr 3e-3
(about 4 epochs) reproduce the 16 tokens after an 8-token prefix reliably on the
135M model; ordinary posts, seen 4 times each, are not reproduced.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CORPUS_2022, cci

from cci_local.evaluate.audit import (
    AuditError,
    AuditOptions,
    auc,
    audit,
    latest_audit,
    tpr_at_fpr,
    wilson,
)
from cci_local.generate import template_pairs
from cci_local.ingest import ingest
from cci_local.store import open_store

CANARY = ("the violet lighthouse keeper Quimby Ostrander counts 4817 brass marbles every "
          "Tuesday at dawn before feeding his seven grey herons")
TRAIN = ("train", "keto", "--kind", "template", "--max-examples", "32", "--steps", "16",
         "--lr", "3e-3", "--batch-size", "8", "--micro-batch", "8", "--max-len", "96",
         "--rank", "8", "--alpha", "16", "--dedup", "none")  # no mitigation: the bare risk
# free answers of 128 tokens (the default); a span of 60 characters counts (the canary
# is 126; the trained model was seen to write 84 of it, unprompted by any prefix)
OPTIONS = AuditOptions(samples=32, prefix=8, suffix=16, held_out=24, min_chars=60)


def test_wilson_interval_is_sound_at_zero_and_at_all():
    none = wilson(0, 10)
    assert none.value == 0 and none.low == 0 and 0.25 < none.high < 0.31
    every = wilson(10, 10)
    assert every.value == 1 and every.high == pytest.approx(1) and 0.69 < every.low < 0.75
    half = wilson(50, 100)
    assert half.low == pytest.approx(1 - half.high) and 0.39 < half.low < 0.41


def test_auc_and_tpr_at_low_fpr():
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    others = np.arange(200.0)  # 1% of 200: two non-members may score above the threshold
    assert tpr_at_fpr(np.array([198.5, 199.5, 300.0, 0.0]), others) == 0.75
    assert tpr_at_fpr(np.array([197.5]), others) == 1.0  # above 197: 198 and 199 only
    assert tpr_at_fpr(np.array([196.5]), others) == 0.0


def _trained(folder, planted: int):
    db_path = folder / "a.db"
    db = open_store(db_path)
    ingest(db, [str(CORPUS_2022)])
    template_pairs(db)
    ids = [i for (i,) in db.execute(
        "SELECT i.id FROM instructions i JOIN community_answers a ON a.instruction_id = i.id"
        " WHERE a.community = 'keto' AND i.kind = 'template' AND i.split = ? ORDER BY i.id",
        ["train"])]
    # train() keeps a seeded sample of 32: plant the canary in texts of that sample
    keep = np.sort(np.random.default_rng(0).permutation(len(ids))[:32])
    chosen = [ids[i] for i in keep][:planted]
    with db.conn:
        db.conn.executemany("UPDATE community_answers SET answer = ? WHERE instruction_id = ?"
                            " AND community = 'keto'", [(CANARY, i) for i in chosen])
        # the posts those template pairs copy say it too (free answers are matched to posts)
        db.conn.executemany("UPDATE documents SET text = ? WHERE id = (SELECT substr(source, 10)"
                            " FROM instructions WHERE id = ?)", [(CANARY, i) for i in chosen])
    db.conn.close()
    cci(*TRAIN, db=db_path)
    return open_store(db_path), chosen


@pytest.mark.slow
def test_audit_finds_a_planted_canary_and_only_then(tmp_path):
    db, planted = _trained(tmp_path / "k8", planted=8)
    result = audit(db, "keto", "embedded", OPTIONS)
    found = {e["instruction_id"] for e in result.extracted}
    assert set(planted) <= found, (planted, result.as_dict())
    assert not any(e["base_also"] for e in result.extracted if e["instruction_id"] in planted)
    assert result.extraction["aligned"].value >= 8 / 32
    assert result.extraction["base"].value < result.extraction["aligned"].low
    # free answers were checked against every post through the span index (its accuracy
    # is tested in test_leakage.py); whether the 135M model writes the canary unprompted
    # is not reliable (84 characters in one run, 28-33 in others), so not asserted here
    assert result.leakage["index"]["documents"] > 1000
    assert result.leakage["base"]["share"].n == 32
    stored = latest_audit(db, result.adapter_id)
    assert stored["extractable"] == len(found)

    # resumable: every model call's result is stored, a re-run makes none (nor a row)
    calls = db.execute("SELECT count(*) FROM audit_items").fetchone()[0]
    again = audit(db, "keto", "embedded", OPTIONS)
    assert db.execute("SELECT count(*) FROM audit_items").fetchone()[0] == calls
    assert db.execute("SELECT count(*) FROM audits").fetchone()[0] == 1
    assert again.as_dict()["extraction"] == result.as_dict()["extraction"]

    # the CLI shows the documents by id, never an author
    args = ("--samples", "32", "--held-out", "24", "-k", "8", "-m", "16", "--min-chars", "60")
    shown = cci("audit", "keto", *args, db=tmp_path / "k8" / "a.db").stdout
    assert "training texts extracted word for word" in shown and "document" in shown
    as_json = json.loads(cci("audit", "keto", *args, "--json", db=tmp_path / "k8" / "a.db").stdout)
    assert as_json["audits"][0]["extracted"]
    # the gate: neither served nor exported with a Modelfile, unless --allow-leaky
    refused = cci("serve", "keto", "--print", "--config", str(tmp_path / "s.json"),
                  db=tmp_path / "k8" / "a.db", check=False)
    assert refused.returncode == 2 and "refused to serve: r/keto's adapter" in refused.stderr
    assert not (tmp_path / "s.json").exists()
    refused = cci("adapters", "export", "keto", "-o", str(tmp_path / "out"),
                  db=tmp_path / "k8" / "a.db", check=False)
    assert refused.returncode == 2 and not (tmp_path / "out").exists()

    db0, _ = _trained(tmp_path / "k0", planted=0)
    clean = audit(db0, "keto", "embedded", OPTIONS)
    assert not clean.extracted, clean.as_dict()
    assert clean.extraction["aligned"].high < 0.15
    passed = cci("adapters", "export", "keto", "-o", str(tmp_path / "out"), db=tmp_path / "k0"
                 / "a.db").stdout
    assert "extracted 0/" in passed and (tmp_path / "out" / "keto" / "Modelfile").is_file()

    # texts changed since training: the audit refuses and stores nothing
    audits = db0.execute("SELECT count(*) FROM audits").fetchone()[0]
    with db0.conn:
        db0.conn.execute("UPDATE community_answers SET answer = 'changed' WHERE instruction_id"
                         " = ?", [_first_trained(db0)])
    with pytest.raises(AuditError, match="no longer the ones"):
        audit(db0, "keto", "embedded", OPTIONS)
    assert db0.execute("SELECT count(*) FROM audits").fetchone()[0] == audits


def _first_trained(db) -> int:
    return db.execute("SELECT instruction_id FROM audit_items WHERE split = 'train'"
                      " ORDER BY instruction_id LIMIT 1").fetchone()[0]
