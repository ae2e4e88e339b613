"""`cci-local generate`: instruction data, by the teacher (Community-Cross-Instruct:
CommInst and CommSurvey from chunk rows) or from templates.  The stage itself:
cci_local/generate/."""

from __future__ import annotations

import sys

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from .common import (
    advance,
    communities_argument,
    console,
    fail,
    interrupted,
    note,
    out,
    progress_bar,
    seed_option,
)


@click.command()
@communities_argument()
@click.option("--mode", type=click.Choice(["cross", "template"]), default="cross",
              show_default=True,
              help="cross: a teacher writes CommInst and CommSurvey from chunk rows; "
              "template: each real post answers a templated instruction (no model).")
@click.option("--teacher", help="The teacher MODEL (default: the registry's teacher).")
@click.option("--parallel", type=click.IntRange(min=1), default=1, show_default=True,
              help="Teacher calls at once (servers only; an in-process model takes turns).")
@click.option("--max-rows", type=click.IntRange(min=0),
              help="Put at most N chunk rows to the teacher (counting rows done before).")
@click.option("--open", "n_open", type=click.IntRange(min=0), default=3, show_default=True,
              help="Open-ended questions per row.")
@click.option("--choice", "n_choice", type=click.IntRange(min=0), default=2, show_default=True,
              help="Multiple-choice questions per row.")
