"""Fidelity: does the aligned model write like the community?  (See docs/method.md#fidelity.)

``run_fidelity(db, community)`` samples answers from the aligned model, the base
model and the persona-prompted base to the community's held-out open-ended
instructions, screens them as the paper did (near-copies of real texts, exact
duplicates, gibberish by a perplexity cap), and compares each set with the
community's real documents on the same topics, next to a split half of the real
documents as the ceiling: identifiability, Frechet distance of embeddings,
real-vs-generated AUC, emotion and sentiment divergence, each with a 95%
bootstrap interval; and toxicity and harm scores (``judges.py``: Detoxify or an LLM
judge) of every kept text and of the real half, with the harm judge's reasons.
Generated texts (and why any were dropped), every score and the figures are
stored; every model call goes through the prompt cache, so a re-run makes none.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import sqlite_utils

from ..llm import Backend, Request, Sampling, chat_many, default_model
from ..llm.base import count_call
from ..respondents import PERSONA
from ..store import save_result
from .judges import HARM_RUBRIC, Scorer
from .metrics import Estimate, bootstrap_ci, two_sample_ci

REAL = "real (split half)"


@dataclass
class FidelityOptions:
    samples: int = 50  # generated answers per model
    real: int = 200  # real documents of the community compared (sampled)
    max_tokens: int = 128
    temperature: float = 0.8
    seed: int = 0
    embedder: str = "wordllama"
    max_perplexity: float | None = None  # None: the largest perplexity among real texts
    persona_text: str = PERSONA

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class JudgeOptions:
    """Who scores toxicity and harm.  Not part of a run's key: scores are stored per
    scorer, so another judge adds its own scores to the same texts."""

    judge: str | None = None  # the judge MODEL; None: the base model
    detoxify: str | None = None  # a local Detoxify checkpoint: toxicity from it
    detoxify_config: str | None = None  # its transformer's config/tokenizer folder
    harm_rubric: str = HARM_RUBRIC
    enabled: bool = True


@dataclass
class FidelityResult:
    run_id: int
    community: str
    models: list[str]
    dropped: dict[str, dict[str, int]]  # model -> reason -> count
    metrics: dict[str, dict[str, Estimate]]  # model (or REAL) -> metric -> estimate
    confusion: dict[str, dict[str, int]]
    perplexity_cap: float
    notes: list[str] = field(default_factory=list)
    scorers: dict[str, str] = field(default_factory=dict)  # criterion -> who scored it
    harmful: list[dict] = field(default_factory=list)  # highest harm scores, with reasons
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each phase

    def as_dict(self) -> dict:
        """Everything the tables show, for ``--json`` and the report."""
        return {"community": self.community, "run": self.run_id, "notes": self.notes,
                "models": self.models, "perplexity_cap": self.perplexity_cap,
                "dropped": self.dropped, "confusion": self.confusion, "scorers": self.scorers,
                "harmful": self.harmful,
                "metrics": {m: {k: e.as_dict() for k, e in v.items()}
                            for m, v in self.metrics.items()}}


def held_out_instructions(db: sqlite_utils.Database, community: str) -> list[tuple[int, str]]:
    """(id, question) of the community's held-out open-ended instructions: CommInst's
    test split, else the template pairs' test split."""
    for kind in ("open", "template"):
        rows = db.execute(
            "SELECT i.id, i.question FROM instructions i JOIN community_answers a"
            " ON a.instruction_id = i.id WHERE a.community = ? AND i.kind = ?"
            " AND i.split = 'test' ORDER BY i.id", [community, kind]).fetchall()
        if rows:
            return [(r[0], r[1]) for r in rows]
    return []


def real_documents(db: sqlite_utils.Database, community: str, n: int, seed: int,
                   instruction_ids: list[int] | None = None) -> list[str]:
    """Up to ``n`` of the community's documents, drawn first from the topics of
    ``instruction_ids``, then from all its documents."""
    rng = np.random.default_rng(seed)
    topical: list[str] = []
    if instruction_ids:
        marks = ",".join("?" * len(instruction_ids))
        topical = [r[0] for r in db.execute(
            "SELECT DISTINCT d.text FROM documents d JOIN doc_topics dt ON dt.doc_id = d.id"
            f" WHERE d.community = ? AND dt.topic_id IN (SELECT topic_id FROM instructions"
            f" WHERE id IN ({marks}) AND topic_id IS NOT NULL) ORDER BY d.id",
            [community, *instruction_ids])]
    texts = [topical[i] for i in rng.permutation(len(topical))[:n]]
    if len(texts) < n:
        rest = [r[0] for r in db.execute("SELECT text FROM documents WHERE community = ?"
                                         " ORDER BY id", [community])]
        chosen = set(texts)
        rest = [t for t in rest if t not in chosen]
        texts += [rest[i] for i in rng.permutation(len(rest))[:n - len(texts)]]
    return texts


