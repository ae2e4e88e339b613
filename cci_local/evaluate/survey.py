"""Administering a multiple-choice question to a model (docs/method.md#survey).

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
from dataclasses import dataclass, field

import sqlite_utils

from ..errors import CciError
from ..llm import (
    Backend,
    NoLogprobs,
    Request,
    Sampling,
    chat_many,
    default_model,
    option_logprobs_many,
)
from ..respondents import PERSONA, labels
from ..store import save_result
from .items import Item
from .metrics import (
    Estimate,
    accuracy,
    cross_matrix,
    majority_baseline,
    random_baseline,
    representativeness,
    simbench_score,
)
from .verdict import verdict

QUESTION = "{question}\n{options}\nAnswer with the letter of one option only."


class SurveyError(CciError):
    """The survey cannot be put as asked (its wording): the message says what to fix."""


@dataclass
class Answer:
    chosen: str
    distribution: dict[str, float]  # letter -> probability, summing to 1
    method: str  # 'logprobs' or 'sampled'


def question_messages(question: str, options: dict[str, str], *, persona: str | None = None,
                      template: str = QUESTION) -> list[dict]:
    """The chat messages that put a multiple-choice question: the persona as the system
    turn (if any), then the question and its lettered options by ``template``."""
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


SCORINGS = ("letter", "text")


def ask(db: sqlite_utils.Database, backend: Backend, messages: list[dict],
        options: dict[str, str], *, scoring: str = "letter", samples: int = 10,
        seed: int = 0) -> Answer:
    """The model's answer distribution over the option letters for one question.

    ``scoring='letter'`` reads the log-probability of each letter as the reply (the
    paper's way, one forward pass); ``'text'`` that of each option's whole text as
    the reply, which small models that cannot map a letter to its option need."""
    ((_, answer),) = ask_many(db, backend, [(messages, options)], scoring=scoring,
                              samples=samples, seed=seed)
    return answer


def ask_many(db: sqlite_utils.Database, backend: Backend,
             questions: list[tuple[list[dict], dict[str, str]]], *, scoring: str = "letter",
             samples: int = 10, seed: int = 0, parallel: int = 1):
    """``ask`` for many (messages, options) at once, yielding (index, Answer) as each
    is done: a server respondent gets up to ``parallel`` calls at a time."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}")
    requests = [(m, list(o.values()) if scoring == "text" else list(o)) for m, o in questions]
    sampled = []
    for i, outcome in option_logprobs_many(db, backend, requests, parallel=parallel):
        if isinstance(outcome, NoLogprobs):
            sampled.append(i)
            continue
        if isinstance(outcome, Exception):
            raise outcome
        options = questions[i][1]
        logprobs = ({k: outcome[v] for k, v in options.items()} if scoring == "text"
                    else outcome)
        distribution = normalise(logprobs)
        yield i, Answer(_choice(distribution), distribution, "logprobs")
    if not sampled:
        return
    # No log-probabilities: each question asked ``samples`` times for one letter.
    chats, owner = [], []
    for i in sampled:
        letters = list(questions[i][1])
        schema = {"type": "object", "properties": {"answer": {"type": "string",
                                                             "enum": letters}},
                  "required": ["answer"], "additionalProperties": False}
        for k in range(samples):
            chats.append(Request(questions[i][0], schema, Sampling(
                max_tokens=16, temperature=1.0, seed=seed + k)))
            owner.append(i)
    counts = {i: dict.fromkeys(questions[i][1], 0) for i in sampled}
    left = {i: samples for i in sampled}
    for j, reply in chat_many(db, backend, chats, parallel=parallel):
        if isinstance(reply, Exception):
            raise reply
        i = owner[j]
        counts[i][reply.data["answer"]] += 1
        left[i] -= 1
        if left[i] == 0:
            distribution = {k: v / samples for k, v in counts[i].items()}
            yield i, Answer(_choice(distribution), distribution, "sampled")


