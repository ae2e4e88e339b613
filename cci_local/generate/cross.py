"""Community-Cross-Instruct: a teacher writes CommInst and CommSurvey
(docs/method.md#the-cross-step).

``cross_instruct(db, communities, teacher)`` puts every chunk row of the latest
topic run to the teacher once: the topic's keywords and each community's
on-topic documents, labelled by community, with our statement of the task.  The
reply, constrained by a JSON schema built for that row's communities, holds
open-ended questions answered once per community (CommInst, the training data)
and four-option questions with each community's letter (CommSurvey, the
evaluation data).  Every question is checked (``rows.check_row``); a reply that
is not valid, or that leaves the row without open-ended or without
multiple-choice questions, is asked again, up to ``max_attempts`` times, with the
teacher told what was wrong.

Resumable: a finished row is stored with its questions in one transaction and
never asked again; the attempts of an unfinished row replay from the prompt
cache (valid and invalid answers alike), so a re-run after a crash makes no
model call that was already made, bar the one in flight.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlite_utils

from ..errors import CciError
from ..llm import Backend, BackendError, InvalidOutput, Request, Sampling, chat_many
from ..llm.cache import identity
from ..store import select_communities
from .rows import Checked, check_row, row_schema
from .splits import ensure_holdout

PROMPT_VERSION = 1
SYSTEM = ("You help social scientists survey online communities. You write interview "
          "questions and answer them the way each community's own members would.")


class GenerateError(CciError):
    """Generation cannot start as asked (no topics, unknown community): bad input."""


@dataclass
class CrossOptions:
    n_open: int = 3  # open-ended questions asked per row
    n_choice: int = 2  # multiple-choice questions asked per row
    max_attempts: int = 3  # per row: the first ask and up to two retries
    max_rows: int | None = None  # put at most this many rows to the teacher (all if None)
    doc_words: int = 120  # each document shown is cut to this many words
    max_answer_words: int = 40  # longer open-ended answers are dropped (paper: < 32 tokens)
    near_duplicate: float = 0.7  # ROUGE-L at or above this against a kept question: dropped
    temperature: float = 0.7
    seed: int = 0
    holdout: float = 0.15  # chunk rows held out at random; separately, topics held out
    parallel: int = 1  # calls at once, for server teachers
    context: int | None = None  # the teacher's context window, if it does not say
    survey_pass: int = 0  # > 0: an extra survey-only pass over held-out rows (survey_size.py)

    def settings(self, teacher_identity: str, communities: list[str]) -> str:
        """What decides a row's outcome: a row done with other settings is done again."""
        blob = json.dumps({"v": PROMPT_VERSION, "teacher": teacher_identity,
                           "communities": communities, "n_open": self.n_open,
                           "n_choice": self.n_choice, "max_attempts": self.max_attempts,
                           "doc_words": self.doc_words, "answer": self.max_answer_words,
                           "dup": self.near_duplicate, "temperature": self.temperature,
                           "seed": self.seed, "context": self.context}
                          | ({"survey_pass": self.survey_pass} if self.survey_pass else {}),
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class CrossReport:
    topic_run: int
    teacher: str
    rows_in_scope: int = 0
    rows_done_before: int = 0
    tried: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)  # row-level reason -> rows
    unfinished: int = 0  # rows whose teacher call failed (server down): a re-run retries
    last_error: str | None = None
    dropped: Counter = field(default_factory=Counter)  # question-level reason -> questions
    kept: Counter = field(default_factory=Counter)  # 'open' / 'choice' -> questions kept now
    non_discriminating: int = 0
    retries: int = 0
    calls: int = 0  # real model calls
    cached: int = 0  # answers read back from the store instead
    output_tokens: int = 0
    seconds: float = 0.0
    per_community: dict = field(default_factory=dict)  # community -> {open, choice} in store
    notes: list[str] = field(default_factory=list)


