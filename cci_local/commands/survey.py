"""`cci-local survey`: a survey administered to base, persona and aligned respondents,
scored against each community's answers.  The stage itself: cci_local/evaluate/survey.py."""

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
    parallel_option,
    staged,
)


@click.command(name="survey")
@communities_argument()
@click.option("--survey", "survey_file", type=click.Path(dir_okay=False),
              help="A survey FILE of your own (CSV or JSON: question, options, each "
                   "community's answer letter or distribution), or the Community-Cross-"
                   "Instruct release's CommSurvey CSV as it is, instead of CommSurvey.")
@base_option()
@click.option("--split", "split_by", type=click.Choice(["random", "topic"]), default="random",
              show_default=True, help="Held-out chunk rows, or held-out (unseen) topics; for a "
              "file in the release's CommSurvey layout, its split or split_by_topic test rows.")
@click.option("--scoring", type=click.Choice(["letter", "text"]), default="letter",
              show_default=True, help="Score each option's letter as the reply (the paper's "
              "way), or its whole text (for small models that cannot map letters).")
@click.option("--no-persona", is_flag=True, help="Leave out the persona-prompted base.")
@click.option("--no-aligned", is_flag=True, help="Leave out the communities' adapters.")
@click.option("--persona-text", default=None, metavar="TEXT",
              help="The persona system prompt; {community} is replaced.  [default: "
                   "'You are a member of the online community r/{community}. ...']")
@click.option("--question-template", default=None, metavar="TEXT",
              help="How a question is put: must contain {question} and {options}.")
@click.option("--samples", type=click.IntRange(min=1), default=10, show_default=True,
              help="Sampled answers per question where a backend has no log-probabilities.")
@click.option("--permute", type=click.IntRange(min=1, max=26), default=1, show_default=True,
              metavar="N", help="Ask each question with its options in N cyclic orders; "
              "its answer is the option with the most probability summed over them (the "
              "remedy for small models' letter and position habits; N times the calls).")
@aligned_server_options
@parallel_option("Questions")
@json_option("the results")
@click.pass_obj
def survey_cmd(obj, communities, survey_file, base, split_by, scoring, no_persona, no_aligned,
               persona_text, question_template, samples, permute, aligned_server,
               aligned_name, parallel, as_json):
    """Administer a survey to the base model, the persona-prompted base and each
    community's aligned model: the held-out CommSurvey of COMMUNITIES (default: all),
    or with --survey a file of your own.  Answers are stored; a re-run asks nothing twice."""
    from ..store import normalise_community

    result = staged("survey", "questions", lambda progress: obj.survey(
        communities, survey_file=survey_file, base=base, split_by=split_by, scoring=scoring,
        persona=not no_persona, aligned=not no_aligned, persona_text=persona_text,
        question_template=question_template, samples=samples, permute=permute,
        aligned_server=aligned_server, aligned_name=aligned_name, parallel=parallel,
        progress=progress))
    names = result.communities or [normalise_community(c) for c in communities]
    data = result.as_dict(names)
    if json_or_notes(data, result.notes, as_json):
        return
    if result.items:
        _survey_tables(result, names, data["verdict"])


def tv(e) -> str:
    return f"{e.value:.1f} [{e.low:.1f}, {e.high:.1f}]" if e.n else "-"


def _verdict(verdict: list[dict]) -> None:
    out.print("[bold]verdict[/bold] (paired bootstrap over the same questions, 95%):")
    for entry in verdict:
        for line in entry["lines"]:
            out.print(f"  {line}", highlight=False, soft_wrap=True)


