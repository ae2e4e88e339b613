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
@click.option("--format", "fmt", type=click.Choice(["mlx", "openai", "sharegpt", "csv",
                                                    "llamafactory"]), required=True,
              help="llamafactory: the training data, dataset_info.json and one YAML per "
              "community that trains what `cci-local train` would (docs/scale-out.md).")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--kind", "kinds", type=click.Choice(["open", "template"]), multiple=True,
              help="Training pairs to include (default: both; llamafactory: open, as train).")
@click.option("--split-by", type=click.Choice(["random", "topic"]), default="random",
              show_default=True, help="Which held-out split becomes test.")
@seed_option
@click.option("--base", help="llamafactory: the base MODEL train would use (default: the "
              "registry's base).")
@click.option("--hf-base", metavar="ID|PATH", help="llamafactory: the base's Hugging Face id or "
              "folder (default: the base's folder; a small GGUF written dequantized to "
              "OUTPUT/base; a big one's hub id from the registry).")
@click.option("--method", type=click.Choice(["lora", "qlora", "full"]), default="lora",
              show_default=True, help="llamafactory: LoRA as train does, QLoRA (4-bit, CUDA), "
              "or the paper's full finetune.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto",
              show_default=True, help="llamafactory: auto is fp32 for a base under ~1B "
              "parameters (any CPU), bf16 above.")
@click.option("--portable", is_flag=True, help="llamafactory: paths relative to OUTPUT (run "
              "from inside it, on another machine).")
@click.option("--steps", type=click.IntRange(min=1), help="llamafactory: optimizer steps "
              "(overrides --epochs).")
@click.option("--epochs", type=click.FloatRange(min=0.01), default=3.0, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-4,
              show_default=True, help="llamafactory: as train's.")
@click.option("--rank", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=32.0,
              show_default=True)
@click.option("--max-examples", type=click.IntRange(min=1),
              help="llamafactory: a seeded sample, as train's.")
@click.option("--dedup", type=click.Choice(["none", "exact", "near"]), default="near",
              show_default=True, help="llamafactory: duplicate answers removed, as train's.")
@click.pass_obj
def export_cmd(obj, communities, fmt, out_dir, kinds, split_by, seed, base, hf_base, method,
               precision, portable, steps, epochs, lr, rank, alpha, max_examples, dedup):
    """Write COMMUNITIES' instruction data as mlx-lm / OpenAI / ShareGPT / CSV files, or
    as LLaMA-Factory training configs with their data."""
    from ..export import TRAINING_KINDS, export

    if fmt == "llamafactory":
        from ..export_llamafactory import export_llamafactory
        from ..llm import default_model
        from ..store import select_communities
        from ..train import TrainConfig

        names = select_communities(obj.db, list(communities) or None)
        done = export_llamafactory(
            obj.db, names, out_dir, base=default_model("base", base),
            config=TrainConfig(steps=steps, epochs=epochs, lr=lr, rank=rank, alpha=alpha,
                               seed=seed, dedup=dedup),
            kinds=tuple(kinds) or ("open",), split_by=split_by, max_examples=max_examples,
            method=method, hf=hf_base, precision=precision, portable=portable)
        out.print(f"base: {done['base']}; {done['precision']}", highlight=False, soft_wrap=True)
        for community, subsets in done["counts"].items():
            out.print(f"{community}: {subsets['train']:,} training pairs; "
                      f"llamafactory-cli train {Path(out_dir) / community}.yaml",
                      highlight=False, soft_wrap=True)
        out.print(f"then: cci-local adapters add {Path(out_dir) / 'saves' / '<community>'} "
                  "--community <community>", highlight=False, soft_wrap=True)
        return
    counts = export(obj.db, fmt, out_dir, list(communities) or None,
                    kinds=tuple(kinds) or TRAINING_KINDS, split_by=split_by, seed=seed)
    for community, subsets in counts.items():
        parts = ", ".join(f"{n:,} {k}" for k, n in subsets.items())
        out.print(f"{community}: {parts}", highlight=False)
    out.print(f"written to {out_dir}", highlight=False)
