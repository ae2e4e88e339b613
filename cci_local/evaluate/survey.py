"""Administering a multiple-choice question to a model (DESIGN 2.1 step 6).

The answer is read from the option log-probabilities in one forward pass: the
whole distribution over the letters is kept, and the chosen option is its most
likely letter.  A backend without log-probabilities (a remote server that
hides them) is asked ``samples`` times for one letter, constrained by a JSON
schema, and the empirical distribution is kept instead.  Every call goes
through the prompt cache, so a repeated survey makes no model call.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
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


@dataclass
class Item:
    key: str  # 'commsurvey:<instruction id>' or '<file hash>:<item id>'
    question: str
    options: dict[str, str]
    answers: dict[str, str]  # community -> its letter (the answer key)
    topic_id: int | None = None
    instruction_id: int | None = None

    @property
    def discriminating(self) -> bool:
        return len(set(self.answers.values())) > 1


def commsurvey_items(db: sqlite_utils.Database, communities: list[str],
                     split_by: str = "random") -> list[Item]:
    """The held-out CommSurvey questions answered by any of ``communities``: the random
    split (``split``) or the unseen-topic split (``split_by_topic``)."""
    column = "split_by_topic" if split_by == "topic" else "split"
    items: dict[int, Item] = {}
    marks = ",".join("?" * len(communities))
    for iid, question, options, topic_id, community, letter in db.execute(
            "SELECT i.id, i.question, i.options, i.topic_id, a.community, a.answer"
            " FROM instructions i JOIN community_answers a ON a.instruction_id = i.id"
            f" WHERE i.kind = 'choice' AND i.{column} = 'test' AND a.community IN ({marks})"
            " ORDER BY i.id", communities):
        item = items.setdefault(iid, Item(f"commsurvey:{iid}", question, json.loads(options),
                                          {}, topic_id, iid))
        item.answers[community] = letter
    return list(items.values())


def administer(db: sqlite_utils.Database, respondent: str, backend: Backend, items: list[Item],
               *, persona: str | None = None, template: str = QUESTION, samples: int = 10,
               progress=None) -> dict[str, Answer]:
    """Ask ``backend`` every item (as ``respondent``); store and return the answers.
    Items answered before by the same model with the same wording are read back."""
    from ..llm.cache import identity

    ident = identity(db, backend)
    wording = hashlib.sha256(json.dumps([persona, template]).encode()).hexdigest()[:16]
    done = {row[0]: Answer(row[1], json.loads(row[2]), row[3]) for row in db.execute(
        "SELECT item, chosen, distribution, method FROM survey_answers WHERE respondent = ?"
        " AND identity = ? AND wording = ?", [respondent, ident, wording])}
    out = {}
    for item in items:
        if item.key in done:
            out[item.key] = done[item.key]
        else:
            answer = ask(db, backend, question_messages(item.question, item.options,
                                                        persona=persona, template=template),
                         list(item.options), samples=samples)
            db.execute("INSERT OR IGNORE INTO survey_answers (respondent, model, identity,"
                       " wording, item, instruction_id, chosen, distribution, method,"
                       " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [respondent, backend.spec, ident, wording, item.key, item.instruction_id,
                        answer.chosen, json.dumps(answer.distribution), answer.method,
                        time.time()])
            db.conn.commit()
            out[item.key] = answer
        if progress:
            progress(1)
    return out


# --------------------------------------------------------------------------- the stage


@dataclass
class SurveyResult:
    split_by: str
    items: list[Item]
    answers: dict[str, dict[str, Answer]]  # respondent -> item key -> answer
    notes: list[str]

    def key(self, community: str) -> dict[str, str]:
        return {it.key: it.answers[community] for it in self.items if community in it.answers}

    def scores(self, respondent: str, community: str, *, discriminating_only: bool = False):
        from .metrics import accuracy

        answers = self.answers.get(respondent, {})
        keep = [it for it in self.items if community in it.answers and it.key in answers
                and (it.discriminating or not discriminating_only)]
        return accuracy([answers[it.key].chosen for it in keep],
                        [it.answers[community] for it in keep])

    def matrix(self, communities: list[str], kind: str):
        from .metrics import cross_matrix

        rows = {f"{kind}:{c}": {it: a.chosen for it, a in self.answers[f"{kind}:{c}"].items()}
                for c in communities if f"{kind}:{c}" in self.answers}
        return cross_matrix(rows, {c: self.key(c) for c in communities})


def aligned_backend(db: sqlite_utils.Database, community: str, base: str):
    """base + the community's newest finished adapter trained on that base, or None."""
    from ..llm.llama_cpp import LlamaCppBackend
    from ..train import base_identity, resolve_base

    resolved = resolve_base(base)
    if resolved.gguf is None:
        return None
    row = db.execute("SELECT gguf FROM adapters WHERE community = ? AND status = 'done' AND"
                     " base_identity = ? ORDER BY id DESC LIMIT 1",
                     [community, base_identity(db, resolved)]).fetchone()
    if row is None or not row[0]:
        return None
    return LlamaCppBackend(resolved.gguf, spec=f"{base}+adapter:{community}", lora_path=row[0])


def run_survey(db: sqlite_utils.Database, communities: list[str], base: str = "embedded", *,
               split_by: str = "random", persona: bool = True, aligned: bool = True,
               persona_text: str = PERSONA, template: str = QUESTION, samples: int = 10,
               progress=None) -> SurveyResult:
    """Administer the held-out CommSurvey of ``communities`` to the base model, the base
    with each community's persona, and each community's aligned model."""
    from ..llm import get_backend

    items = commsurvey_items(db, communities, split_by)
    notes: list[str] = []
    if not items:
        notes.append(f"no held-out CommSurvey questions ({split_by} split) for these "
                     "communities: run `cci-local generate` first")
        return SurveyResult(split_by, items, {}, notes)
    backend = get_backend(base)
    plan = [("base", backend, None)]
    if persona:
        plan += [(f"persona:{c}", backend, persona_text.format(community=c))
                 for c in communities]
    extra = []
    if aligned:
        for c in communities:
            adapted = aligned_backend(db, c, base)
            if adapted is None:
                notes.append(f"r/{c} has no adapter on {base}: run `cci-local train r/{c}` "
                             "to add its aligned model")
            else:
                plan.append((f"aligned:{c}", adapted, None))
                extra.append(adapted)
    if progress:
        progress("total", len(plan) * len(items))
    answers = {}
    try:
        for respondent, model, system in plan:
            answers[respondent] = administer(
                db, respondent, model, items, persona=system, template=template,
                samples=samples, progress=(lambda n: progress("advance", n)) if progress else None)
    finally:
        for model in [backend, *extra]:
            model.close()
    return SurveyResult(split_by, items, answers, notes)
