"""Administering a multiple-choice question to a model (DESIGN 2.1 step 6).

The answer is read from the option log-probabilities in one forward pass: the
whole distribution over the letters is kept, and the chosen option is its most
likely letter.  A backend without log-probabilities (a remote server that
hides them) is asked ``samples`` times for one letter, constrained by a JSON
schema, and the empirical distribution is kept instead.  Every call goes
through the prompt cache, so a repeated survey makes no model call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sqlite_utils

from ..llm import Backend, NoLogprobs, Sampling, chat, option_logprobs

QUESTION = "{question}\n{options}\nAnswer with the letter of one option only."
PERSONA = ("You are a member of the online community r/{community}. Answer the way its "
           "members typically would.")


@dataclass
class Answer:
    chosen: str
    distribution: dict[str, float]  # letter -> probability, summing to 1
    method: str  # 'logprobs' or 'sampled'


def question_messages(question: str, options: dict[str, str], *, persona: str | None = None,
                      template: str = QUESTION) -> list[dict]:
    text = template.format(question=question,
                           options="\n".join(f"{k}) {v}" for k, v in options.items()))
    return ([{"role": "system", "content": persona}] if persona else []) + \
        [{"role": "user", "content": text}]


def normalise(logprobs: dict[str, float]) -> dict[str, float]:
    """Log-probabilities of the options -> a distribution over them (renormalised:
    the mass on anything that is not an option is left out)."""
    finite = [v for v in logprobs.values() if v != -math.inf]
    if not finite:
        return {k: 1 / len(logprobs) for k in logprobs}
    top = max(finite)
    weights = {k: (0.0 if v == -math.inf else math.exp(v - top)) for k, v in logprobs.items()}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def _choice(distribution: dict[str, float]) -> str:
    return max(sorted(distribution), key=lambda k: distribution[k])


def ask(db: sqlite_utils.Database, backend: Backend, messages: list[dict], letters: list[str],
        *, samples: int = 10, seed: int = 0) -> Answer:
    """The model's answer distribution over ``letters`` for one question."""
    try:
        distribution = normalise(option_logprobs(db, backend, messages, letters))
        return Answer(_choice(distribution), distribution, "logprobs")
    except NoLogprobs:
        pass
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": letters}},
              "required": ["answer"], "additionalProperties": False}
    counts = dict.fromkeys(letters, 0)
    for k in range(samples):
        reply = chat(db, backend, messages, schema=schema,
                     sampling=Sampling(max_tokens=16, temperature=1.0, seed=seed + k))
        counts[reply.data["answer"]] += 1
    distribution = {k: v / samples for k, v in counts.items()}
    return Answer(_choice(distribution), distribution, "sampled")