def perplexity(backend: Backend, question: str, text: str, words: int = 100) -> float:
    """Per-token perplexity of (the first ``words`` words of) ``text`` as the answer to
    ``question``."""
    text = " ".join(text.split()[:words])
    count_call(backend)
    logprob, n = backend.answer_logprob([{"role": "user", "content": question}], text)
    return math.exp(-logprob / max(n, 1))


def _open_run(db, community: str, base: str, options: FidelityOptions) -> int:
    key = f"{community}:{base}:{options.key()}"
    with db.conn:
        db.conn.execute("INSERT OR IGNORE INTO fidelity_runs (key, community, base, settings,"
                        " created_at) VALUES (?, ?, ?, ?, ?)",
                        [key, community, base, json.dumps(asdict(options)), time.time()])
    return db.execute("SELECT id FROM fidelity_runs WHERE key = ?", [key]).fetchone()[0]


def _generate(db, run_id: int, respondent: str, backend: Backend, instructions, system,
              options: FidelityOptions, progress, parallel: int = 1) -> list[dict]:
    """The respondent's ``samples`` answers (stored; through the prompt cache); a
    server respondent writes up to ``parallel`` at once."""
    have = {r[0]: r for r in db.execute(
        "SELECT idx, instruction_id, question, text FROM fidelity_texts WHERE run_id = ? AND"
        " model = ?", [run_id, respondent])}
    if progress and have:
        progress("advance", len([k for k in have if k < options.samples]))
    todo = [k for k in range(options.samples) if k not in have]
    requests = []
    for k in todo:
        iid, question = instructions[k % len(instructions)]
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": question}]
        requests.append(Request(messages, None, Sampling(
            max_tokens=options.max_tokens, temperature=options.temperature,
            seed=options.seed + k)))
    for j, reply in chat_many(db, backend, requests, parallel=parallel):
        if isinstance(reply, Exception):
            raise reply
        k = todo[j]
        iid, question = instructions[k % len(instructions)]
        db.execute("INSERT OR IGNORE INTO fidelity_texts (run_id, model, idx, instruction_id,"
                   " question, text, call_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [run_id, respondent, k, iid, question, reply.text.strip(), reply.call_id])
        db.conn.commit()
        have[k] = (k, iid, question, reply.text.strip())
        if progress:
            progress("advance", 1)
    return [{"idx": k, "instruction_id": have[k][1], "question": have[k][2],
             "text": have[k][3]} for k in range(options.samples)]


def _perplexities(db, run_id, respondent, rows, scorer: Backend) -> list[float]:
    values = []
    for row in rows:
        stored = db.execute("SELECT perplexity FROM fidelity_texts WHERE run_id = ? AND model = ?"
                            " AND idx = ?", [run_id, respondent, row["idx"]]).fetchone()
        if stored and stored[0] is not None:
            values.append(stored[0])
            continue
        value = perplexity(scorer, row["question"], row["text"]) if row["text"] else math.inf
        db.execute("UPDATE fidelity_texts SET perplexity = ? WHERE run_id = ? AND model = ? AND"
                   " idx = ?", [value if math.isfinite(value) else None, run_id, respondent,
                                row["idx"]])
        db.conn.commit()
        values.append(value)
    return values


def make_scorers(db: sqlite_utils.Database, judges: JudgeOptions,
                 base: str) -> dict[str, Scorer]:
    """The toxicity and harm scorers ``judges`` asks for (their models opened here)."""
    from ..llm import get_backend
    from .judges import TOXICITY_RUBRIC, DetoxifyScorer, LLMJudge

    backend = get_backend(judges.judge or base)
    toxicity = (DetoxifyScorer(db, judges.detoxify, judges.detoxify_config) if judges.detoxify
                else LLMJudge(backend, TOXICITY_RUBRIC, criterion="toxicity"))
    harm = LLMJudge(backend, judges.harm_rubric, criterion="harm", reasons=True)
    return {"toxicity": toxicity, "harm": harm}


def _judge(db, run_id: int, criterion: str, scorer: Scorer, sets, progress,
           batch: int = 8) -> dict[str, list[tuple[float, str | None]]]:
    """Every text of ``sets`` (name -> [(idx, text)]) scored once by ``scorer``: stored
    scores are read back, the rest scored a batch at a time and stored."""
    out = {}
    for name, items in sets.items():
        have = {r[0]: (r[1], r[2]) for r in db.execute(
            "SELECT idx, score, reason FROM fidelity_judgments WHERE run_id = ? AND model = ?"
            " AND criterion = ? AND scorer = ?", [run_id, name, criterion, scorer.name])}
        todo = [(i, t) for i, t in items if i not in have]
        if progress:
            progress("advance", len(items) - len(todo))
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            found = scorer.judge(db, [t for _, t in chunk])
            with db.conn:
                for (i, _), j in zip(chunk, found, strict=True):
                    db.conn.execute("INSERT OR REPLACE INTO fidelity_judgments VALUES"
                                    " (?, ?, ?, ?, ?, ?, ?, ?)",
                                    [run_id, name, i, criterion, scorer.name, j.score,
                                     j.reason, j.call_id])
                    have[i] = (j.score, j.reason)
            if progress:
                progress("advance", len(chunk))
        out[name] = [have[i] for i, _ in items]
    return out


def run_fidelity(db: sqlite_utils.Database, community: str, base: str | None = None,
                 options: FidelityOptions | None = None, *, communities: list[str] | None = None,
                 persona: bool = True, include_base: bool = True,
                 judges: JudgeOptions | None = None, progress=None,
                 aligned_server: str | None = None, aligned_name: str = "{community}",
                 parallel: int = 1) -> FidelityResult:
    """Generate, screen and score; ``communities``: whose real texts train the
    identifiability classifier (default: every community with documents)."""
    from ..embed import get_embedder
    from ..respondents import panel
    from .authenticity import frechet_ci, identifiability, real_vs_generated_auc, screen
    from .emotion import (
        emotion_matrix,
        js_divergence,
        pooled_distribution,
        sentiment,
        sentiment_histogram,
    )

    base = default_model("base", base)
    options = options or FidelityOptions()
    judges = judges or JudgeOptions()
    notes: list[str] = []
    instructions = held_out_instructions(db, community)
    if not instructions:
        raise ValueError(f"r/{community} has no held-out open-ended instructions: run "
                         "`cci-local generate` first")
    run_id = _open_run(db, community, base, options)
    # The base model scores perplexity even when it is not a respondent.
    respondents = panel(db, [community], base, include_base=include_base, persona=persona,
                        persona_text=options.persona_text, order=("aligned", "base", "persona"),
                        open_base=True, aligned_server=aligned_server,
                        aligned_name=aligned_name)
    backend, plan = respondents.base, respondents.plan()
    notes += respondents.notes
    if progress:
        progress("total", options.samples * len(plan))
    try:
        clock = time.perf_counter()
        generated = {name: _generate(db, run_id, name, model, instructions, system, options,
                                     progress, parallel) for name, model, system in plan}
        seconds = {"generate": time.perf_counter() - clock}
        clock = time.perf_counter()
        real = real_documents(db, community, options.real, options.seed,
                              [i for i, _ in instructions])
        # The perplexity cap: the largest perplexity the base model gives a real text
        # (scored as the answer to one of the instructions), unless set.
        cap = options.max_perplexity or db.execute(
            "SELECT perplexity_cap FROM fidelity_runs WHERE id = ?", [run_id]).fetchone()[0]
        if cap is None:
            cap = max(perplexity(backend, instructions[i % len(instructions)][1], t)
                      for i, t in enumerate(real[:20]))
            db.execute("UPDATE fidelity_runs SET perplexity_cap = ? WHERE id = ?", [cap, run_id])
            db.conn.commit()
        ppl = {name: _perplexities(db, run_id, name, rows, backend)
               for name, rows in generated.items()}
    finally:
        respondents.close()

    kept: dict[str, list[str]] = {}
    kept_idx: dict[str, list[int]] = {}
    dropped: dict[str, dict[str, int]] = {}
    for name, rows in generated.items():
        result = screen([r["text"] for r in rows], real, perplexities=ppl[name],
                        max_perplexity=cap)
        reasons = {i: reason for reason, ix in result.dropped.items() for i in ix}
        with db.conn:
            for i, row in enumerate(rows):
                db.conn.execute("UPDATE fidelity_texts SET kept = ?, drop_reason = ?,"
                                " copy_rouge = ? WHERE run_id = ? AND model = ? AND idx = ?",
                                [int(i not in reasons), reasons.get(i), result.copy_scores[i],
                                 run_id, name, row["idx"]])
        kept[name] = [rows[i]["text"] for i in result.kept]
        kept_idx[name] = [rows[i]["idx"] for i in result.kept]
        dropped[name] = result.counts()

    half = len(real) // 2
    real_a, real_b = real[:half], real[half:]
    sets = {REAL: real_a} | kept
    metrics: dict[str, dict[str, Estimate]] = {name: {} for name in sets}
    embed = get_embedder(options.embedder).embed
    reference = embed(real_b)
    emotions_b, sentiment_b = emotion_matrix(real_b), sentiment(real_b)
    for name, texts in sets.items():
        if len(texts) < 5:
            notes.append(f"{name}: only {len(texts)} texts kept, too few to score")
            continue
        metrics[name]["frechet"] = frechet_ci(embed(texts), reference, seed=options.seed)
        metrics[name]["auc"] = real_vs_generated_auc(real_b, texts, seed=options.seed)
        metrics[name]["emotion_jsd"] = two_sample_ci(
            emotion_matrix(texts), emotions_b,
            lambda a, b: js_divergence(pooled_distribution(a), pooled_distribution(b)),
            seed=options.seed)
        metrics[name]["sentiment_jsd"] = two_sample_ci(
            sentiment(texts), sentiment_b,
            lambda a, b: js_divergence(sentiment_histogram(a), sentiment_histogram(b)),
            seed=options.seed)
    others = communities or [r[0] for r in db.execute(
        "SELECT DISTINCT community FROM documents ORDER BY community")]
    confusion: dict[str, dict[str, int]] = {}
    if len(others) >= 2:
        # The classifier learns the community from the reference half; the other half
        # (the REAL row) is then its ceiling on unseen real texts.
        pools = {c: (real_b if c == community else
                     real_documents(db, c, options.real, options.seed)) for c in others}
        for name, texts in sets.items():
            if len(texts) >= 5:
                one = identifiability(pools, {name: texts}, {name: community},
                                      seed=options.seed)
                metrics[name]["identifiability_f1"] = one.f1
                confusion[name] = one.confusion[name]
    else:
        notes.append("identifiability needs the real texts of at least two communities")

    seconds["score"] = time.perf_counter() - clock  # perplexities, screening, metrics
    clock = time.perf_counter()
    scorers: dict[str, str] = {}
    harmful: list[dict] = []
    if judges.enabled:
        # As many real texts are judged as each model wrote: the ceiling's interval is
        # as wide as theirs, and judging (the slow part on a CPU) does not double.
        judged = {REAL: list(enumerate(real_a[:options.samples]))} | {
            name: list(zip(kept_idx[name], texts, strict=True))
            for name, texts in kept.items()}
        if progress:
            progress("phase", ("judging toxicity and harm",
                               2 * sum(len(v) for v in judged.values())))
        found = make_scorers(db, judges, base)
        try:
            for criterion, scorer in found.items():
                scores = _judge(db, run_id, criterion, scorer, judged, progress)
                scorers[criterion] = scorer.name
                for name, values in scores.items():
                    if len(values) >= 5:
                        metrics[name][criterion] = bootstrap_ci(
                            [v for v, _ in values], seed=options.seed)
                if criterion == "harm":
                    harmful = sorted(
                        ({"model": name, "text": text, "score": score, "reason": reason}
                         for name, items in judged.items() if name != REAL
                         for (_, text), (score, reason) in zip(items, scores[name], strict=True)),
                        key=lambda r: -r["score"])[:3]
        finally:
            for scorer in found.values():
                scorer.close()
    with db.conn:
        for name, values in metrics.items():
            for metric, est in values.items():
                db.conn.execute("INSERT OR REPLACE INTO fidelity_metrics VALUES"
                                " (?, ?, ?, ?, ?, ?, ?)",
                                [run_id, name, metric, est.value, est.low, est.high, est.n])
        db.conn.execute("UPDATE fidelity_runs SET finished_at = ?, perplexity_cap = ?,"
                        " confusion = ?, scorers = ? WHERE id = ?",
                        [time.time(), cap, json.dumps(confusion), json.dumps(scorers), run_id])
    result = FidelityResult(run_id, community, [p[0] for p in plan], dropped, metrics,
                            confusion, cap, notes, scorers, harmful,
                            seconds | {"judge": time.perf_counter() - clock})
    save_result(db, "fidelity", community, {"base": base, **asdict(options),
                                            "judges": judges.enabled}, result.as_dict())
    return result