@click.option("--attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="Asks per row at most (the first and the retries).")
@click.option("--doc-words", type=click.IntRange(min=10), default=120, show_default=True,
              help="Each document shown to the teacher is cut to this many words.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
@click.option("--context", type=click.IntRange(min=512),
              help="The teacher's context window in tokens, where the backend cannot tell "
              "(OpenAI-compatible servers: default 8192); prompts are fitted to it.")
@click.option("--min-words", type=click.IntRange(min=1), default=8, show_default=True,
              help="template: posts shorter than this make no pair.")
@click.option("--holdout", type=click.FloatRange(0, 0.9), default=0.15, show_default=True,
              help="Share of chunk rows (template: posts) and, separately, of topics held out.")
@click.option("--survey-questions", type=click.IntRange(min=1), metavar="M",
              help="Then ask the teacher survey-only passes over the held-out chunk rows "
              "(all of them, whatever --max-rows) until each community has M held-out "
              "CommSurvey questions; the training data stay as they are.")
@seed_option
@click.pass_obj
def generate(obj, communities, mode, teacher, parallel, max_rows, n_open, n_choice, attempts,
             doc_words, temperature, context, min_words, holdout, survey_questions, seed):
    """Make instruction data for COMMUNITIES (default: all).

    cross (Community-Cross-Instruct): every chunk row of the latest topic run goes
    to the teacher once; its open-ended questions, answered once per community,
    are the training data (CommInst), its multiple-choice questions with each
    community's letter the survey (CommSurvey).  Re-running asks nothing twice.
    """
    if mode == "template":
        from ..generate import TemplateOptions, template_pairs

        options = TemplateOptions(min_words=min_words, holdout=holdout, seed=seed)
        _print_template_pairs(template_pairs(obj.db, list(communities) or None, options))
        return
    if n_open + n_choice == 0:
        fail("--open and --choice are both 0: nothing to ask")
    bar = progress_bar("teacher rows")
    try:
        with bar:
            task = bar.add_task("rows", total=None)
            made = obj.generate(
                communities, teacher=teacher, survey_questions=survey_questions,
                progress=advance(bar, task), log=lambda text: note(text),
                n_open=n_open, n_choice=n_choice, max_attempts=attempts, max_rows=max_rows,
                doc_words=doc_words, temperature=temperature, seed=seed, holdout=holdout,
                parallel=parallel, context=context)
    except KeyboardInterrupt:
        done = obj.db.execute("SELECT count(*) FROM teacher_rows").fetchone()[0]
        interrupted(f"{done:,} rows are stored; run the same command again to finish (no "
                    "stored row is asked again)")
    report, reached = made.report, made.survey
    _print_cross(report)
    if reached is not None:
        _print_reached(reached)
    if report.unfinished:
        console.print(f"[yellow]warning:[/yellow] {report.unfinished} rows could not reach the "
                      f"teacher ({report.last_error}); run again to retry them",
                      highlight=False, soft_wrap=True)
        sys.exit(1)



def _print_reached(r) -> None:
    table = Table(box=box.SIMPLE_HEAD, title=f"held-out survey questions (--survey-questions "
                  f"{r.target}): {r.passes} survey-only passes, {r.per_row} questions per row",
                  title_justify="left")
    for name in ("community", "before", "after"):
        table.add_column(name, justify="left" if name == "community" else "right")
    for community in r.before:
        table.add_row(community, f"{r.before[community]:,}", f"{r.after[community]:,}",
                      style=None if r.after[community] >= r.target else "yellow")
    out.print(table)
    out.print(f"{r.calls:,} teacher calls ({r.cached:,} answers read from the store) for "
              f"{r.rows_asked:,} asks of the {r.held_out_rows:,} held-out rows in "
              f"{r.seconds:,.1f} s", highlight=False)
    note(r.line())
    for text in r.notes:
        note(text)


def _print_template_pairs(report) -> None:
    table = Table(box=box.SIMPLE_HEAD, title="template pairs", title_justify="left")
    for name in ("community", "posts", "added now", "pairs", "skipped"):
        table.add_column(name, justify="left" if name in ("community", "skipped") else "right")
    for community, r in report.items():
        skipped = ", ".join(f"{n:,} {why}" for why, n in sorted(r["skipped"].items()))
        table.add_row(community, f"{r['posts']:,}", f"{r['added']:,}", f"{r['pairs']:,}",
                      skipped or "-")
    out.print(table)


def _print_cross(r) -> None:
    out.print(f"teacher: {r.teacher}; chunk rows of topic run {r.topic_run}", highlight=False,
              soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, title="teacher rows", title_justify="left")
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_row("in scope", f"{r.rows_in_scope:,}")
    table.add_row("done before", f"{r.rows_done_before:,}", style="dim")
    table.add_row("tried now", f"{r.tried:,}")
    table.add_row("accepted", f"{r.accepted:,}", style="green" if r.accepted else None)
    for reason, n in r.rejected.most_common():
        table.add_row(f"rejected: {escape(reason)}", f"{n:,}", style="red")
    if r.unfinished:
        table.add_row("teacher unreachable", f"{r.unfinished:,}", style="red")
    out.print(table)
    if r.kept or r.dropped:
        table = Table(box=box.SIMPLE_HEAD, title="questions", title_justify="left")
        table.add_column("")
        table.add_column("count", justify="right")
        table.add_row("kept: open-ended (CommInst)", f"{r.kept['open']:,}")
        table.add_row("kept: multiple-choice (CommSurvey)", f"{r.kept['choice']:,}")
        if r.non_discriminating:
            table.add_row("  of which every community picks the same letter",
                          f"{r.non_discriminating:,}", style="dim")
        for reason, n in r.dropped.most_common():
            table.add_row(f"dropped: {escape(reason)}", f"{n:,}", style="yellow")
        out.print(table)
    table = Table(box=box.SIMPLE_HEAD, title="in the store", title_justify="left")
    for name in ("community", "CommInst answers", "CommSurvey answers"):
        table.add_column(name, justify="left" if name == "community" else "right")
    for community, counts in r.per_community.items():
        table.add_row(community, f"{counts['open']:,}", f"{counts['choice']:,}")
    out.print(table)
    rate = f", {r.output_tokens / r.seconds:,.1f} tokens/s" if r.output_tokens and r.seconds \
        else ""
    out.print(f"{r.calls:,} model calls ({r.cached:,} answers read from the store), "
              f"{r.retries:,} retries, {r.output_tokens:,} output tokens in {r.seconds:,.1f} s"
              f"{rate}", highlight=False)
    for text in r.notes:
        note(text)