def commsurvey_items(db: sqlite_utils.Database, communities: list[str],
                     split_by: str = "random") -> list[Item]:
    """The held-out CommSurvey questions answered by any of ``communities``: the random
    split (``split``) or the unseen-topic split (``split_by_topic``)."""
    column = "split_by_topic" if split_by == "topic" else "split"
    items: dict[int, Item] = {}
    marks = ",".join("?" * len(communities))
    for iid, question, options, number, keywords, community, letter in db.execute(
            "SELECT i.id, i.question, i.options, t.number, t.keywords, a.community, a.answer"
            " FROM instructions i JOIN community_answers a ON a.instruction_id = i.id"
            " LEFT JOIN topics t ON t.id = i.topic_id"
            f" WHERE i.kind = 'choice' AND i.{column} = 'test' AND a.community IN ({marks})"
            " ORDER BY i.id", communities):
        topic = None if number is None else f"{number}: {' '.join(json.loads(keywords)[:3])}"
        item = items.setdefault(iid, Item(f"commsurvey:{iid}", question, json.loads(options),
                                          {}, topic, iid, ordinal=False))
        item.answers[community] = letter
    return list(items.values())


def orders(options: dict[str, str], permute: int) -> list[tuple[dict[str, str], dict[str, str]]]:
    """The first ``permute`` cyclic shifts of the option texts over the same letters
    (at most one per option): (options as shown, shown letter -> original letter)."""
    letters, texts = list(options), list(options.values())
    k = len(letters)
    return [({letters[j]: texts[(j + s) % k] for j in range(k)},
             {letters[j]: letters[(j + s) % k] for j in range(k)})
            for s in range(max(1, min(permute, k)))]


def administer(db: sqlite_utils.Database, respondent: str, backend: Backend, items: list[Item],
               *, persona: str | None = None, template: str = QUESTION,
               scoring: str = "letter", samples: int = 10, progress=None,
               parallel: int = 1, permute: int = 1) -> dict[str, Answer]:
    """Ask ``backend`` every item (as ``respondent``); store and return the answers.
    Items answered before by the same model with the same wording are read back.  A
    server respondent is asked up to ``parallel`` items at once.  ``permute`` N > 1:
    each item is asked with its options in N cyclic orders, and its answer is the
    option with the most probability summed over them (arXiv 2306.07951)."""
    from ..llm.cache import identity

    ident = identity(db, backend)
    wording = hashlib.sha256(json.dumps([persona, template, scoring] + (
        [permute] if permute > 1 else [])).encode()).hexdigest()[:16]
    done = {row[0]: Answer(row[1], json.loads(row[2]), row[3]) for row in db.execute(
        "SELECT item, chosen, distribution, method FROM survey_answers WHERE respondent = ?"
        " AND identity = ? AND wording = ?", [respondent, ident, wording])}
    keys = {it.key for it in items}
    out = {key: answer for key, answer in done.items() if key in keys}
    if progress and out:
        progress(len(out))
    todo = [item for item in items if item.key not in done]
    questions, owner = [], []
    for n, item in enumerate(todo):
        shifts = orders(item.options, permute)
        for shown, back in shifts:
            questions.append((question_messages(item.question, shown, persona=persona,
                                                template=template), shown))
            owner.append((n, back, len(shifts)))
    parts: dict[int, list] = {}
    # Each answer is stored as it comes; a model in this process is asked one at a time.
    for i, answer in ask_many(db, backend, questions, scoring=scoring, samples=samples,
                              parallel=parallel):
        n, back, count = owner[i]
        item = todo[n]
        parts.setdefault(n, []).append((answer, back))
        if len(parts[n]) < count:
            continue
        if len(parts[n]) > 1:  # summed over the orders, by original option
            total = dict.fromkeys(item.options, 0.0)
            for part, mapping in parts[n]:
                for letter, p in part.distribution.items():
                    total[mapping[letter]] += p / len(parts[n])
            answer = Answer(_choice(total), total, answer.method)  # orders: in ``wording``
        db.execute("INSERT OR IGNORE INTO survey_answers (respondent, model, identity,"
                   " wording, item, instruction_id, chosen, distribution, method,"
                   " scoring, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [respondent, backend.spec, ident, wording, item.key, item.instruction_id,
                    answer.chosen, json.dumps(answer.distribution), answer.method,
                    scoring, time.time()])
        db.conn.commit()
        out[item.key] = answer
        if progress:
            progress(1)
    return {item.key: out[item.key] for item in items}


# --------------------------------------------------------------------------- the stage