@dataclass
class _Row:
    id: int
    topic_id: int
    keywords: list[str]
    communities: list[str]
    docs: dict[str, list[tuple[str, str]]]  # community -> (doc id, text), as stored
    split: str
    split_by_topic: str
    messages: list[dict] | None = None  # the first ask's prompt, once fitted
    shown: dict[str, list[str]] = field(default_factory=dict)  # doc ids shown
    shown_texts: dict[str, list[str]] = field(default_factory=dict)  # as shown (clipped)
    max_tokens: int = 0
    attempt: int = 0
    feedback: list[str] = field(default_factory=list)
    kept: list[tuple[Checked, int]] = field(default_factory=list)  # (item, call id)
    dropped: Counter = field(default_factory=Counter)
    call_ids: list[int] = field(default_factory=list)
    problem: str | None = None  # why the last attempt was not enough


# --------------------------------------------------------------------------- the prompt


def _clip(text: str, words: int) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def build_messages(keywords: list[str], shown: dict[str, list[str]], n_open: int,
                   n_choice: int, max_answer_words: int, feedback: list[str] = ()) -> list[dict]:
    """The teacher's prompt for one row: topic, each community's documents, the task."""
    names = list(shown)
    single = len(names) == 1
    who = (f"one online community, r/{names[0]}" if single else
           f"{len(names)} online communities: " + ", ".join(f"r/{n}" for n in names))
    parts = [f"Here are posts from {who}, all on one topic (keywords: "
             f"{', '.join(keywords[:8])})."]
    for name in names:
        parts.append(f"\n### Posts from r/{name}")
        parts.extend(f"- {text}" for text in shown[name])
    answers_of = "this community" if single else "each community"
    differ = ("Ask about opinions, habits and experiences where this community's answer "
              "would stand out from the general public's." if single else
              "Ask about opinions, habits and experiences on which these communities would "
              "answer differently.")
    parts.append(f"""
### Task
Write {n_open} open-ended questions and {n_choice} multiple-choice questions about this topic.
- Open-ended: answer each question once for {answers_of}, as a typical member would, in one \
short sentence (at most {max_answer_words} words). The answer must echo the views, habits and \
words in that community's posts above, not general knowledge.
- Multiple-choice: give four different options A, B, C and D, and for {answers_of} the letter \
its members would most likely pick.
- {differ}
- Ask as if interviewing a person. Never mention posts, comments, threads or the texts above.
Reply with JSON only: {{"open_ended": [{{"question": ..., "answers": {{{_shape(names, '...')}}}}}],\
 "multiple_choice": [{{"question": ..., "options": {{"A": ..., "B": ..., "C": ..., "D": ...}},\
 "answers": {{{_shape(names, '"A"')}}}}}]}}""")
    if feedback:
        parts.append("\nAn earlier reply to this request was rejected:\n"
                     + "\n".join(f"- {f}" for f in feedback)
                     + "\nWrite a new reply that avoids these problems.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(parts)}]


def _shape(names: list[str], value: str) -> str:
    return ", ".join(f'"{n}": {value}' for n in names)


def reply_tokens(n_communities: int, n_open: int, n_choice: int, max_answer_words: int) -> int:
    """max_tokens for a row's reply: room for every question, answer and option."""
    answer = int(max_answer_words * 1.6) + 8
    per_open = 40 + n_communities * answer
    per_choice = 40 + 4 * 24 + n_communities * 8
    return 64 + n_open * per_open + n_choice * per_choice


def fit_prompt(backend: Backend, row: _Row, options: CrossOptions, context: int) -> None:
    """Show as many of each community's documents as fit the teacher's context (taking
    turns between communities, so each gets its share); set the row's messages."""
    communities = row.communities
    row.max_tokens = min(reply_tokens(len(communities), options.n_open, options.n_choice,
                                      options.max_answer_words), context // 2)
    reserve = 200  # a retry's feedback
    budget = context - row.max_tokens - reserve

    def messages(shown):
        return build_messages(row.keywords, shown, options.n_open, options.n_choice,
                              options.max_answer_words)

    texts = {c: [(i, _clip(t, options.doc_words)) for i, t in row.docs[c]] for c in communities}
    empty = backend.count_tokens([{"role": "user", "content": ""}])
    base = backend.count_tokens(messages({c: [] for c in communities}))
    shown: dict[str, list[tuple[str, str]]] = {c: [] for c in communities}
    used = base
    for k in range(max(len(v) for v in texts.values())):
        for c in communities:
            if k < len(texts[c]):
                cost = backend.count_tokens([{"role": "user",
                                              "content": f"- {texts[c][k][1]}"}]) - empty + 1
                if used + cost <= budget:
                    shown[c].append(texts[c][k])
                    used += cost
    while True:
        row.messages = messages({c: [t for _, t in v] for c, v in shown.items()})
        if backend.count_tokens(row.messages) <= budget:
            break
        largest = max(communities, key=lambda c: len(shown[c]))
        if not shown[largest]:
            raise BackendError(f"the teacher's context ({context} tokens) cannot hold even the "
                               "task: use a teacher with a larger context")
        shown[largest].pop()
    if any(not v for v in shown.values()):
        raise BackendError(f"the teacher's context ({context} tokens) cannot hold a document "
                           "of every community: use a teacher with a larger context or a "
                           "smaller --doc-words")
    row.shown = {c: [i for i, _ in v] for c, v in shown.items()}
    row.shown_texts = {c: [t for _, t in v] for c, v in shown.items()}


# --------------------------------------------------------------------------- the rows


def _topic_run(db, names: list[str]) -> int:
    for run_id, communities in db.execute(
            "SELECT id, communities FROM topic_runs ORDER BY id DESC"):
        if set(names) <= set(json.loads(communities)):
            return run_id
    raise GenerateError(f"no topics fitted over {', '.join('r/' + n for n in names)}: run "
                        f"`cci-local topics {' '.join('r/' + n for n in names)}` first")


def _load_rows(db, run_id: int, names: list[str], options: CrossOptions) -> list[_Row]:
    held_rows = ensure_holdout(db, run_id, "chunk_row", options.holdout, options.seed)
    held_topics = ensure_holdout(db, run_id, "topic", options.holdout, options.seed)
    chunks: dict[int, dict[str, list[str]]] = {}
    meta = {}
    for row_id, topic_id, keywords, community, doc_ids in db.execute(
            "SELECT r.id, t.id, t.keywords, c.community, c.doc_ids FROM chunk_rows r"
            " JOIN topics t ON t.id = r.topic_id JOIN chunks c ON c.chunk_row_id = r.id"
            " WHERE t.run_id = ? ORDER BY t.number, r.row_number, c.community", [run_id]):
        meta[row_id] = (topic_id, json.loads(keywords))
        if community in names:
            chunks.setdefault(row_id, {})[community] = json.loads(doc_ids)
    rows = []
    for row_id, (topic_id, keywords) in meta.items():
        per = chunks.get(row_id)
        if not per:
            continue
        ids = [i for v in per.values() for i in v]
        texts = {}
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            texts.update(db.execute(f"SELECT id, text FROM documents WHERE id IN "
                                    f"({','.join('?' * len(part))})", part).fetchall())
        communities = sorted(per)
        rows.append(_Row(row_id, topic_id, keywords, communities,
                         {c: [(i, texts[i]) for i in per[c] if i in texts] for c in communities},
                         "test" if row_id in held_rows else "train",
                         "test" if topic_id in held_topics else "train"))
    return rows


def capped(rows: list[_Row], done: set[int], max_rows: int) -> list[_Row]:
    """The rows still to ask when at most ``max_rows`` (done ones included) are asked:
    in order, but with held-out rows in their share of the scope (at least one when two
    or more rows are asked), so that a capped trial run still has held-out survey
    questions and instructions to evaluate on."""
    todo = [r for r in rows if r.id not in done]
    budget = max(0, max_rows - sum(r.id in done for r in rows))
    held = [r for r in todo if r.split == "test"]
    share = sum(r.split == "test" for r in rows) / len(rows) if rows else 0.0
    want = max(1 if max_rows >= 2 and share else 0, round(max_rows * share))
    have = sum(r.split == "test" for r in rows if r.id in done)
    chosen = {r.id for r in held[:min(budget, max(0, want - have))]}
    for r in todo:  # the rest of the budget: rows in order
        if len(chosen) >= budget:
            break
        chosen.add(r.id)
    return [r for r in todo if r.id in chosen]


def _attempt_seed(seed: int, row_id: int, attempt: int) -> int:
    digest = hashlib.sha256(f"{seed}:row:{row_id}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _invalid_reason(e: InvalidOutput) -> tuple[str, str]:
    """(row-level category for the report, what to tell the teacher)."""
    if e.reason.startswith("not JSON"):
        return ("reply not valid JSON (cut off?)",
                "The reply was not complete, valid JSON; it may have run too long. Keep every "
                "answer to one short sentence.")
    return ("reply does not match the schema",
            f"The reply did not have the required JSON shape: {_clip(e.reason, 30)}")


def _judge(row: _Row, data: dict, call_id: int, kept_questions: list[str],
           options: CrossOptions) -> None:
    """Check one valid reply; keep what passes (up to what the row asked for)."""
    kept, dropped = check_row(data, row.communities, kept_questions,
                              max_answer_words=options.max_answer_words,
                              near_duplicate=options.near_duplicate)
    have = Counter(item.kind for item, _ in row.kept)
    wanted = {"open": options.n_open, "choice": options.n_choice}
    for item in kept:
        if have[item.kind] >= wanted[item.kind]:
            dropped.append("more than the row asked for (a retry's extra)")
            continue
        if len(row.communities) == 1:
            item.discriminating = None  # one community: nothing to tell apart
        have[item.kind] += 1
        row.kept.append((item, call_id))
    row.dropped.update(dropped)
    missing = [k for k in ("open", "choice") if wanted[k] and not have[k]]
    row.problem = None
    if missing:
        reasons = Counter(dropped).most_common(1)
        row.problem = ("every question dropped: " + reasons[0][0] if reasons and not row.kept
                       else "no " + " and no ".join(
                           "open-ended" if k == "open" else "multiple-choice" for k in missing)
                       + " question kept")
        feedback = []
        for reason, n in Counter(dropped).most_common(3):
            feedback.append(f"{n} question(s) were rejected: {reason}.")
        feedback.append("Give all " + ", ".join(
            f"{wanted[k]} {'open-ended' if k == 'open' else 'multiple-choice'}"
            for k in ("open", "choice") if wanted[k]) + " questions, each new and different.")
        row.feedback = feedback


def _store_row(db, row: _Row, settings: str, teacher: str, status: str, reason: str | None,
               now: float) -> None:
    conn = db.conn
    with conn:
        for item, call_id in row.kept:
            cur = conn.execute(
                "INSERT OR IGNORE INTO instructions (kind, question, options, topic_id,"
                " chunk_row_id, source, discriminating, split, split_by_topic, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [item.kind, item.question,
                 json.dumps(item.options, ensure_ascii=False) if item.options else None,
                 row.topic_id, row.id, f"teacher:{call_id}",
                 None if item.discriminating is None else int(item.discriminating),
                 row.split, row.split_by_topic, now])
            if cur.rowcount:
                conn.executemany(
                    "INSERT INTO community_answers (instruction_id, community, answer, doc_ids)"
                    " VALUES (?, ?, ?, ?)",
                    [(cur.lastrowid, c, item.answers[c], json.dumps(row.shown[c]))
                     for c in row.communities])
        have = Counter(item.kind for item, _ in row.kept)
        conn.execute(
            "INSERT OR IGNORE INTO teacher_rows (chunk_row_id, settings, teacher, communities,"
            " status, attempts, call_ids, doc_ids, kept_open, kept_choice, dropped, reason,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [row.id, settings, teacher, json.dumps(row.communities), status, row.attempt,
             json.dumps(row.call_ids), json.dumps(row.shown), have["open"], have["choice"],
             json.dumps(dict(row.dropped)), reason, now])


# --------------------------------------------------------------------------- the stage


def cross_instruct(db: sqlite_utils.Database, communities: list[str] | None, teacher: Backend,
                   options: CrossOptions | None = None, *,
                   progress: Callable[[str, int], None] | None = None) -> CrossReport:
    """Put the chunk rows of ``communities`` (default: all) to ``teacher``; store what
    passes as instructions ('open' with an answer per community, 'choice' with
    options and a letter per community).  Returns what happened, rows and questions."""
    options = options or CrossOptions()
    progress = progress or (lambda kind, n: None)
    names = select_communities(db, communities)
    run_id = _topic_run(db, names)
    ident = identity(db, teacher)
    settings = options.settings(ident, names)
    report = CrossReport(run_id, teacher.describe())
    rows = _load_rows(db, run_id, names, options)
    if options.survey_pass:  # more survey questions: the held-out rows only
        rows = [r for r in rows if r.split == "test"]
    report.rows_in_scope = len(rows)
    done = {r[0] for r in db.execute("SELECT chunk_row_id FROM teacher_rows WHERE settings = ?",
                                     [settings])}
    report.rows_done_before = sum(r.id in done for r in rows)
    todo = [r for r in rows if r.id not in done]
    if options.max_rows is not None:
        todo = capped(rows, done, options.max_rows)
    context = teacher.context_length or options.context or 8192
    if options.context:
        context = min(context, options.context)
    kept_questions = [q for (q,) in db.execute(
        "SELECT question FROM instructions WHERE kind IN ('open', 'choice')")]
    schemas = {}
    calls_before = teacher.calls
    start = time.monotonic()
    progress("total", len(todo))
    pending = todo
    consecutive_errors = 0
    while pending:
        requests = []
        for row in pending:
            if row.messages is None:
                fit_prompt(teacher, row, options, context)
            row.attempt += 1
            key = tuple(row.communities)
            if key not in schemas:
                schemas[key] = row_schema(row.communities, options.n_open, options.n_choice)
            messages = build_messages(row.keywords, row.shown_texts, options.n_open,
                                      options.n_choice, options.max_answer_words, row.feedback)
            requests.append(Request(messages, schemas[key], Sampling(
                max_tokens=row.max_tokens, temperature=options.temperature,
                seed=_attempt_seed(options.seed + 1009 * options.survey_pass, row.id,
                                   row.attempt))))
        retry = []
        for i, outcome in chat_many(db, teacher, requests, parallel=options.parallel,
                                    replay_invalid=True):
            row = pending[i]
            if isinstance(outcome, BackendError):
                consecutive_errors += 1
                report.unfinished += 1
                report.last_error = str(outcome)
                if consecutive_errors >= 3 and report.tried == 0:
                    raise outcome
                progress("advance", 1)
                continue
            consecutive_errors = 0
            if isinstance(outcome, InvalidOutput):
                category, tell = _invalid_reason(outcome)
                row.call_ids.append(outcome.call_id)
                row.problem, row.feedback = category, [tell]
            else:
                report.cached += outcome.cached
                row.call_ids.append(outcome.call_id)
                if not outcome.cached:
                    report.output_tokens += _completion_tokens(db, outcome.call_id)
                _judge(row, outcome.data, outcome.call_id, kept_questions, options)
            if row.problem and row.attempt < options.max_attempts:
                retry.append(row)
                report.retries += 1
                continue
            _finish(db, row, settings, teacher.spec, report)
            progress("advance", 1)
        pending = retry
    report.calls = teacher.calls - calls_before
    report.seconds = time.monotonic() - start
    report.per_community = _counts(db, names)
    if report.rows_in_scope == 0:
        report.notes.append("the topic run has no chunk rows for these communities: refit "
                            "topics with smaller chunks (`cci-local topics --chunk-docs 3 10`)")
    return report


def _completion_tokens(db, call_id: int) -> int:
    row = db.execute("SELECT completion_tokens FROM llm_calls WHERE id = ?", [call_id]).fetchone()
    return (row[0] or 0) if row else 0


def _finish(db, row: _Row, settings: str, teacher: str, report: CrossReport) -> None:
    report.tried += 1
    report.dropped.update(row.dropped)
    if row.kept:
        status, reason = "accepted", None
        report.accepted += 1
        for item, _ in row.kept:
            report.kept[item.kind] += 1
            report.non_discriminating += item.discriminating is False
    else:
        status, reason = "rejected", row.problem or "nothing kept"
        report.rejected[reason] += 1
    _store_row(db, row, settings, teacher, status, reason, time.time())


def _counts(db, names: list[str]) -> dict[str, dict[str, int]]:
    out = {n: {"open": 0, "choice": 0} for n in names}
    for community, kind, n in db.execute(
            "SELECT a.community, i.kind, count(*) FROM community_answers a JOIN instructions i"
            " ON i.id = a.instruction_id WHERE i.kind IN ('open', 'choice') GROUP BY 1, 2"):
        if community in out:
            out[community][kind] = n
    return out
