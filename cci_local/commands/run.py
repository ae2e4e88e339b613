"""`cci-local run` (every stage in order, each skipped where its work is done) and
`cci-local collect` (Arctic Shift's API into per-subreddit dumps).  The pipeline:
cci_local/pipeline.py; collection: cci_local/collect.py."""

from __future__ import annotations

import json

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from .common import (
    advance,
    base_option,
    console,
    fail,
    interrupted,
    json_option,
    out,
    progress_bar,
    seed_option,
)


@click.command(name="run")
@click.argument("communities", nargs=-1, required=True)
@click.option("--corpus", multiple=True, type=click.Path(exists=True), metavar="PATH",
              help="Corpus files or folders to ingest (repeatable); else Arctic Shift dumps "
                   "in --dumps, documents already in the store, or the Arctic Shift API.")
@click.option("--dumps", type=click.Path(file_okay=False), metavar="DIR",
              help="Where <name>_submissions.zst / <name>_comments.zst dumps are looked for "
                   "and collected to (default: dumps/ beside the store, or $CCI_LOCAL_DUMPS).")
@click.option("--offline", is_flag=True, help="Never fetch from the Arctic Shift API.")
@click.option("--limit", type=click.IntRange(min=1), help="Read at most N records per file.")
@click.option("--teacher", help="The teacher MODEL (default: the registry's teacher).")
@base_option()
@click.option("--max-rows", type=click.IntRange(min=0),
              help="Put at most N chunk rows to the teacher (default: all).")
@click.option("--survey-questions", type=click.IntRange(min=1), metavar="M",
              help="Generate: survey-only teacher passes over the held-out chunk rows until "
              "each community has M held-out CommSurvey questions.")
@click.option("--kind", "kinds", type=click.Choice(["open", "template"]), multiple=True,
              help="Training pairs: open (CommInst, the default), template, or both.")
@click.option("--steps", type=click.IntRange(min=1), help="Training steps (overrides --epochs).")
@click.option("--epochs", type=click.FloatRange(min=0.01), help="Training epochs [default: 3].")
@click.option("--dedup", type=click.Choice(["none", "exact", "near"]),
              help="Training: remove duplicate answers first [default: near].")
@click.option("--scoring", type=click.Choice(["letter", "text"]),
              help="Survey and psychometrics scoring [default: letter].")
@click.option("--samples", type=click.IntRange(min=5),
              help="Fidelity: generated answers per model [default: 50].")
@click.option("--real", type=click.IntRange(min=10),
              help="Fidelity: real documents compared [default: 200].")
@click.option("--no-judges", is_flag=True, help="Fidelity without toxicity and harm.")
@click.option("--instrument", metavar="FILE|NAME",
              help="Also administer this psychometric instrument (edeq, weight-concerns, a "
                   "file); edeq needs --items.  Checked before any stage starts.")
@click.option("--items", "item_bank", type=click.Path(dir_okay=False),
              help="The instrument's item bank CSV, where it leaves item texts out.")
@click.option("--prefixes", type=click.IntRange(min=1), metavar="N",
              help="Psychometrics: the first N persona prefixes only.")
@click.option("--audit-samples", type=click.IntRange(min=4), metavar="N",
              help="Privacy audit: training and held-out texts tested per community "
              "[default: 64].")
@click.option("--quick", is_flag=True,
              help="A trial run in minutes on a CPU: 4 teacher rows, 8 training steps on "
                   "CommInst and template pairs, 10 fidelity answers per model, text scoring, "
                   "2 persona prefixes, 12 audited texts (options given explicitly still win).")
@click.option("--force", "force", multiple=True, type=click.Choice(["ingest", "topics", "train"]),
              help="Redo a stage even where it is done (repeatable).")
@click.option("--until", type=click.Choice(["data", "topics", "generate", "train", "survey",
                                            "fidelity", "psychometrics", "audit"]),
              help="Stop after this stage.")
@click.option("--memory", type=click.FloatRange(min=0.1), metavar="GIB",
              help="Training's memory budget in GiB (default: 75% of this machine's RAM, or of "
              "the GPU's on CUDA); checked before any stage starts.")
