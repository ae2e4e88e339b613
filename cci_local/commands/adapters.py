"""`cci-local adapters`: community adapters in and out of the store.  The work:
cci_local/adapters.py (behind the privacy gate, cci_local/gate.py)."""

from __future__ import annotations

import click

from .common import base_option, communities_argument, note, out


@click.group(name="adapters")
def adapters_group():
    """Community adapters: export them (with an Ollama Modelfile) past the privacy
    audit."""


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
