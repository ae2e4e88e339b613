"""How many held-out survey questions a generation gives, what difference they can
show, and more of them on request (``generate --survey-questions M``).

The survey scores each respondent on the CommSurvey questions of held-out chunk rows
(the random split).  With the paper's 15% held out and two questions per row, a few
hundred rows give 20-50 questions per community: a difference under ~0.3 in accuracy
cannot be shown (evaluate/power.py, docs/method.md#power).

``forecast()`` says so before any model call, from the stored chunk rows alone.
``reach()`` asks the teacher survey-only passes over the held-out rows (no open-ended
questions, so the training data stay as they are) until every community has M
held-out questions, or a pass brings no new question.  Each pass has its own stored
settings, so an interrupted run goes on where it stopped and a re-run asks nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import sqlite_utils

from ..evaluate.power import ASSUMED_DISCORDANCE, min_detectable_difference, questions_needed
from .cross import CrossOptions, _topic_run, capped, cross_instruct
from .splits import ensure_holdout

TARGET = 0.10  # the difference priced in questions
MAX_PER_ROW = 6  # survey questions asked of one row in a pass: more and small teachers repeat
MAX_PASSES = 6  # passes over the held-out rows; each has new seeds, near-duplicates drop


def held_out_counts(db: sqlite_utils.Database, run_id: int, names: list[str]) -> dict[str, int]:
    """Stored CommSurvey questions of the random split's held-out rows, per community."""
    counts = dict.fromkeys(names, 0)
    for community, n in db.execute(
            "SELECT a.community, count(*) FROM instructions i"
            " JOIN community_answers a ON a.instruction_id = i.id"
            " JOIN chunk_rows r ON r.id = i.chunk_row_id JOIN topics t ON t.id = r.topic_id"
            " WHERE i.kind = 'choice' AND i.split = 'test' AND t.run_id = ?"
            " GROUP BY a.community", [run_id]):
        if community in counts:
            counts[community] = n
    return counts


def _rows(db, run_id: int, names: list[str], options: CrossOptions) -> list[SimpleNamespace]:
    held = ensure_holdout(db, run_id, "chunk_row", options.holdout, options.seed)
    rows: dict[int, SimpleNamespace] = {}
    for row_id, community in db.execute(
            "SELECT r.id, c.community FROM chunk_rows r JOIN topics t ON t.id = r.topic_id"
            " JOIN chunks c ON c.chunk_row_id = r.id WHERE t.run_id = ?"
            " ORDER BY t.number, r.row_number", [run_id]):
        if community in names:
            row = rows.setdefault(row_id, SimpleNamespace(
                id=row_id, split="test" if row_id in held else "train", communities=[]))
            row.communities.append(community)
    return list(rows.values())


@dataclass
class Forecast:
    """What the survey will hold before any teacher call, and what it can show."""
    held_out_rows: int
    questions: dict[str, int]  # expected held-out questions per community
    target: int | None = None  # --survey-questions, where asked

    @property
    def fewest(self) -> int:
        return min(self.questions.values()) if self.questions else 0

    def line(self) -> str:
        n = max(self.fewest, self.target or 0)
        needed = questions_needed(TARGET)
        aim = f"--survey-questions {self.target} aims for {self.target}" if self.target else \
            f"ask for more with --survey-questions {needed}"
        if n == 0:
            return (f"power: no held-out survey question is expected ({self.held_out_rows} "
                    f"held-out chunk rows): showing a difference of {TARGET:.2f} needs about "
                    f"{needed} per community; {aim}")
        mdd = min_detectable_difference(n)
        shown = (f"even a difference in accuracy of {ASSUMED_DISCORDANCE:.2f} cannot be shown"
                 if mdd >= ASSUMED_DISCORDANCE
                 else f"a difference in accuracy under {mdd:.2f} cannot be shown")
        return (f"power: with about {n} held-out survey questions per community, {shown} "
                f"(80% power, 95% confidence, half the questions discordant); showing "
                f"{TARGET:.2f} needs about {needed}; {aim}")


