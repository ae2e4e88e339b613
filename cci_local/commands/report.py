"""`cci-local report` (what the store knows, as Markdown, HTML or JSON) and
`cci-local export` (instruction data for other trainers).  The work:
cci_local/report.py and cci_local/export.py."""

from __future__ import annotations

from pathlib import Path

import click

from .common import fail, out, seed_option


@click.command(name="report")
@click.argument("communities", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["md", "html", "json"]),
              help="Default: from the file name, else html.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="The file to write (default: <store>-report.<format> beside the store).")
@click.pass_obj
def report_cmd(obj, communities, fmt, output):
    """Write what the store knows about COMMUNITIES (default: all) as one document:
    corpus, topics, example pairs, training, survey accuracy with CI bars and the
    cross-community heatmap, fidelity tables and emotion plots, psychometric scores.
    HTML embeds its plots; Markdown writes them to a folder beside it; JSON is the data."""
    from ..pipeline import report_paths
    from ..report import write_report
    from ..store import select_communities

    if not obj.db_path.exists():
        fail(f"no store at {obj.db_path}: run `cci-local run r/NAME` first (or pass --db)")
    if output and not fmt:
        suffix = Path(output).suffix.lstrip(".").lower()
        fmt = suffix if suffix in ("md", "html", "json") else None
    fmt = fmt or "html"
    path = Path(output) if output else report_paths(obj.db_path, (fmt,))[0]
    names = select_communities(obj.db, list(communities)) if communities else None
    write_report(obj.db, path, fmt, communities=names)
    out.print(f"wrote {path}", highlight=False, soft_wrap=True)


@click.command(name="export")
@click.argument("communities", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["mlx", "openai", "sharegpt", "csv"]),
              required=True)
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--kind", "kinds", type=click.Choice(["open", "template"]), multiple=True,
              help="Training pairs to include (default: both).")
@click.option("--split-by", type=click.Choice(["random", "topic"]), default="random",
              show_default=True, help="Which held-out split becomes test.")
@seed_option
@click.pass_obj
def export_cmd(obj, communities, fmt, out_dir, kinds, split_by, seed):
    """Write COMMUNITIES' instruction data as mlx-lm / OpenAI / ShareGPT / CSV files."""
    from ..export import TRAINING_KINDS, export

    counts = export(obj.db, fmt, out_dir, list(communities) or None,
                    kinds=tuple(kinds) or TRAINING_KINDS, split_by=split_by, seed=seed)
    for community, subsets in counts.items():
        parts = ", ".join(f"{n:,} {k}" for k, n in subsets.items())
        out.print(f"{community}: {parts}", highlight=False)
    out.print(f"written to {out_dir}", highlight=False)

