"""`cci-local ask`: put your own question to each community's model, side by side.

A respondent is a community's aligned model (the base with the community's newest
adapter), and for contrast the base model and the base with a community's persona
as its system prompt: the survey stage's respondents.  Every answer goes through
the prompt cache (the same question, model and sampling again is read back, not
asked) and is kept in the store's ``asked`` table with its respondent, model,
adapter and sampling.  A multiple-choice question is scored from option
log-probabilities exactly as the survey stage scores one (``survey.ask``), and
the communities' distributions are compared with its representativeness
measure (1 - W1/(max - min) over ordered options).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlite_utils

from .errors import CciError
from .llm import Backend, BackendError, Sampling, chat_stream
from .respondents import Panel, Respondent, panel

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class AskError(CciError):
    """The question cannot be put as asked: the message says what to do."""


@dataclass
class AskResult:
    question: str
    options: dict[str, str] | None
    answers: dict[str, list[str]] = field(default_factory=dict)  # respondent -> samples
    distributions: dict[str, dict[str, float]] = field(default_factory=dict)  # choice form
    methods: dict[str, str] = field(default_factory=dict)  # logprobs or sampled
    agreement: dict[tuple[str, str], float] = field(default_factory=dict)  # choice form
    calls: int = 0  # real model calls made
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"question": self.question, "options": self.options, "answers": self.answers,
                "distributions": self.distributions, "methods": self.methods,
                "agreement": [{"a": a, "b": b, "representativeness": v}
                              for (a, b), v in self.agreement.items()],
                "model_calls": self.calls, "seconds": self.seconds}


def parse_options(text: str | None = None, lines: list[str] | None = None) -> dict[str, str]:
    """'Agree;Neutral;Disagree' (or one option a line) -> {'A': 'Agree', ...}."""
    parts = [p.strip() for p in (lines if lines is not None else (text or "").split(";"))]
    parts = [p for p in parts if p]
    if len(parts) < 2:
        raise AskError("a multiple-choice question needs at least two options "
                       "(--options 'Agree;Neutral;Disagree' or --options-file, one a line)")
    if len(parts) > len(LETTERS):
        raise AskError(f"{len(parts)} options: at most {len(LETTERS)}")
    if len({p.lower() for p in parts}) < len(parts):
        raise AskError("two options are the same: " + "; ".join(parts))
    return dict(zip(LETTERS, parts, strict=False))


def respondents(db: sqlite_utils.Database, communities: list[str], base: str, *,
                include_base: bool = False, persona: bool = False,
                base_backend: Backend | None = None, aligned_server: str | None = None,
                aligned_name: str = "{community}") -> Panel:
    """Each community's aligned model, then (if asked) the base and the personas, as a
    panel to close.  Raises NoAdapter naming the command to run when a community has
    no adapter, or when the base cannot load adapters (a remote server).  The aligned
    models share ``base_backend`` (or the panel's base) with adapters switched in."""
    return panel(db, communities, base, include_base=include_base, persona=persona,
                 order=("aligned", "base", "persona"), require_adapters=True,
                 base_backend=base_backend, aligned_server=aligned_server,
                 aligned_name=aligned_name)


def _messages(system: str | None, user: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": user}]


def _keep(db, kind: str, question: str, options, r: Respondent, sampling: dict, *,
          text: str | None = None, distribution: dict | None = None,
          call_id: int | None = None) -> None:
    with db.conn:
        db.conn.execute(
            "INSERT OR IGNORE INTO asked (kind, question, options, respondent, model, adapter,"
            " sampling, text, distribution, call_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [kind, question, json.dumps(options) if options else None, r.label,
             r.backend.spec, r.adapter, json.dumps(sampling, sort_keys=True), text,
             json.dumps(distribution) if distribution else None, call_id, time.time()])


def ask_question(db: sqlite_utils.Database, people: list[Respondent], question: str, *,
                 options: dict[str, str] | None = None, samples: int = 1, seed: int = 0,
                 max_tokens: int = 256, temperature: float = 0.7, scoring: str = "text",
                 ordered: bool = True,
                 on_piece: Callable[[str, int, str], None] | None = None) -> AskResult:
    """Every respondent answers ``question`` (``samples`` times, seeds seed, seed+1,
    ...), or with ``options`` gives its distribution over them.  ``on_piece(label,
    sample, text)`` receives the open answers as they are generated.  ``ordered``:
    the options are a scale (W1 over their positions), else categories (total
    variation)."""
    from .evaluate.metrics import representativeness
    from .evaluate.survey import ask as score_options
    from .evaluate.survey import question_messages
    from .llm import USAGE

    question = " ".join(question.split())
    if not question:
        raise AskError("the question is empty")
    result = AskResult(question, options)
    calls, start = USAGE["calls"], time.monotonic()
    try:
        for r in people:
            if options:
                messages = question_messages(question, options, persona=r.system)
                answer = score_options(db, r.backend, messages, options, scoring=scoring,
                                       samples=max(samples, 10), seed=seed)
                result.distributions[r.label] = answer.distribution
                result.methods[r.label] = answer.method
                _keep(db, "choice", question, options, r, {"scoring": scoring, "seed": seed},
                      distribution=answer.distribution)
                continue
            result.answers[r.label] = []
            for k in range(samples):
                sampling = Sampling(max_tokens=max_tokens, temperature=temperature,
                                    seed=seed + k)
                piece = (lambda text, label=r.label, k=k: on_piece(label, k, text)) \
                    if on_piece else None
                reply = chat_stream(db, r.backend, _messages(r.system, question),
                                    sampling=sampling, on_piece=piece)
                text = reply.text.strip()
                result.answers[r.label].append(text)
                _keep(db, "open", question, None, r, sampling.as_dict(), text=text,
                      call_id=reply.call_id)
    except BackendError as e:
        raise AskError(str(e)) from e
    finally:
        closed = set()
        for r in people:
            if id(r.backend) not in closed:
                closed.add(id(r.backend))
                r.backend.close()
    if options:
        values = [list(range(len(options))) if ordered else None]
        dist = {lb: [d[k] for k in options] for lb, d in result.distributions.items()}
        aligned = [lb for lb in dist if lb.startswith("aligned:")]
        for i, a in enumerate(aligned):
            for b in aligned[i + 1:]:
                result.agreement[(a, b)] = representativeness([dist[a]], [dist[b]], values,
                                                              resamples=1).value
    result.calls = USAGE["calls"] - calls
    result.seconds = time.monotonic() - start
    return result
