"""The privacy gate before an adapter leaves the store: `serve` and `adapters export`
(the only writer of an Ollama Modelfile) show each adapter's audit or say none ran,
and refuse an adapter whose audit found extractable training texts unless
--allow-leaky.  Real GGUF adapters (random low-rank weights from the trainer's
exporter, registered as training registers them); the audit rows are written by the
audit's own save_audit() from results built here (the audit that finds a real
planted canary, and the gate refusing it, is in test_audit.py)."""

from __future__ import annotations

import json

from conftest import cci
from test_serve import store_with_adapters

from cci_local.evaluate.audit import AuditOptions, AuditResult, save_audit, wilson
from cci_local.store import open_store


def _audited(store, community: str, extracted: list[dict], tested: int = 10) -> None:
    db = open_store(store)
    adapter_id = db.execute("SELECT id FROM adapters WHERE community = ?",
                            [community]).fetchone()[0]
    result = AuditResult(community, adapter_id, AuditOptions())
    leaked = sum(not e["base_also"] for e in extracted)
    result.extraction = {"aligned": wilson(len(extracted), tested),
                         "base": wilson(len(extracted) - leaked, tested)}
    result.membership = {"auc": wilson(6, 10)}  # any Estimate: the gate prints it
    result.extracted = extracted
    save_audit(db, result)
    db.close()


def test_serve_says_when_no_audit_ran_and_refuses_a_leaky_adapter(tmp_path):
    store = store_with_adapters(tmp_path)
    config = tmp_path / "serve.json"
    shown = cci("serve", "r/keto", "r/nutrition", "--print", "--config", str(config), db=store)
    assert "r/keto (adapter 1): no privacy audit has run" in shown.stdout
    assert "cci-local audit r/keto" in shown.stdout and config.exists()
    config.unlink()

    _audited(store, "keto", [])
    _audited(store, "nutrition", [{"instruction_id": 7, "document_id": "t3_abc",
                                   "kind": "template", "base_also": False},
                                  {"instruction_id": 9, "document_id": None, "kind": "open",
                                   "base_also": True}])
    refused = cci("serve", "r/keto", "r/nutrition", "--print", "--config", str(config),
                  db=store, check=False)
    assert refused.returncode == 2 and not config.exists()
    assert "refused to serve: r/nutrition's adapter 2 reproduces 1 training text(s) word for " \
           "word (document t3_abc)" in refused.stderr
    assert "--allow-leaky" in refused.stderr and "instruction 9" not in refused.stderr

    allowed = cci("serve", "r/keto", "r/nutrition", "--print", "--config", str(config),
                  "--allow-leaky", db=store)
    assert config.exists()
    assert "r/keto (adapter 1), audited" in allowed.stdout
    assert "extracted 0/10 training texts 0.00 [0.00, 0.28] (base 0/10)" in allowed.stdout
    assert "r/nutrition (adapter 2), audited" in allowed.stdout
    assert "extracted 2/10" in allowed.stdout and "(base 1/10)" in allowed.stdout
    # a clean community alone passes the gate
    assert cci("serve", "r/keto", "--print", "--config", str(config), db=store).returncode == 0


def test_adapters_export_writes_the_modelfile_only_past_the_gate(tmp_path):
    store = store_with_adapters(tmp_path)
    out = tmp_path / "shared"
    first = cci("adapters", "export", "r/keto", "-o", str(out), db=store)
    assert "no privacy audit has run" in first.stdout
    folder = out / "keto"
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "adapter.gguf",
                                                        "provenance.json"]
    lines = (folder / "Modelfile").read_text().splitlines()
    assert lines[0].startswith("FROM ") and lines[1] == f"ADAPTER {folder / 'adapter.gguf'}"
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["community"] == "keto" and provenance["audit"] is None
    assert len(provenance["adapter_sha256"]) == 64
    db = open_store(store)
    assert db.execute("SELECT modelfile FROM adapters WHERE community = 'keto'"
                      ).fetchone()[0] == str(folder / "Modelfile")
    db.close()

    _audited(store, "nutrition", [{"instruction_id": 7, "document_id": "t3_abc",
                                   "kind": "template", "base_also": False}])
    refused = cci("adapters", "export", "r/keto", "r/nutrition", "-o", str(tmp_path / "x"),
                  db=store, check=False)
    assert refused.returncode == 2 and "refused to export" in refused.stderr
    assert not (tmp_path / "x").exists()  # nothing written, not even the clean one
    cci("adapters", "export", "r/nutrition", "-o", str(out), "--allow-leaky", db=store)
    provenance = json.loads((out / "nutrition" / "provenance.json").read_text())
    assert provenance["allow_leaky"] is True
    assert provenance["audit"]["extracted"][0]["document_id"] == "t3_abc"
