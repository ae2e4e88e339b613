"""The privacy gate: what an adapter's newest audit says, before it leaves the store.

`serve` and `adapters export` (the only writer of an Ollama Modelfile) call
``clear()``: it gives one line per adapter with the audit's figures, or says that no
audit has run, and raises LeakyAdapter when an audit found training texts that the
aligned model reproduces word for word and its base does not, unless the caller
allows it (``--allow-leaky``).  A text the base reproduces too was no secret of the
training data (a quote, a stock phrase), so it does not close the gate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlite_utils

from .errors import CciError


class LeakyAdapter(CciError):
    """An audit found extractable training texts; nothing was served or written."""

    exit_code = 2


@dataclass
class Clearance:
    community: str
    adapter_id: int
    audited: bool
    leaked: list[dict]  # extracted texts the base does not reproduce
    line: str
    audit: dict | None = None  # the newest audit's figures (latest_audit())


def _interval(e: dict) -> str:
    return f"{e['value']:.2f} [{e['low']:.2f}, {e['high']:.2f}]"


def _of(e: dict) -> str:
    return f"{round(e['value'] * e['n']) if e['n'] else 0}/{e['n']}"


def clearance(db: sqlite_utils.Database, adapter: dict) -> Clearance:
    """What the newest audit of ``adapter`` (an ``adapters`` row) found, in one line."""
    from .evaluate.audit import latest_audit

    name, ident = adapter["community"], adapter["id"]
    found = latest_audit(db, ident)
    if found is None:
        return Clearance(name, ident, False, [], (
            f"r/{name} (adapter {ident}): no privacy audit has run; `cci-local audit r/{name}` "
            "measures what it gives away of its training texts"))
    aligned, base = found["extraction"]["aligned"], found["extraction"]["base"]
    leaked = [e for e in found["extracted"] if not e.get("base_also")]
    when = time.strftime("%Y-%m-%d", time.localtime(found["created_at"]))
    parts = [f"extracted {_of(aligned)} training texts" + (
        f" {_interval(aligned)}" if aligned["n"] else "") + f" (base {_of(base)})"]
    if "auc" in found["membership"]:
        parts.append(f"membership AUC {_interval(found['membership']['auc'])}")
    if found.get("leakage"):
        lk = found["leakage"]
        parts.append(f"free answers: longest span shared with a post {lk['aligned']['longest']}"
                     f" chars (base {lk['base']['longest']}), {_of(lk['aligned']['share'])} "
                     f">= {lk['min_chars']}")
    return Clearance(name, ident, True, leaked,
                     f"r/{name} (adapter {ident}), audited {when}: " + "; ".join(parts), found)


def clear(db: sqlite_utils.Database, adapters: list[dict], *, allow_leaky: bool = False,
          what: str = "share") -> list[str]:
    """One line per adapter (its audit's figures, or that none ran); LeakyAdapter when
    an audit found extractable training texts, unless ``allow_leaky``."""
    results = [clearance(db, a) for a in adapters]
    leaky = [c for c in results if c.leaked]
    if leaky and not allow_leaky:
        which = "; ".join(
            f"r/{c.community}'s adapter {c.adapter_id} reproduces {len(c.leaked)} training "
            "text(s) word for word (" + ", ".join(
                f"document {e['document_id']}" if e.get("document_id")
                else f"instruction {e['instruction_id']}" for e in c.leaked[:5])
            + (", ..." if len(c.leaked) > 5 else "") + ")" for c in leaky)
        raise LeakyAdapter(
            f"refused to {what}: {which}. Train again with a mitigation (`cci-local train "
            "--dedup near --template-epochs 1`, or `--dp-epsilon 8`) and audit again, or "
            "pass --allow-leaky to go on anyway")
    return [c.line for c in results]


def newest_audits(db: sqlite_utils.Database, names: list[str]) -> list[dict]:
    """Per community with a finished adapter: its newest adapter's id, that adapter's
    newest audit (AuditResult.as_dict(), or None) and the texts that close the gate."""
    out = []
    for name in names:
        cur = db.execute("SELECT * FROM adapters WHERE community = ? AND status = 'done'"
                         " ORDER BY id DESC LIMIT 1", [name])
        row = cur.fetchone()
        if row is None:
            continue
        adapter = dict(zip([d[0] for d in cur.description], row, strict=True))
        gate = clearance(db, adapter)
        audit = None if gate.audit is None else {
            k: v for k, v in gate.audit.items() if k not in ("extractable", "created_at")}
        out.append({"community": name, "adapter_id": adapter["id"], "audit": audit,
                    "leaked": gate.leaked})
    return out