@seed_option
@json_option("what each stage did")
@click.pass_obj
def run_cmd(obj, communities, corpus, dumps, offline, limit, teacher, base, max_rows,
            survey_questions, kinds,
            steps, epochs, dedup, scoring, samples, real, no_judges, instrument, item_bank,
            prefixes, audit_samples, quick, force, until, memory, seed, as_json):
    """Everything for COMMUNITIES in one go: find the data, ingest, topics, generate,
    train, survey, fidelity (and psychometrics with --instrument), the privacy
    audit of each adapter, then write the report beside the store.  What is done
    already is skipped: a second identical run makes no model call; an interrupted
    one goes on where it stopped."""
    from ..pipeline import STAGES, PipelineError, RunOptions

    given = {k: v for k, v in dict(
        corpus=tuple(corpus) or None, dumps=dumps, limit=limit, teacher=teacher, base=base,
        max_rows=max_rows, survey_questions=survey_questions, kinds=tuple(kinds) or None,
        steps=steps, epochs=epochs, dedup=dedup,
        scoring=scoring, samples=samples, real=real, instrument=instrument, items=item_bank,
        prefixes=prefixes, memory=memory, audit_samples=audit_samples).items()
        if v is not None}
    given |= {"offline": offline, "judges": not no_judges, "seed": seed,
              "force": frozenset(force), "until": until}
    options = RunOptions.quick(**given) if quick else RunOptions(**given)
    bar = progress_bar("{task.description}")  # the label changes with the stage
    shown = STAGES[:STAGES.index(until) + 1] if until else STAGES
    overall = bar.add_task("run", total=len(shown))
    inner = bar.add_task("", total=None)

    def progress(kind, value):
        if kind == "stage":
            index, name = value
            bar.update(overall, completed=index,
                                description=f"run {index + 1}/{len(shown)}: {name}")
            bar.reset(inner, total=None, description=f"  {name}")
        elif kind == "total":
            bar.reset(inner, total=value)
        elif kind == "phase":
            bar.reset(inner, description=f"  {value[0]}", total=value[1])
        elif kind == "completed":
            bar.update(inner, completed=value)
        else:
            bar.advance(inner, value)

    def log(text):
        console.print(text, highlight=False, markup=False, soft_wrap=True,
                      style="dim" if text.startswith("note:") else None)

    try:
        with bar:
            report = obj.run(communities, options=options, progress=progress, log=log)
    except PipelineError as e:
        if str(e).startswith("nothing was run"):
            fail(str(e), 1)
        fail(f"{e}\nEverything done so far is kept; run the same command again after "
             "fixing this to go on from there.", 1)
    except KeyboardInterrupt:
        interrupted("everything done so far is kept; run the same command again to go on "
                    "from there")
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    table = Table(box=box.SIMPLE_HEAD, title=f"cci-local run {report.run_id}: "
                  + " ".join(f"r/{c}" for c in report.communities), title_justify="left")
    numbers = ("seconds", "model calls", "peak MB")
    for name in ("stage", "status", *numbers, "result"):
        table.add_column(name, justify="right" if name in numbers else "left",
                         overflow="fold", no_wrap=name != "result")
    colours = {"ran": "green", "done before": "dim", "skipped": "dim"}
    for s in report.stages:
        table.add_row(s.stage, f"[{colours.get(s.status, 'red')}]{s.status}[/]",
                      f"{s.seconds:,.1f}", f"{s.calls:,}",
                      "" if s.peak_rss_mb is None else f"{s.peak_rss_mb:,.0f}",
                      escape(s.summary))
    out.print(table)
    peaks = [s for s in report.stages if s.peak_rss_mb]
    if peaks:
        top = max(peaks, key=lambda s: s.peak_rss_mb)
        out.print(f"peak memory: {top.peak_rss_mb:,.0f} MB, in {top.stage} (each stage's "
                  "peak; what a stage frees is released before the next)", highlight=False)
    for s in report.stages:
        for note in s.notes:
            out.print(f"note ({s.stage}): {note}", style="dim", highlight=False, soft_wrap=True)
    out.print(f"{report.calls:,} model calls in {report.seconds:,.1f} s; report: "
              + ", ".join(str(p) for p in report.reports), highlight=False, soft_wrap=True)


@click.command(name="collect")
@click.argument("communities", nargs=-1, required=True)
@click.option("--dumps", type=click.Path(file_okay=False), metavar="DIR",
              help="Where the dumps go (default: dumps/ beside the store, or $CCI_LOCAL_DUMPS).")
@click.option("--limit", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Items per kind at most (a larger limit later continues the same files).")
@click.option("--since", help="Only items created at or after: 2022-01-01, epoch seconds, or an "
              "age such as 30d, 6w, 1y.")
@click.option("--until", help="Only items created before this time (same forms).")
@click.option("--kind", "kinds", type=click.Choice(["submissions", "comments"]), multiple=True,
              help="What to collect (default: both).")
@click.option("--url", envvar="CCI_LOCAL_ARCTIC_SHIFT_URL", metavar="URL",
              help="Another Arctic Shift server [default: https://arctic-shift.photon-reddit.com; "
                   "$CCI_LOCAL_ARCTIC_SHIFT_URL].")
@click.pass_obj
def collect_cmd(obj, communities, dumps, limit, since, until, kinds, url):
    """Fetch COMMUNITIES' public posts and comments from the Arctic Shift API into
    <name>_submissions.zst and <name>_comments.zst in the dumps folder, the names and
    format of Arctic Shift's per-subreddit dumps, for `ingest` or `run` to read.

    Paged oldest first, at most one request a second, rate-limit headers and 429s
    honoured, dropped connections retried; an interrupted collection resumes where
    it stopped and never writes an item twice.  Only the subreddit's name and the
    time range leave this machine."""
    from ..collect import DEFAULT_URL, KINDS, collect
    from ..pipeline import dumps_folder

    folder = dumps_folder(obj.db_path, dumps)
    bar = progress_bar("collecting")
    reports = []
    try:
        with bar:
            task = bar.add_task("items", total=None)
            for name in communities:
                reports.append(collect(name, folder, kinds=tuple(kinds) or KINDS, limit=limit,
                                       since=since, until=until, base_url=url or DEFAULT_URL,
                                       progress=advance(bar, task)))
    except ValueError as e:
        fail(str(e))
    except KeyboardInterrupt:
        interrupted("what arrived is kept; run the same command again to go on from there")
    table = Table(box=box.SIMPLE_HEAD, title=f"collected into {folder}", title_justify="left")
    for name in ("community", "kind", "status", "new", "items", "pages", "retries", "file"):
        table.add_column(name, justify="right" if name in ("new", "items", "pages", "retries")
                         else "left", overflow="fold")
    for rep in reports:
        for k in rep.kinds:
            table.add_row(f"r/{rep.subreddit}", k.kind, k.status, f"{k.added:,}",
                          f"{k.items:,}", f"{k.pages:,}", f"{k.retries:,}", escape(str(k.file)))
    out.print(table)
    out.print(f"next: cci-local run {' '.join('r/' + r.subreddit for r in reports)} "
              f"(or cci-local ingest {folder})", highlight=False, soft_wrap=True)