@dataclass
class SurveyResult:
    source: str  # 'held-out CommSurvey (random split)' or 'survey <name>'
    items: list[Item]
    answers: dict[str, dict[str, Answer]]  # respondent -> item key -> answer
    notes: list[str]
    scoring: str = "letter"
    communities: list[str] = field(default_factory=list)  # whose answer keys were asked

    def key(self, community: str) -> dict[str, str]:
        return {it.key: it.answers[community] for it in self.items if community in it.answers}

    def _items(self, respondent: str, community: str, *, discriminating_only: bool = False,
               topic: str | None = None) -> list[Item]:
        answers = self.answers.get(respondent, {})
        return [it for it in self.items if community in it.answers and it.key in answers
                and (it.discriminating or not discriminating_only)
                and (topic is None or it.topic == topic)]

    def scores(self, respondent: str, community: str, *, discriminating_only: bool = False,
               topic: str | None = None) -> Estimate:
        """Accuracy of ``respondent`` against ``community``'s answer key."""
        answers = self.answers.get(respondent, {})
        keep = self._items(respondent, community, discriminating_only=discriminating_only,
                           topic=topic)
        return accuracy([answers[it.key].chosen for it in keep],
                        [it.answers[community] for it in keep])

    def topics(self, community: str) -> list[str]:
        def order(label: str):  # CommSurvey labels start with the topic number
            number = label.split(":")[0]
            return (int(number), label) if number.isdigit() else (math.inf, label)

        return sorted({it.topic for it in self.items if community in it.answers and it.topic},
                      key=order)

    def representativeness(self, respondent: str, community: str) -> Estimate:
        """OpinionQA's 1 - W1/(max - min) between the respondent's answer distributions
        and the community's, over the items that give the community's distribution.
        Unordered options use the discrete metric (W1 = total variation)."""
        answers = self.answers.get(respondent, {})
        keep = [it for it in self.items if community in it.distributions and it.key in answers]
        model = [[answers[it.key].distribution.get(k, 0.0) for k in it.options] for it in keep]
        human = [[it.distributions[community][k] for k in it.options] for it in keep]
        return representativeness(model, human, [_positions(it) for it in keep])

    def tv_score(self, respondent: str, community: str) -> Estimate:
        """SimBench's total-variation score (metrics.simbench_score) on the items
        that give the community's distribution."""
        answers = self.answers.get(respondent, {})
        keep = [it for it in self.items if community in it.distributions and it.key in answers]
        return simbench_score(
            [[answers[it.key].distribution.get(k, 0.0) for k in it.options] for it in keep],
            [[it.distributions[community][k] for k in it.options] for it in keep])

    def between(self, community: str, other: str) -> Estimate:
        """Representativeness of ``other``'s real answers for ``community``'s: how far
        apart the two communities are on the items both have distributions for."""
        keep = [it for it in self.items if community in it.distributions
                and other in it.distributions]
        return representativeness([[it.distributions[other][k] for k in it.options]
                                   for it in keep],
                                  [[it.distributions[community][k] for k in it.options]
                                   for it in keep], [_positions(it) for it in keep])

    def matrix(self, communities: list[str], kind: str):
        rows = {f"{kind}:{c}": {it: a.chosen for it, a in self.answers[f"{kind}:{c}"].items()}
                for c in communities if f"{kind}:{c}" in self.answers}
        return cross_matrix(rows, {c: self.key(c) for c in communities})

    def as_dict(self, communities: list[str]) -> dict:
        """Everything the tables show, for ``--json`` and the report."""
        def est(e: Estimate) -> dict | None:
            return e.as_dict() if e.n else None

        out = {"source": self.source, "scoring": self.scoring, "items": len(self.items),
               "notes": self.notes, "communities": {}, "matrix": {}}
        for c in communities:
            key = self.key(c)
            if not key:
                continue
            rows = {}
            for respondent in labels(c):
                if respondent in self.answers:
                    rows[respondent] = {
                        "accuracy": est(self.scores(respondent, c)),
                        "discriminating": est(self.scores(respondent, c,
                                                          discriminating_only=True)),
                        "representativeness": est(self.representativeness(respondent, c)),
                        "tv_score": est(self.tv_score(respondent, c)),
                        "topics": {t: est(self.scores(respondent, c, topic=t))
                                   for t in self.topics(c)}}
            out["communities"][c] = {
                "questions": len(key), "respondents": rows,
                "majority_letter": est(majority_baseline(list(key.values()))),
                "random": random_baseline([len(it.options) for it in self.items
                                           if c in it.answers])}
        out["verdict"] = verdict(self, communities)
        for kind in ("aligned", "persona"):
            cells = self.matrix(communities, kind)
            if cells:
                out["matrix"][kind] = {r: {c: est(e) for c, e in row.items()}
                                       for r, row in cells.items()}
        return out


