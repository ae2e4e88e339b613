"""`cci-local psychometrics`: a psychometric instrument administered to each
community's aligned model (and base and persona for contrast), scored like a human
respondent.  The stage itself: cci_local/evaluate/psychometrics.py."""

from __future__ import annotations

import click
from rich import box
from rich.table import Table

from .common import (
    aligned_server_options,
    base_option,
    ci,
    communities_argument,
    json_option,
    json_or_notes,
    out,
    seed_option,
    staged,
)


@click.command(name="psychometrics")
@communities_argument(required=True)
@click.option("--instrument", required=True, metavar="FILE|NAME",
              help="An instrument file (TOML, see cci_local/evaluate/instruments.py) or a "
                   "shipped one: edeq, weight-concerns.  The EDE-Q ships without its item "
                   "texts (they are not ours to publish): it needs --items.")
@click.option("--items", "item_bank", type=click.Path(dir_okay=False),
              help="Item bank CSV (columns Item, Question) for item texts the instrument "
                   "leaves out (the EDE-Q's).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Sampled answers per item and persona prefix (count items, and every item "
                   "where a backend has no log-probabilities).")
@click.option("--prefixes", type=click.IntRange(min=1), metavar="N",
              help="Use only the first N persona prefixes of the instrument's pool "
                   "(faster, wider intervals).")
@base_option()
@click.option("--scoring", type=click.Choice(["letter", "text"]), default="letter",
              show_default=True, help="How a choice item's options are scored (see survey).")
@click.option("--no-persona", is_flag=True, help="Leave out the persona-prompted base.")
@click.option("--no-base", is_flag=True, help="Leave out the base model.")
@aligned_server_options
@seed_option
@json_option("the scores")
@click.pass_obj
def psychometrics_cmd(obj, communities, instrument, item_bank, repeats, prefixes, base, scoring,
                      no_persona, no_base, aligned_server, aligned_name, seed, as_json):
    """Administer a psychometric instrument to each community's aligned model (and the
    base and persona-prompted base for contrast) and score them like human
    respondents: subscales, global score and flags, with bootstrap CIs, and the
    difference between communities."""

    from ..evaluate.instruments import load_instrument
    from ..evaluate.psychometrics import RESAMPLES, difference
    from ..llm import default_model
    from ..store import select_communities

    inst = load_instrument(instrument, item_bank)
    names = select_communities(obj.db, list(communities))
    base = default_model("base", base)
    result = staged("psychometrics", "items", lambda progress: obj.psychometrics(
        names, inst, base=base, persona=not no_persona, include_base=not no_base,
        repeats=repeats, scoring=scoring, prefixes=prefixes, seed=seed, progress=progress,
        aligned_server=aligned_server, aligned_name=aligned_name))
    scores = result.scores
    measures = result.measures()
    pairs = result.compared()
    kind = pairs[0][0].split(":")[0] if pairs else "aligned"
    if json_or_notes(result.as_dict(), result.notes, as_json):
        return
    if not scores:
        return
    used = len(result.instrument.personas)
    table = Table(box=box.SIMPLE_HEAD, title=f"{inst.name}: scored like a human respondent, "
                  f"{used} persona prefixes, 95% bootstrap CI",
                  title_justify="left")
    table.add_column("respondent")
    for m in measures:
        table.add_column(m)
    for rule in inst.rules:
        table.add_column(f"{rule.name} (share of resamples)")
    for r, s in scores.items():
        table.add_row(r, *[ci(s.estimate(m)) for m in measures],
                      *[f"{'yes' if s.rules[x.name] else 'no'} ({s.rule_share[x.name]:.2f})"
                        for x in inst.rules])
    out.print(table)
    if pairs:
        table = Table(box=box.SIMPLE_HEAD, title=f"differences between communities ({kind} "
                      "models): a - b, 95% bootstrap CI, two-sided p", title_justify="left")
        for name in ("a", "b", "score", "difference", "p"):
            table.add_column(name)
        for a, b in pairs:
            for m in measures:
                d, p = difference(scores[a], scores[b], m)
                table.add_row(a, b, m, ci(d), f"{p:.3f}" if p else f"< {1 / RESAMPLES:g}")
        out.print(table)
