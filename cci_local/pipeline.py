"""`cci-local run`: every stage in order, each one skipped where its work is done.

    data -> topics -> generate -> train -> survey -> fidelity -> psychometrics -> audit
         -> report

Nothing here does a stage's work: each step calls the stage's own entry function,
which already knows what it did before (ingested files by fingerprint, topic runs
by settings, teacher rows, adapters by data and settings, every model answer in
the prompt cache).  A re-run therefore repeats no model call, and a crashed or
interrupted run goes on where it stopped.  The evaluations always recompute their
figures, from stored answers, and keep them (``stage_results``) for the report.

Where a community's documents come from: cci_local/data.py.  Before the first stage,
``check_options()`` checks every stage's options, so that a run does not fail late
for a flag it could have asked for at the start.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sqlite_utils

from .data import ENV_DUMPS, ENV_URL, NoData, dumps_folder, find_data, find_dumps  # noqa: F401
from .errors import PipelineError
from .llm import USAGE
from .pipeline_evaluate import _audit, _base, _fidelity, _psychometrics, _survey
from .rss import peak_rss_mb, release, reset_peak
from .store import normalise_community

STAGES = ("data", "topics", "generate", "train", "survey", "fidelity", "psychometrics", "audit",
          "report")
FORCEABLE = ("ingest", "topics", "train")


@dataclass
class RunOptions:
    corpus: tuple[str, ...] = ()  # files or folders to ingest first
    dumps: Path | None = None  # Arctic Shift dumps folder (default: dumps/ beside the store)
    offline: bool = False  # never fetch from the Arctic Shift API
    collect_limit: int = 5000  # items per kind fetched from the API
    since: int | None = None  # epoch seconds: fetch only newer items
    limit: int | None = None  # records read per corpus file
    teacher: str | None = None  # default: the registry's teacher
    base: str | None = None  # default: the registry's base
    max_rows: int | None = None  # chunk rows put to the teacher
    survey_questions: int | None = None  # held-out CommSurvey questions to reach
    kinds: tuple[str, ...] = ("open",)  # training pairs: CommInst ('open'), 'template'
    steps: int | None = None
    epochs: float = 3.0
    batch_size: int = 16
    micro_batch: int = 4  # or fewer, to fit the memory budget
    max_len: int | None = None  # None: the longest pair
    memory: float | None = None  # GiB for training (default: a safe share of the device)
    max_examples: int | None = None
    dedup: str = "near"  # training: duplicate answers removed first (none, exact, near)
    scoring: str = "letter"  # survey and psychometrics: letter (the paper's) or text
    samples: int = 50  # fidelity: generated answers per model
    real: int = 200  # fidelity: real documents compared
    judges: bool = True  # fidelity: toxicity and harm
    instrument: str | None = None  # psychometrics: an instrument file or shipped name
    items: str | None = None  # its item bank, where it leaves item texts out
    prefixes: int | None = None  # psychometrics: persona prefixes used
    audit_samples: int = 64  # privacy audit: training (and held-out) texts tested
    seed: int = 0
    force: frozenset[str] = frozenset()  # stages in FORCEABLE to redo
    until: str | None = None  # stop after this stage
    formats: tuple[str, ...] = ("md", "html", "json")

    @classmethod
    def quick(cls, **changes) -> RunOptions:
        """A trial run in minutes on a laptop's CPU: 4 teacher rows, 8 training steps
        on CommInst and template pairs, 10 answers per model for fidelity, option-text
        scoring (small models cannot map an option's text to its letter), 2 persona
        prefixes.  Figures from it show the machinery works, nothing about a community."""
        quick = dict(max_rows=4, kinds=("open", "template"), steps=8, batch_size=8,
                     micro_batch=4, max_len=256, max_examples=256, scoring="text", samples=10,
                     real=50, prefixes=2, audit_samples=12)
        return cls(**(quick | changes))


@dataclass
class StageOutcome:
    stage: str
    status: str  # ran, done before, skipped, failed, interrupted
    summary: str = ""
    seconds: float = 0.0
    calls: int = 0  # real model calls made
    loads: int = 0  # models loaded into memory
    peak_rss_mb: float | None = None  # this stage's peak resident memory
    notes: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    run_id: int
    communities: list[str]
    stages: list[StageOutcome] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.stages)

    def as_dict(self) -> dict:
        return {"run": self.run_id, "communities": self.communities, "seconds": self.seconds,
                "model_calls": self.calls, "models_loaded": sum(s.loads for s in self.stages),
                "reports": [str(p) for p in self.reports],
                "stages": [asdict(s) for s in self.stages]}


def report_paths(db_path: Path, formats=("md", "html", "json")) -> list[Path]:
    """Where `run` writes the report: beside the store, named after it."""
    db_path = Path(db_path)
    return [db_path.with_name(f"{db_path.stem}-report.{fmt}") for fmt in formats]


# --------------------------------------------------------------------------- the run


def run_pipeline(db: sqlite_utils.Database, db_path: Path, communities: list[str],
                 options: RunOptions | None = None, *,
                 progress: Callable[[str, object], None] | None = None,
                 log: Callable[[str], None] | None = None) -> RunReport:
    """Run every stage for ``communities``; return what each did.

    ``progress(kind, value)``: kind 'stage' with (index, name) when a stage starts,
    then the stage's own 'total' / 'phase' / 'completed' / 'advance' calls.
    ``log(text)``: one line when a stage ends, and notes."""
    options = options or RunOptions()
    progress = progress or (lambda kind, value: None)
    log = log or (lambda text: None)
    names = list(dict.fromkeys(normalise_community(c) for c in communities))
    if not names:
        raise PipelineError("name at least one community, e.g. `cci-local run r/keto r/nutrition`")
    if options.until is not None and options.until not in STAGES:
        raise PipelineError(f"--until takes one of {', '.join(STAGES)}, not {options.until}")
    unknown = set(options.force) - set(FORCEABLE)
    if unknown:
        raise PipelineError(f"--force takes {', '.join(FORCEABLE)}, not {', '.join(unknown)}")
    check_options(options)
    for line in check_memory(db, names, options):
        log(line)
    settings = {k: v for k, v in asdict(options).items()
                if k not in ("force", "dumps", "until")}
    with db.conn:
        cur = db.conn.execute(
            "INSERT INTO pipeline_runs (communities, settings, status, created_at)"
            " VALUES (?, ?, 'running', ?)",
            [",".join(names), json.dumps(settings, default=str), time.time()])
    report = RunReport(cur.lastrowid, names)
    state = {"db_path": Path(db_path), "names": names, "options": options, "log": log,
             "progress": progress, "outcomes": report.stages}
    start, status = time.monotonic(), "failed"
    try:
        for index, stage in enumerate(STAGES):
            progress("stage", (index, stage))
            outcome = StageOutcome(stage, "ran")
            report.stages.append(outcome)
            calls, loads, t0 = USAGE["calls"], USAGE["loads"], time.monotonic()
            measured = reset_peak()
            try:
                result = _STEPS[stage](db, state, outcome)
            except KeyboardInterrupt:
                outcome.status = "interrupted"
                status = "interrupted"
                raise
            except PipelineError as e:
                outcome.status, outcome.summary = "failed", str(e)
                raise
            except Exception as e:  # a bug or a failure no stage foresaw: kept in the log
                outcome.status, outcome.summary = "failed", f"{type(e).__name__}: {e}"
                raise
            finally:
                outcome.seconds = time.monotonic() - t0
                outcome.calls = USAGE["calls"] - calls
                outcome.loads = USAGE["loads"] - loads
                if measured:
                    outcome.peak_rss_mb = round(peak_rss_mb(), 1)
                release()  # what this stage freed goes back before the next one loads
            idle = result is False or (result is None and not outcome.calls
                                       and not outcome.loads)
            if outcome.status == "ran" and idle:
                outcome.status = "done before"
            if stage == "report":
                report.reports = state["reports"]
            log(_line(outcome))
            if stage == options.until:
                break
        status = "done"
    finally:
        report.seconds = time.monotonic() - start
        with db.conn:
            db.conn.execute(
                "UPDATE pipeline_runs SET stages = ?, model_calls = ?, seconds = ?, status = ?"
                " WHERE id = ?", [json.dumps([asdict(s) for s in report.stages]), report.calls,
                                  report.seconds, status, report.run_id])
    return report


def check_options(options: RunOptions) -> None:
    """Every stage's options, checked before the first stage starts: a run must not fail
    at psychometrics after half an hour of work for a flag it could have asked for."""
    from .evaluate.instruments import InstrumentError, load_instrument
    from .llm import BackendError, default_model, get_backend

    problems = []
    for role, given in (("teacher", options.teacher), ("base", options.base)):
        try:
            get_backend(default_model(role, given)).close()  # a name check: nothing loads
        except BackendError as e:
            problems.append(f"--{role}: {e}")
    if options.items and not Path(options.items).is_file():
        problems.append(f"--items: no file at {options.items}")
    elif options.instrument:
        try:
            load_instrument(options.instrument, options.items)
        except InstrumentError as e:
            problems.append(f"--instrument: {e}")
    if problems:
        raise PipelineError("nothing was run; fix first:\n" + "\n".join(problems))


def check_memory(db, names: list[str], options: RunOptions) -> list[str]:
    """The training plan for each community, fitted to ``options.memory`` before any
    stage starts; a run whose training cannot fit is refused here (PipelineError),
    not after hours of generation.  Where no training pairs are stored yet, examples
    as long as ``max_len`` (or 1,024 tokens) are assumed.  Returns lines to log."""
    from .store import find_community
    from .train import OverBudget, TrainConfig, TrainError, plan_pairs, resolve_base
    from .train.data import training_pairs
    from .train.estimate import refusal

    if options.until in ("data", "topics", "generate"):
        return []
    try:
        base = resolve_base(_base(options))
    except TrainError as e:
        return [f"note: no memory plan for training: {e}"]
    config = TrainConfig(steps=options.steps, epochs=options.epochs,
                         batch_size=options.batch_size, micro_batch=options.micro_batch,
                         max_len=options.max_len, seed=options.seed, dedup=options.dedup)
    lines = []
    for name in names:
        stored = find_community(db, name)
        pairs = training_pairs(db, stored, options.kinds, max_examples=options.max_examples,
                               seed=options.seed, dedup=options.dedup) if stored else []
        counts = None
        if not pairs:
            length = options.max_len or 1024
            n = options.max_examples or 256
            pairs = [("", "")] * n
            counts = ([length] * n, [length * 3 // 4] * n,
                      f"assumed: no training pairs yet, {n} examples of {length} tokens")
        plan, _ = plan_pairs(pairs, base, config, memory=options.memory, counts=counts)
        if not plan.fits:
            raise PipelineError(f"nothing was run; fix first:\n--memory: r/{name}: "
                                + refusal(plan)) from OverBudget(refusal(plan))
        lines.append(f"train r/{name}: peak ~{plan.peak_gib:.2f} GiB of a "
                     f"{plan.budget_gib:.1f} GiB budget ({plan.budget_from}); {plan.trainer} on "
                     f"{plan.device}, micro-batch {plan.micro_batch}, gradient checkpointing "
                     f"{'on' if plan.checkpointing else 'off'} ({plan.tokens_counted})")
    return lines


def _line(o: StageOutcome) -> str:
    calls = f", {o.calls:,} model calls" if o.calls else ""
    return f"{o.stage}: {o.status} ({o.seconds:,.1f} s{calls}) {o.summary}".rstrip()


# --------------------------------------------------------------------------- the steps
# Each returns True when it did new work, False when it found its work done, None when
# that is for its model calls to say (the evaluations: every answer is in the cache).


def _data(db, state, outcome) -> bool:
    from .ingest import BadInput

    try:
        added, counts = find_data(db, state["db_path"], state["names"], state["options"],
                                  progress=state["progress"], log=state["log"])
    except (BadInput, NoData) as e:
        raise PipelineError(str(e)) from e
    outcome.summary = ", ".join(f"r/{n} {c:,} documents" for n, c in counts.items()) + \
        (f" ({added:,} new)" if added else "")
    return added > 0


def _topics(db, state, outcome) -> bool:
    from .embed import EmbedderError
    from .topics import TopicParams, TopicsError, fit_topics

    options = state["options"]
    try:
        summary = fit_topics(db, state["names"], TopicParams(seed=options.seed),
                             force="topics" in options.force, progress=state["progress"])
    except (TopicsError, EmbedderError) as e:
        raise PipelineError(f"topics: {e}") from e
    rows = sum(t["chunk_rows"] for t in summary.topics)
    outcome.summary = (f"{len(summary.topics)} topics over {summary.n_documents:,} documents, "
                       f"{rows} chunk rows")
    outcome.notes = list(summary.notes)
    return not summary.reused


def _generate(db, state, outcome) -> bool:
    from .generate import (
        CrossOptions,
        GenerateError,
        TemplateOptions,
        template_pairs,
    )
    from .generate.survey_size import generate_sized
    from .llm import BackendError, UnknownModel, default_model, get_backend

    names, options, log = state["names"], state["options"], state["log"]
    templates = template_pairs(db, names, TemplateOptions(seed=options.seed))
    made = sum(r["added"] for r in templates.values())
    try:
        teacher = get_backend(default_model("teacher", options.teacher))
    except (UnknownModel, BackendError) as e:
        raise PipelineError(f"generate: {e}") from e
    if teacher.remote:
        log(f"note: {teacher.describe()} is a remote model: the documents shown to it leave "
            "this machine")
    cross = CrossOptions(max_rows=options.max_rows, seed=options.seed)
    try:
        _, rep, reached = generate_sized(db, names, teacher, cross, options.survey_questions,
                                         progress=state["progress"],
                                         log=lambda text: log("note: " + text))
    except (GenerateError, BackendError) as e:
        raise PipelineError(f"generate: {e}") from e
    finally:
        teacher.close()
    if rep.unfinished:
        raise PipelineError(f"generate: {rep.unfinished} chunk rows could not reach the teacher "
                            f"({rep.last_error}); run again to retry them")
    counts = ", ".join(f"r/{c} {n['open']:,} CommInst + {n['choice']:,} CommSurvey"
                       for c, n in rep.per_community.items())
    outcome.summary = (f"{counts}; {rep.tried} of {rep.rows_in_scope} chunk rows asked now; "
                       f"{sum(r['pairs'] for r in templates.values()):,} template pairs")
    outcome.notes = list(rep.notes)
    if reached is not None:
        outcome.summary += (f"; held-out CommSurvey {min(reached.after.values())} per "
                            f"community (asked for {reached.target}: {reached.calls} more "
                            "teacher calls)")
        outcome.notes += reached.notes
    return rep.tried > 0 or made > 0 or bool(reached and reached.rows_asked)


def _train(db, state, outcome) -> bool:
    from .train import TrainConfig, TrainError, train

    names, options, progress = state["names"], state["options"], state["progress"]
    config = TrainConfig(steps=options.steps, epochs=options.epochs,
                         batch_size=options.batch_size, micro_batch=options.micro_batch,
                         max_len=options.max_len, seed=options.seed, dedup=options.dedup)
    trained, parts = False, []
    for name in names:
        shown = set()

        def on_step(point, name=name, shown=shown):
            if not shown:  # the first step of this run (a resumed one starts later)
                shown.add(name)
                progress("phase", (f"train r/{name}", point["total"]))
            progress("completed", point["step"])
        try:
            row = train(db, name, _base(options), config, kinds=options.kinds,
                        max_examples=options.max_examples, on_step=on_step,
                        force="train" in options.force, memory=options.memory)
        except TrainError as e:
            raise PipelineError(f"train r/{name}: {e}") from e
        trained |= not row["reused"]
        parts.append(f"r/{name} {row['steps']} steps on {row['examples']:,} examples, loss "
                     f"{row['final_loss']:.3f}")
    outcome.summary = "; ".join(parts)
    return trained


def _report(db, state, outcome) -> bool:
    """Rewritten when an earlier stage did anything new, or a report file is missing."""
    from .report import write_report

    paths = report_paths(state["db_path"], state["options"].formats)
    state["reports"] = paths
    outcome.summary = ", ".join(str(p) for p in paths)
    changed = any(s.status == "ran" for s in state["outcomes"][:-1])
    if not changed and all(p.exists() for p in paths):
        return False
    for path in paths:
        write_report(db, path, path.suffix.lstrip("."), communities=state["names"])
    return True


_STEPS = {"data": _data, "topics": _topics, "generate": _generate, "train": _train,
          "survey": _survey, "fidelity": _fidelity, "psychometrics": _psychometrics,
          "audit": _audit, "report": _report}

__all__ = ["FORCEABLE", "STAGES", "PipelineError", "RunOptions", "RunReport", "StageOutcome",
           "dumps_folder", "find_dumps", "report_paths", "run_pipeline"]
