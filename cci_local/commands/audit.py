"""`cci-local audit`: what a community's adapter gives away of its training texts.
The stage itself: cci_local/evaluate/audit.py."""

from __future__ import annotations

import click
from rich import box
from rich.table import Table

from .common import base_option, ci, fail, json_option, json_or_notes, out, seed_option, staged


@click.command(name="audit")
@click.argument("communities", nargs=-1, required=True)
@base_option()
@click.option("--samples", type=click.IntRange(min=4), default=64, show_default=True,
              help="Training texts tested (extraction and membership).")
@click.option("--held-out", type=click.IntRange(min=4), default=64, show_default=True,
              help="Held-out texts for membership inference.")
@click.option("--prefix", "-k", type=click.IntRange(min=1), default=32, show_default=True,
              help="Tokens of a training answer given to the model.")
@click.option("--suffix", "-m", type=click.IntRange(min=1), default=32, show_default=True,
              help="Tokens that must follow exactly for the text to count as extracted.")
@click.option("--min-chars", type=click.IntRange(min=20), default=80, show_default=True,
              help="A free answer sharing a span this long with a stored post counts as "
              "leaking it.")
@click.option("--max-tokens", type=click.IntRange(min=8), default=128, show_default=True,
              help="Length of each free answer checked for spans of posts.")
@seed_option
@json_option("the figures")
@click.pass_obj
def audit_cmd(obj, communities, base, samples, held_out, prefix, suffix, min_chars, max_tokens,
              seed, as_json):
    """Audit each community's newest adapter before it is served or shared:
    extractable memorization (a k-token prefix of a training answer; does greedy
    decoding reproduce the next m tokens?) for the aligned model and the base as
    control, with Wilson 95% intervals; membership inference (AUC of the per-text
    loss, calibrated by the base's, at telling training texts from held-out ones,
    and the true-positive rate at 1% false positives); near-verbatim leakage in
    free answers to the training questions (the longest span shared with any of
    the community's stored posts, through a word n-gram index); the extracted
    texts by instruction and document id, never by author."""
    from ..evaluate.audit import AuditError, AuditOptions
    from ..llm import default_model
    from ..store import select_communities

    base = default_model("base", base)
    options = AuditOptions(samples=samples, prefix=prefix, suffix=suffix, held_out=held_out,
                           seed=seed, min_chars=min_chars, max_tokens=max_tokens)
    results = []
    for name in select_communities(obj.db, list(communities)):
        try:
            results.append(staged(f"audit r/{name}", "model calls", lambda progress, n=name:
                                  obj.audit(n, base=base, options=options,
                                            progress=progress)))
        except AuditError as e:
            fail(str(e))
    if json_or_notes({"audits": [r.as_dict() for r in results]},
                     [n for r in results for n in r.notes], as_json):
        return
    table = Table(box=box.SIMPLE_HEAD, title=f"privacy audit (k={prefix}, m={suffix}; 95% "
                  "intervals)", title_justify="left")
    for column in ("community", "extracted: aligned", "extracted: base",
                   "membership AUC (0.5 = none)", "AUC, raw loss", "TPR at 1% FPR",
                   "free answers: longest span", f">= {min_chars} chars"):
        table.add_column(column)
    for r in results:
        m = r.membership
        table.add_row(f"r/{r.community}", ci(r.extraction["aligned"]), ci(r.extraction["base"]),
                      ci(m["auc"]) if "auc" in m else "-",
                      ci(m["auc_loss"]) if "auc_loss" in m else "-",
                      f"{m['tpr_at_1pct_fpr']:.3f}" if "tpr_at_1pct_fpr" in m else "-",
                      f"{r.leakage['aligned']['longest']} (base {r.leakage['base']['longest']})",
                      f"{ci(r.leakage['aligned']['share'])} (base "
                      f"{r.leakage['base']['share'].value:.2f})")
    out.print(table)
    for r in results:
        if r.extracted:
            ids = ", ".join(f"document {e['document_id']}" if e["document_id"]
                            else f"instruction {e['instruction_id']}" for e in r.extracted)
            out.print(f"r/{r.community}: {len(r.extracted)} training texts extracted word for "
                      f"word: {ids}", highlight=False, soft_wrap=True)
        else:
            out.print(f"r/{r.community}: no training text extracted of "
                      f"{r.extraction['aligned'].n} tested", highlight=False)
        leaked = r.leakage["documents"]
        if leaked:
            ids = ", ".join(f"document {d['document_id']} ({d['chars']} chars)" for d in leaked)
            out.print(f"r/{r.community}: free answers repeat spans of {len(leaked)} posts: {ids}",
                      highlight=False, soft_wrap=True)
        index = r.leakage["index"]
        out.print(f"r/{r.community}: span index over {index['documents']:,} posts "
                  f"({index['ngrams']:,} word 8-grams) built and searched in "
                  f"{index['seconds']:.1f} s", style="dim", highlight=False)