def _positions(item: Item) -> list[float]:
    """Option positions for W1: their order, or for unordered options a metric where
    every two options are 1 apart (handled by representativeness as ``None``)."""
    return list(range(len(item.options))) if item.ordinal else None


def check_wording(template: str, persona_text: str) -> None:
    """SurveyError unless the question template and persona text can be filled in."""
    for flag, text, needs in (("--question-template", template, ("question", "options")),
                               ("--persona-text", persona_text, ())):
        try:
            text.format(question="", options="", community="")
        except (KeyError, IndexError, ValueError) as e:
            raise SurveyError(f"{flag}: only {{question}}, {{options}} and {{community}} can "
                              f"be replaced ({type(e).__name__}: {e})") from None
        missing = [n for n in needs if "{" + n + "}" not in text]
        if missing:
            raise SurveyError(f"{flag} must contain " + " and ".join("{" + n + "}"
                                                                       for n in missing))


def run_survey(db: sqlite_utils.Database, communities: list[str], base: str | None = None, *,
               split_by: str = "random", survey_id: str | None = None, persona: bool = True,
               aligned: bool = True, persona_text: str = PERSONA, template: str = QUESTION,
               scoring: str = "letter", samples: int = 10, survey_file: str | None = None,
               progress=None, aligned_server: str | None = None,
               aligned_name: str = "{community}", parallel: int = 1,
               permute: int = 1) -> SurveyResult:
    """The survey stage's entry: administer a survey to the base model, the base with
    each community's persona, and each community's aligned model: the held-out
    CommSurvey of ``communities`` (``split_by``: random or topic), or the stored outside
    survey ``survey_id`` (loaded from ``survey_file``).  The figures are kept for the
    report (``stage_results``) when there were questions to ask.  The aligned models
    are the base with each adapter switched in, or with ``aligned_server`` that
    server's models (``aligned_name``), asked ``parallel`` questions at once;
    ``permute``: each question in that many option orders (``administer``)."""
    from ..respondents import panel

    check_wording(template, persona_text)
    base = default_model("base", base)
    if survey_id is not None:
        from .survey_file import survey_items

        name = db.execute("SELECT name FROM surveys WHERE id = ?", [survey_id]).fetchone()[0]
        source = f"survey {name}"
        items = survey_items(db, survey_id, communities)
    else:
        source = f"held-out CommSurvey ({split_by} split)"
        items = commsurvey_items(db, communities, split_by)
    notes: list[str] = []
    if not items:
        notes.append(f"no questions in the {source} for these communities" + (
            "" if survey_id else ": run `cci-local generate` first"))
        return SurveyResult(source, items, {}, notes, scoring, list(communities))
    respondents = panel(db, communities, base, persona=persona, aligned=aligned,
                        persona_text=persona_text, aligned_server=aligned_server,
                        aligned_name=aligned_name)
    notes += respondents.notes
    plan = respondents.plan()
    if progress:
        progress("total", len(plan) * len(items))
    answers = {}
    try:
        for respondent, model, system in plan:
            answers[respondent] = administer(
                db, respondent, model, items, persona=system, template=template,
                scoring=scoring, samples=samples, parallel=parallel, permute=permute,
                progress=(lambda n: progress("advance", n)) if progress else None)
    finally:
        respondents.close()
    result = SurveyResult(source, items, answers, notes, scoring, list(communities))
    save_result(db, "survey", communities, {"base": base, "split": split_by, "scoring": scoring,
                                            "survey": survey_file} | (
                                                {"permute": permute} if permute > 1 else {}),
                result.as_dict(communities))
    return result
