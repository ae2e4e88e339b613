"""Adapters leaving the store: `cci-local adapters export` copies a community's
adapter (GGUF LoRA, PEFT folder) with an Ollama Modelfile and its provenance, after
the privacy gate (cci_local/gate.py) has shown its audit or refused it.

This is the only place a Modelfile is written: a Modelfile is how an adapter is
shared with Ollama, so it is written only past the gate."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import sqlite_utils

from .errors import CciError


class AdapterError(CciError):
    """An adapter cannot be exported or imported: the message says what to do."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_adapter(db: sqlite_utils.Database, community: str, base: str, out_dir: str | Path,
                   *, allow_leaky: bool = False) -> dict:
    """Copy ``community``'s newest adapter on ``base`` to ``out_dir``/<community>/:
    adapter.gguf, the PEFT folder when the trainer wrote one, a Modelfile and
    provenance.json (settings, data hash, the audit's figures).  The gate runs first:
    LeakyAdapter (nothing written) when its audit found extractable training texts,
    unless ``allow_leaky``.  Returns the folder, the files and the gate's line."""
    from .evaluate.audit import latest_audit
    from .gate import clear
    from .respondents import newest_adapter
    from .store import find_community
    from .train import resolve_base
    from .train.gguf_lora import modelfile

    name = find_community(db, community)
    if name is None:
        raise AdapterError(f"no community {community!r} in the store")
    resolved = resolve_base(base)
    adapter = newest_adapter(db, name, resolved)
    if adapter is None:
        raise AdapterError(f"r/{name} has no adapter on {base}: train it first "
                           f"(`cci-local train r/{name}`)")
    gguf = Path(adapter["gguf"])
    if not gguf.is_file():
        raise AdapterError(f"r/{name}'s adapter file {gguf} is missing: train it again "
                           f"(`cci-local train r/{name} --force`)")
    [line] = clear(db, [adapter], allow_leaky=allow_leaky, what=f"export r/{name}'s adapter")

    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "adapter.gguf"
    shutil.copyfile(gguf, target)
    files = [target]
    peft = Path(adapter["path"]) / "peft"
    if (peft / "adapter_config.json").is_file():
        shutil.copytree(peft, folder / "peft", dirs_exist_ok=True)
        files.append(folder / "peft")
    mf = folder / "Modelfile"
    mf.write_text(modelfile(resolved.gguf or resolved.hf_dir, target), encoding="utf-8")
    files.append(mf)
    audit = latest_audit(db, adapter["id"])
    provenance = {
        "community": name, "base": adapter["base"], "base_identity": adapter["base_identity"],
        "trainer": adapter["trainer"], "examples": adapter["examples"],
        "data_hash": adapter["data_hash"], "settings": json.loads(adapter["settings"]),
        "steps": adapter["steps"], "final_loss": adapter["final_loss"],
        "adapter_sha256": _sha256(target), "exported_at": time.time(),
        "audit": None if audit is None else {
            k: audit[k] for k in ("options", "extraction", "membership", "extracted",
                                  "created_at", "leakage") if k in audit},
        "allow_leaky": allow_leaky,
    }
    (folder / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n",
                                            encoding="utf-8")
    files.append(folder / "provenance.json")
    with db.conn:
        db.conn.execute("UPDATE adapters SET modelfile = ? WHERE id = ?",
                        [str(mf), adapter["id"]])
    return {"community": name, "folder": folder, "files": files, "modelfile": mf,
            "audit": line}


def remove_adapter(db: sqlite_utils.Database, adapter_id: int) -> dict:
    """Delete adapter ``adapter_id``: its row with its training curve and audits (the
    schema cascades), and its folder when the folder is under the store's adapters/
    (a folder elsewhere was the user's, and stays).  Survey and other answers already
    stored keep their rows: they are results, named by the adapter's hash."""
    from .train import _adapter, adapters_dir

    row = _adapter(db, "id = ?", adapter_id)
    if row is None:
        raise AdapterError(f"no adapter {adapter_id} in the store (`cci-local adapters list` "
                           "shows their ids)")
    folder = Path(row["path"]).resolve()
    with db.conn:
        db.conn.execute("DELETE FROM adapters WHERE id = ?", [adapter_id])
    owned = adapters_dir(db).resolve()
    removed = folder.is_dir() and owned in folder.parents
    if removed:
        shutil.rmtree(folder, ignore_errors=True)
    return row | {"files_removed": removed}