def _power(verdict: list[dict]) -> None:
    rows = [(v["community"], row) for v in verdict for row in v.get("power", [])]
    if not rows:
        return
    table = Table(box=box.SIMPLE_HEAD, title="power: the smallest difference each comparison "
                  "can show (80% power, 95% confidence; docs/method.md#power)",
                  title_justify="left")
    for name in ("answer key", "comparison", "questions", "discordant", "detectable",
                 "questions for 0.10"):
        table.add_column(name, justify="left" if name in ("answer key", "comparison")
                         else "right")
    for community, row in rows:
        share = f"{row['discordance']:.2f}" + (
            "" if row["discordance_used"] == row["discordance"]
            else f" (priced at {row['discordance_used']:.2f})")
        table.add_row(f"r/{community}", row["comparison"], f"{row['questions']}", share,
                      f"none up to {row['min_detectable']:.2f}" if row.get("none_detectable")
                      else f"{row['min_detectable']:.2f}", f"{row['questions_needed']}")
    out.print(table)


def _survey_tables(result, names: list[str], verdict: list[dict]) -> None:
    from ..evaluate.metrics import majority_baseline, random_baseline
    from ..respondents import labels

    with_dists = any(it.distributions for it in result.items)
    table = Table(box=box.SIMPLE_HEAD, title=f"survey accuracy: {result.source}, "
                  f"{result.scoring} scoring, 95% bootstrap CI", title_justify="left")
    columns = ["answer key", "respondent", "questions", "accuracy", "discriminating only"]
    for name in columns + (["representativeness", "TV score (SimBench)"] if with_dists else []):
        table.add_column(name, justify="right" if name == "questions" else "left")
    for c in names:
        key = result.key(c)
        if not key:
            continue
        for respondent in labels(c):
            if respondent in result.answers:
                est = result.scores(respondent, c)
                disc = result.scores(respondent, c, discriminating_only=True)
                extra = ([ci(result.representativeness(respondent, c)),
                          tv(result.tv_score(respondent, c))] if with_dists else [])
                table.add_row(f"r/{c}", respondent, f"{est.n}", ci(est), ci(disc), *extra)
        chance = random_baseline([len(it.options) for it in result.items if c in it.answers])
        table.add_row(f"r/{c}", "majority letter", f"{len(key)}",
                      ci(majority_baseline(list(key.values()))), "", style="dim")
        table.add_row(f"r/{c}", "random", f"{len(key)}", f"{chance:.3f}", "", style="dim")
        for other in names:
            if with_dists and other != c and result.between(c, other).n:
                table.add_row(f"r/{c}", f"r/{other}'s real answers", "", "", "",
                              ci(result.between(c, other)), "", style="dim")
    out.print(table)
    _verdict(verdict)
    _power(verdict)
    topics = {c: result.topics(c) for c in names}
    if any(topics.values()):
        shown = [r for r in ("base", "persona", "aligned")
                 if any(r == k.split(":")[0] for k in result.answers)]
        table = Table(box=box.SIMPLE_HEAD, title="accuracy per topic, 95% bootstrap CI",
                      title_justify="left")
        for name in ["answer key", "topic", "questions", *shown]:
            table.add_column(name, justify="right" if name == "questions" else "left")
        for c in names:
            for t in topics[c]:
                cells = {r: result.scores(r if r == "base" else f"{r}:{c}", c, topic=t)
                         for r in shown}
                n = max(e.n for e in cells.values())
                table.add_row(f"r/{c}", t, f"{n}", *[ci(cells[r]) for r in shown])
        out.print(table)
    for kind in ("aligned", "persona"):
        matrix = result.matrix(names, kind)
        if len(matrix) < 2:
            continue
        table = Table(box=box.SIMPLE_HEAD, title=f"cross-community matrix ({kind}): rows "
                      "answer, columns are the answer keys", title_justify="left")
        table.add_column("model")
        for c in names:
            table.add_column(f"key r/{c}")
        for row, cells in matrix.items():
            best = max(cells, key=lambda c: cells[c].value if cells[c].n else -1)
            table.add_row(row, *[(f"[bold]{ci(cells[c])}[/bold]" if c == best else ci(cells[c]))
                                 for c in names])
        out.print(table)
