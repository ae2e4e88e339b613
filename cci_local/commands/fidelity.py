"""`cci-local fidelity`: a community's aligned model's writing against its real
documents.  The stage itself: cci_local/evaluate/fidelity.py."""

from __future__ import annotations

from pathlib import Path

import click
from rich import box
from rich.table import Table

from .common import (
    aligned_server_options,
    base_option,
    ci,
    fail,
    json_option,
    json_or_notes,
    out,
    parallel_option,
    seed_option,
    staged,
)


@click.command(name="fidelity")
@click.argument("community")
@base_option()
@click.option("--samples", type=click.IntRange(min=5), default=50, show_default=True,
              help="Generated answers per model.")
@click.option("--real", type=click.IntRange(min=10), default=200, show_default=True,
              help="Real documents of the community to compare with (sampled).")
@click.option("--max-tokens", type=click.IntRange(min=8), default=128, show_default=True)
@click.option("--temperature", type=float, default=0.8, show_default=True)
@click.option("--max-perplexity", type=float,
              help="Drop generated texts above this perplexity (default: the largest a real "
                   "text gets).")
@click.option("--embedder", type=click.Choice(["wordllama", "minilm"]), default="wordllama",
              show_default=True, help="Embeddings for the Frechet distance.")
@click.option("--no-persona", is_flag=True, help="Leave out the persona-prompted base.")
@click.option("--no-base", is_flag=True, help="Leave out the base model.")
@click.option("--judge", metavar="MODEL",
              help="The LLM judge of toxicity and harm (default: the base model).")
@click.option("--detoxify", type=click.Path(dir_okay=False), metavar="CKPT",
              help="Score toxicity with this local Detoxify checkpoint instead of the judge.")
@click.option("--detoxify-config", type=click.Path(file_okay=False), metavar="DIR",
              help="Folder with the checkpoint's transformer config and tokenizer (offline).")
@click.option("--harm-rubric", type=click.Path(dir_okay=False), metavar="FILE",
              help="A text file with the harm judge's rubric (default: disordered eating, "
                   "self-harm, harassment; see `cci_local/evaluate/judges.py`).")
@click.option("--no-judges", is_flag=True, help="Leave out toxicity and harm.")
@aligned_server_options
@parallel_option("Answers generated")
@seed_option
@json_option("the figures")
@click.pass_obj
def fidelity_cmd(obj, community, base, samples, real, max_tokens, temperature, max_perplexity,
                 embedder, no_persona, no_base, judge, detoxify, detoxify_config, harm_rubric,
                 no_judges, aligned_server, aligned_name, parallel, seed, as_json):
    """Compare COMMUNITY's aligned model's writing (and the base and persona-prompted
    base's) with the community's real documents: near-copies, duplicates and gibberish
    dropped first; identifiability, Frechet distance, real-vs-generated AUC, emotion
    and sentiment divergence, each with a 95% bootstrap CI, next to a split half of the
    real documents (the ceiling); toxicity (Detoxify from a local checkpoint, else the
    LLM judge) and harm (the LLM judge, with its reasons) of every kept text."""
    from ..evaluate.fidelity import REAL, FidelityOptions, JudgeOptions
    from ..llm import default_model
    from ..store import select_communities

    name = select_communities(obj.db, [community])[0]
    base = default_model("base", base)
    try:
        options = FidelityOptions(samples=samples, real=real, max_tokens=max_tokens,
                                  temperature=temperature, seed=seed, embedder=embedder,
                                  max_perplexity=max_perplexity)
        judges = JudgeOptions(judge=judge, detoxify=detoxify, detoxify_config=detoxify_config,
                              enabled=not no_judges)
        if harm_rubric:
            judges.harm_rubric = _read_rubric(harm_rubric)
        result = staged("fidelity", "answers", lambda progress: obj.fidelity(
            name, base=base, options=options, persona=not no_persona, include_base=not no_base,
            judges=judges, progress=progress, aligned_server=aligned_server,
            aligned_name=aligned_name, parallel=parallel))
    except ValueError as e:
        fail(str(e))
    if json_or_notes(result.as_dict(), result.notes, as_json):
        return
    table = Table(box=box.SIMPLE_HEAD, title=f"screened before scoring (perplexity cap "
                  f"{result.perplexity_cap:.1f})", title_justify="left")
    reasons = ["empty", "near copy", "duplicate", "gibberish"]
    for column in ["model", "generated", *reasons, "kept"]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for model, counts in result.dropped.items():
        table.add_row(model, str(samples), *[str(counts.get(r, 0)) for r in reasons],
                      str(samples - sum(counts.values())))
    out.print(table)
    table = Table(box=box.SIMPLE_HEAD, title=f"fidelity to r/{result.community}'s real "
                  "documents, 95% bootstrap CI", title_justify="left")
    columns = [("identifiability_f1", "identifiability F1 (higher)"),
               ("frechet", "Frechet distance (lower)"),
               ("auc", "real-vs-generated AUC (0.5 best)"),
               ("emotion_jsd", "emotion JSD (lower)"), ("sentiment_jsd", "sentiment JSD (lower)")]
    table.add_column("texts")
    for _, title in columns:
        table.add_column(title)
    for model, values in result.metrics.items():
        table.add_row(model, *[ci(values[k]) if k in values else "-" for k, _ in columns],
                      style="dim" if model == REAL else None)
    out.print(table)
    if result.confusion:
        labels = sorted({c for row in result.confusion.values() for c in row})
        table = Table(box=box.SIMPLE_HEAD, title="identifiability: predicted community of each "
                      "text", title_justify="left")
        table.add_column("texts")
        for c in labels:
            table.add_column(f"r/{c}", justify="right")
        for model, row in result.confusion.items():
            table.add_row(model, *[str(row.get(c, 0)) for c in labels])
        out.print(table)
    if result.scorers:
        table = Table(box=box.SIMPLE_HEAD, title="toxicity and harm, mean score 0-1, 95% "
                      "bootstrap CI", title_justify="left")
        table.add_column("texts")
        for criterion in result.scorers:
            table.add_column(f"{criterion} (lower)")
        for model, values in result.metrics.items():
            table.add_row(model, *[ci(values[c]) if c in values else "-"
                                   for c in result.scorers],
                          style="dim" if model == REAL else None)
        out.print(table)
        for criterion, scorer in result.scorers.items():
            out.print(f"{criterion}: {scorer}", highlight=False, markup=False, soft_wrap=True)
    if result.harmful:
        out.print("highest harm scores, with the judge's reasons:", highlight=False)
        for row in result.harmful:
            text = " ".join(row["text"].split())
            out.print(f"  {row['score']:.2f}  {row['model']}: {text[:100]!r}\n"
                      f"        {row['reason']}", highlight=False, markup=False,
                      soft_wrap=True)


def _read_rubric(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"{path}: cannot read the rubric ({e})")
    if len(text) < 20:
        fail(f"{path}: the rubric is empty or too short to judge by; write what counts as "
              "harmful and what each rating 0-4 means")
    return text