def forecast(db: sqlite_utils.Database, names: list[str], options: CrossOptions,
             settings: str | None = None, target: int | None = None) -> Forecast:
    """Held-out questions each community will have once ``options`` are generated:
    those stored, plus ``n_choice`` for each held-out row still to ask (within
    ``max_rows``).  ``settings``: the generation's stored settings (rows done with them
    are not asked again)."""
    run_id = _topic_run(db, names)
    rows = _rows(db, run_id, names, options)
    done = {r for (r,) in db.execute("SELECT chunk_row_id FROM teacher_rows WHERE settings = ?",
                                     [settings])} if settings else set()
    todo = capped(rows, done, options.max_rows) if options.max_rows is not None else \
        [r for r in rows if r.id not in done]
    expected = held_out_counts(db, run_id, names)
    for row in todo:
        if row.split == "test":
            for c in row.communities:
                expected[c] += options.n_choice
    return Forecast(sum(r.split == "test" for r in rows), expected, target)


@dataclass
class Reached:
    """What ``reach`` did: passes, teacher calls, and held-out counts before and after."""
    target: int
    before: dict[str, int]
    after: dict[str, int] = field(default_factory=dict)
    passes: int = 0
    per_row: int = 0
    calls: int = 0
    cached: int = 0
    rows_asked: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    held_out_rows: int = 0

    @property
    def reached(self) -> bool:
        return bool(self.after) and min(self.after.values()) >= self.target

    def line(self) -> str:
        """The power line for the held-out questions there are now."""
        return Forecast(self.held_out_rows, dict(self.after)).line().replace(
            "with about", "now with", 1)


def reach(db: sqlite_utils.Database, names: list[str], teacher, options: CrossOptions,
          target: int, *, progress: Callable[[str, int], None] | None = None) -> Reached:
    """Survey-only teacher passes over the held-out rows until each of ``names`` has
    ``target`` held-out questions.  Questions per row in a pass depend only on the
    target and the held-out rows, so a resumed run repeats the same passes (asked
    nothing twice).  Stops early when a pass adds no question."""
    run_id = _topic_run(db, names)
    held = sum(r.split == "test" for r in _rows(db, run_id, names, options))
    result = Reached(target, held_out_counts(db, run_id, names), held_out_rows=held)
    result.after = dict(result.before)
    if held == 0:
        result.notes.append("the topic run holds out no chunk row: refit topics with smaller "
                            "chunks to have rows to hold out")
        return result
    result.per_row = min(MAX_PER_ROW, max(2, math.ceil(target / held)))
    for number in range(1, MAX_PASSES + 1):
        if result.reached:
            break
        before = sum(result.after.values())
        rep = cross_instruct(db, names, teacher, replace(
            options, n_open=0, n_choice=result.per_row, max_rows=None, survey_pass=number),
            progress=progress)
        result.passes = number
        result.calls += rep.calls
        result.cached += rep.cached
        result.rows_asked += rep.tried
        result.seconds += rep.seconds
        if rep.unfinished:
            result.notes.append(f"{rep.unfinished} held-out rows could not reach the teacher "
                                f"({rep.last_error}); run again to retry them")
            break
        result.after = held_out_counts(db, run_id, names)
        if sum(result.after.values()) == before:
            break
    if not result.reached:
        result.notes.append(
            f"reached {min(result.after.values())} of {target} held-out survey questions "
            f"after {result.passes} pass{'es' if result.passes != 1 else ''} over the {held} "
            "held-out chunk rows (the teacher "
            "repeats itself there): fit topics with smaller chunks for more rows (`cci-local "
            "topics --chunk-docs`), or use a stronger teacher")
    return result


def generate_sized(db: sqlite_utils.Database, names: list[str], teacher, options: CrossOptions,
                   target: int | None = None, *, progress=None,
                   log: Callable[[str], None] | None = None):
    """The generate stage as `generate` and `run` both do it: the power forecast said
    (``log``) before any call, every chunk row to the teacher, then with ``target`` the
    survey-only passes.  Returns (forecast, the teacher's report, Reached or None)."""
    from ..llm.cache import identity

    expected = forecast(db, names, options, options.settings(identity(db, teacher), names),
                        target)
    if log:
        log(expected.line())
    report = cross_instruct(db, names, teacher, options, progress=progress)
    reached = None
    if target and not report.unfinished:
        reached = reach(db, names, teacher, options, target, progress=progress)
    return expected, report, reached
