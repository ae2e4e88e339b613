"""`cci-local adapters`: community adapters in and out of the store.  The work:
cci_local/adapters.py (behind the privacy gate, cci_local/gate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import base_option, communities_argument, note, out


@click.group(name="adapters")
def adapters_group():
    """Community adapters: bring in one trained anywhere (PEFT, LLaMA-Factory, axolotl,
    unsloth, mlx-lm), list and remove them, export them (with an Ollama Modelfile)
    past the privacy audit."""


@adapters_group.command(name="add")
@click.argument("path", type=click.Path())
@click.option("--community", required=True, help="The community it speaks for (r/NAME).")
@base_option("The base MODEL it was trained on, as a GGUF (default: the registry's base).")
@click.pass_obj
def add_cmd(obj, path, community, base):
    """Check the adapter at PATH against the base (targets, blocks, shapes, rank),
    convert it to a GGUF LoRA, check that llama.cpp loads it and that it moves the
    base's next-token log-probabilities, then register it as COMMUNITY's newest
    adapter: survey, psychometrics, fidelity, ask, chat, serve and audit use it."""
    from ..adapters_import import add_adapter
    from ..llm import default_model

    base = default_model("base", base)
    row = add_adapter(obj.db, path, community, base)
    settings = json.loads(row["settings"])
    record = settings["imported"]
    if row["reused"]:
        out.print(f"r/{row['community']}: this adapter is already in the store "
                  f"(adapter {row['id']})", highlight=False, soft_wrap=True)
        return
    checked = record["checked"]
    out.print(f"r/{row['community']}: added adapter {row['id']} ({record['format']}, rank "
              f"{checked['rank']}, {', '.join(checked['targets'])} on "
              f"{len(checked['blocks'])} blocks of {base}; sha256 {record['sha256'][:12]})",
              highlight=False, soft_wrap=True)
    out.print(f"  llama.cpp loads it; it moves the base's next-token log-probabilities by up "
              f"to {record['logprob_moved']:.3f}", highlight=False, soft_wrap=True)
    if "cci" in record:
        out.print(f"  trained on {record['cci']['examples']:,} of r/{row['community']}'s "
                  f"pairs (data {record['cci']['data_hash']}): `cci-local audit "
                  f"r/{row['community']}` can test it", highlight=False, soft_wrap=True)
    else:
        note("no record of its training data came with it: the privacy audit cannot test "
             "it" + (f" ({record['note']})" if "note" in record else ""))
    out.print(f"  {row['gguf']}", highlight=False, soft_wrap=True)


@adapters_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_cmd(obj, as_json):
    """Every adapter in the store: trained here or added, with its newest audit."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from ..evaluate.audit import latest_audit
    from ..train import list_adapters

    rows = list_adapters(obj.db)
    for row in rows:
        audit = latest_audit(obj.db, row["id"])
        row["audit"] = None if audit is None else f"{audit['extractable']} extracted"
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print("no adapters yet: `cci-local train r/NAME`, or `cci-local adapters add PATH "
                  "--community NAME`", highlight=False)
        return
    table = Table(box=box.SIMPLE_HEAD, title="adapters", title_justify="left")
    for name in ("id", "community", "base", "trainer", "status", "steps", "loss", "examples",
                 "audit", "adapter"):
        table.add_column(name, overflow="fold", justify="right" if name in (
            "id", "steps", "loss", "examples") else "left")
    here = Path.cwd()
    for a in rows:
        loss = f"{a['final_loss']:.3f}" if a["final_loss"] is not None else "-"
        shown = Path(a["gguf"] or a["path"])
        if here in shown.parents:
            shown = shown.relative_to(here)
        table.add_row(str(a["id"]), a["community"], a["base"], a["trainer"], a["status"],
                      str(a["steps"] or "-"), loss, f"{a['examples']:,}", a["audit"] or "none",
                      escape(str(shown)))
    out.print(table)


@adapters_group.command(name="remove")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.pass_obj
def remove_cmd(obj, ids):
    """Remove adapters by id (`adapters list`): the row, its curve and audits, and its
    folder when it lies under the store's adapters/.  Answers already stored stay."""
    from ..adapters import remove_adapter

    for adapter_id in ids:
        row = remove_adapter(obj.db, adapter_id)
        where = f"removed {row['path']}" if row["files_removed"] else f"kept {row['path']}"
        out.print(f"r/{row['community']}: adapter {adapter_id} removed ({where})",
                  highlight=False, soft_wrap=True)


@adapters_group.command(name="export")
@communities_argument(required=True)
@base_option("The base MODEL the adapters were trained on (default: the registry's base).")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder to write <community>/ into.")
@click.option("--allow-leaky", is_flag=True,
              help="Export even when the privacy audit found training texts the adapter "
              "reproduces word for word.")
@click.pass_obj
def export_cmd(obj, communities, base, out_dir, allow_leaky):
    """Copy each community's newest adapter to OUTPUT/<community>/: adapter.gguf
    (llama.cpp, Ollama), the PEFT folder (vLLM, transformers), a Modelfile
    (`ollama create NAME -f Modelfile`) and provenance.json (settings, data hash,
    the audit's figures).  The privacy audit's figures are shown first, or that
    none ran; an adapter the audit found reproducing training texts word for word
    is refused unless --allow-leaky."""
    from ..adapters import export_adapter
    from ..gate import clear
    from ..llm import default_model
    from ..respondents import newest_adapter
    from ..store import select_communities
    from ..train import resolve_base

    base = default_model("base", base)
    names = select_communities(obj.db, list(communities))
    # the gate for every community before anything is written
    resolved = resolve_base(base)
    found = [a for a in (newest_adapter(obj.db, n, resolved) for n in names) if a]
    clear(obj.db, found, allow_leaky=allow_leaky, what="export")
    for name in names:
        done = export_adapter(obj.db, name, base, out_dir, allow_leaky=allow_leaky)
        note(done["audit"])
        out.print(f"r/{done['community']}: {done['folder']}/ "
                  f"({', '.join(p.name for p in done['files'])})", highlight=False,
                  soft_wrap=True)
        out.print(f"  ollama create {done['community']}-cci -f {done['modelfile']}",
                  highlight=False, soft_wrap=True)
