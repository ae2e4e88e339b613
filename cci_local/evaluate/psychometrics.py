"""Administering a psychometric instrument to models and scoring them like human
respondents (docs/method.md#psychometrics).

Each item is put once per persona prefix of the instrument's pool (and
``repeats`` times where answers are sampled): choice items are read from option
log-probabilities (the whole distribution, its expected value per
administration) or, where a backend has none, sampled as letters; count items
are sampled as numbers.  Every raw answer is stored (``instrument_answers``) and
read back on a re-run.  Per item the administrations are aggregated (mean of the
expected values; majority option for sampled letters; mean for counts), then
scored like a human respondent.  Confidence intervals come from resampling the
administrations (persona prefixes and repeats), and two communities' scores are
compared by the bootstrap distribution of their difference.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np
import sqlite_utils

from ..llm import Backend, Sampling, chat, default_model
from ..respondents import PERSONA
from ..store import save_result
from .instruments import Instrument, aggregate, score
from .metrics import Estimate
from .survey import ask

RESAMPLES = 1000


def instrument_hash(inst: Instrument) -> str:
    """The instrument's items, scales and wording (not its persona pool: an answer is
    keyed by its own prefix, so a shorter or longer pool reuses what was asked)."""
    data = inst.model_dump(mode="json", by_alias=True, exclude={"personas"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def item_messages(inst: Instrument, item_id: str, prefix: str, persona: str | None) -> list:
    """The chat messages that put one instrument item: the persona and the persona prefix
    as the system turn, then the preamble, the item and its options (or the count
    instruction)."""
    item, scale = inst.item(item_id), inst.scale_of(item_id)
    parts = [inst.preamble, item.text]
    if scale.kind == "choice":
        parts += ["\n".join(f"{o.letter}) {o.text}" for o in scale.options), inst.instruction]
    else:
        parts.append(inst.count_instruction)
    system = " ".join(p for p in (persona, prefix) if p)
    return ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": "\n".join(p for p in parts if p)}]


@dataclass
class Administration:
    """One respondent's raw answers: item id -> [(persona index, repeat, answer,
    distribution or None, method)]."""
    respondent: str
    answers: dict[str, list[tuple]] = field(default_factory=dict)

    def units(self) -> list[int]:
        """The persona prefixes under which every item was answered: the units that
        the bootstrap resamples (with all their repeats)."""
        sets = [{p for p, *_ in rows} for rows in self.answers.values()]
        return sorted(set.intersection(*sets)) if sets else []


def administer_instrument(db: sqlite_utils.Database, respondent: str, backend: Backend,
                          inst: Instrument, *, persona: str | None = None, repeats: int = 1,
                          scoring: str = "letter", seed: int = 0,
                          progress=None) -> Administration:
    """Put every item to ``backend`` once per persona prefix (x ``repeats`` where
    answers are sampled); store every raw answer; read back what was asked before."""
    from ..llm.cache import identity

    ident = identity(db, backend)
    inst_id = instrument_hash(inst)
    wordings = [hashlib.sha256(json.dumps([persona, prefix, scoring, seed]).encode()
                               ).hexdigest()[:16] for prefix in inst.personas]
    done: dict[tuple, tuple] = {}
    for item, wording, r, answer, dist, method in db.execute(
            "SELECT item, wording, repeat, answer, distribution, method FROM instrument_answers"
            " WHERE respondent = ? AND identity = ? AND instrument = ?",
            [respondent, ident, inst_id]):
        done[(item, wording, r)] = (answer, json.loads(dist) if dist else None, method)
    out = Administration(respondent)
    for it in inst.items:
        scale = inst.scale_of(it.id)
        rows = out.answers.setdefault(it.id, [])
        for p, prefix in enumerate(inst.personas):
            messages = item_messages(inst, it.id, prefix, persona)
            wording = wordings[p]
            for r in range(repeats):
                if (it.id, wording, r) not in done:
                    if scale.kind == "choice":
                        got = ask(db, backend, messages,
                                  {o.letter: o.text for o in scale.options},
                                  scoring=scoring, samples=1, seed=seed + 1000 * p + r)
                        answer, dist, method = got.chosen, got.distribution, got.method
                        if method == "sampled":
                            dist = None  # one sampled letter: the answer is the letter
                    else:
                        answer, dist, method = _count(db, backend, messages, scale,
                                                      seed + 1000 * p + r), None, "sampled"
                    answer = str(answer)  # as stored: a letter, or a number as text
                    done[(it.id, wording, r)] = (answer, dist, method)
                    db.execute(
                        "INSERT OR IGNORE INTO instrument_answers (respondent, model, identity,"
                        " instrument, instrument_name, wording, item, persona, repeat, answer,"
                        " distribution, method, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [respondent, backend.spec, ident, inst_id, inst.name, wording, it.id,
                         p, r, answer, json.dumps(dist) if dist else None, method,
                         time.time()])
                    db.conn.commit()
                answer, dist, method = done[(it.id, wording, r)]
                rows.append((p, r, answer, dist, method))
                if method == "logprobs":
                    break  # the whole distribution is read once; repeats are for sampling
            if progress:
                progress(1)
    return out


def _count(db, backend, messages, scale, seed: int) -> float:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}},
              "required": ["answer"], "additionalProperties": False}
    reply = chat(db, backend, messages, schema=schema,
                 sampling=Sampling(max_tokens=24, temperature=1.0, seed=seed))
    return float(min(max(reply.data["answer"], scale.min), scale.max))


def item_values(inst: Instrument, admin: Administration,
                units: list[int] | None = None) -> dict[str, float]:
    """Per item, the aggregated raw value over the persona prefixes in ``units``
    (default: all; a prefix drawn twice by the bootstrap counts twice)."""
    values = {}
    for item_id, rows in admin.answers.items():
        if units is not None:
            rows = [row for u in units for row in rows if row[0] == u]
        if inst.scale_of(item_id).kind == "count":
            values[item_id] = aggregate(inst, item_id, [float(r[2]) for r in rows])
        elif all(r[4] == "logprobs" for r in rows):
            values[item_id] = aggregate(inst, item_id, [r[3] for r in rows])
        else:
            values[item_id] = aggregate(inst, item_id, [r[2] for r in rows])
    return values


@dataclass
class InstrumentScores:
    respondent: str
    point: dict[str, float]  # subscale / 'global' -> score
    draws: dict[str, np.ndarray]  # the same, per bootstrap resample
    rules: dict[str, bool]
    rule_share: dict[str, float]  # share of resamples in which each rule fires
    administrations: int

    def estimate(self, name: str) -> Estimate:
        low, high = np.percentile(self.draws[name], [2.5, 97.5])
        return Estimate(self.point[name], float(low), float(high), self.administrations)


def score_administration(inst: Instrument, admin: Administration, *,
                         resamples: int = RESAMPLES, seed: int = 0) -> InstrumentScores:
    """Score like a human respondent, with bootstrap draws over the administrations."""
    def named(s) -> dict[str, float]:
        out = dict(s.subscales)
        if s.global_score is not None:
            out["global"] = s.global_score
        return out

    units = admin.units()
    point = score(inst, item_values(inst, admin, units))
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in named(point)}
    fires = dict.fromkeys(point.rules, 0)
    for _ in range(resamples):
        pick = [units[i] for i in rng.integers(0, len(units), len(units))]
        s = score(inst, item_values(inst, admin, pick))
        for k, v in named(s).items():
            draws[k].append(v)
        for k, v in s.rules.items():
            fires[k] += v
    return InstrumentScores(admin.respondent, named(point),
                            {k: np.array(v) for k, v in draws.items()}, point.rules,
                            {k: n / resamples for k, n in fires.items()}, len(units))


def difference(a: InstrumentScores, b: InstrumentScores, name: str) -> tuple[Estimate, float]:
    """a - b on one score: the estimate with its bootstrap interval, and a two-sided
    bootstrap p-value for "no difference"."""
    d = a.draws[name] - b.draws[name]
    low, high = np.percentile(d, [2.5, 97.5])
    p = min(1.0, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
    return Estimate(a.point[name] - b.point[name], float(low), float(high),
                    min(a.administrations, b.administrations)), p


@dataclass
class PsychometricsResult:
    instrument: Instrument
    scores: dict[str, InstrumentScores]  # respondent ->
    notes: list[str]

    def measures(self) -> list[str]:
        return list(next(iter(self.scores.values())).point) if self.scores else []

    def compared(self) -> list[tuple[str, str]]:
        """The pairs of respondents whose difference is shown: the aligned models of
        two or more communities, else their persona-prompted bases."""
        from itertools import combinations

        kind = "aligned" if sum(r.startswith("aligned:") for r in self.scores) >= 2 \
            else "persona"
        return list(combinations([r for r in self.scores if r.startswith(kind + ":")], 2))

    def as_dict(self) -> dict:
        """Everything the tables show, for ``--json`` and the report."""
        measures = self.measures()
        return {
            "instrument": self.instrument.name, "notes": self.notes,
            "prefixes": len(self.instrument.personas),
            "rules": [r.name for r in self.instrument.rules],
            "respondents": {r: {"scores": {m: s.estimate(m).as_dict() for m in measures},
                                "rules": s.rules, "rule_share": s.rule_share,
                                "administrations": s.administrations}
                            for r, s in self.scores.items()},
            "differences": [{"a": a, "b": b, "score": m, **d.as_dict(), "p": p}
                            for a, b in self.compared() for m in measures
                            for d, p in [difference(self.scores[a], self.scores[b], m)]]}


def run_psychometrics(db: sqlite_utils.Database, communities: list[str], inst: Instrument,
                      base: str | None = None, *, persona: bool = True, include_base: bool = True,
                      repeats: int = 1, scoring: str = "letter", persona_text: str = PERSONA,
                      prefixes: int | None = None, seed: int = 0, progress=None,
                      aligned_server: str | None = None,
                      aligned_name: str = "{community}") -> PsychometricsResult:
    """The psychometrics stage's entry: administer ``inst`` to each community's aligned
    model (and, for contrast, the base and the persona-prompted base), score each like
    a human respondent, and keep the scores for the report (``stage_results``).
    ``prefixes``: use only the first N persona prefixes of the instrument's pool."""
    from ..respondents import panel

    if prefixes is not None:
        inst = inst.model_copy(update={"personas": inst.personas[:max(1, prefixes)]})
    base = default_model("base", base)
    respondents = panel(db, communities, base, include_base=include_base, persona=persona,
                        persona_text=persona_text, aligned_server=aligned_server,
                        aligned_name=aligned_name)
    notes, plan = respondents.notes, respondents.plan()
    if progress:
        progress("total", len(inst.items) * len(inst.personas) * len(plan))
    scores = {}
    try:
        for respondent, model, system in plan:
            admin = administer_instrument(
                db, respondent, model, inst, persona=system, repeats=repeats, scoring=scoring,
                seed=seed, progress=(lambda n: progress("advance", n)) if progress else None)
            scores[respondent] = score_administration(inst, admin, seed=seed)
    finally:
        respondents.close()
    result = PsychometricsResult(inst, scores, notes)
    save_result(db, "psychometrics", communities, {
        "instrument": inst.name, "base": base, "scoring": scoring, "prefixes": prefixes,
        "repeats": repeats, "seed": seed}, result.as_dict())
    return result
