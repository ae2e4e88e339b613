"""`cci-local chat`: a conversation with one community's model in the terminal.

Each turn goes to the community's aligned model with the whole conversation so
far; the reply streams as it is generated (through the prompt cache, so replaying
the same conversation asks nothing twice).  Commands: ``/switch r/B`` goes on
with r/B's model (the conversation is kept), ``/base`` shows the base model's
answer to the last turn for contrast (not added to the conversation), ``/help``,
``/quit``.  Every turn is kept in the store's ``asked`` table (kind 'chat', one
session number per conversation).  Input is read a line at a time, so piped
standard input works as well as a terminal (where readline gives line editing
and history).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlite_utils

from .ask import AskError, respondents
from .llm import BackendError, Sampling, chat_stream, get_backend
from .respondents import NoAdapter, Respondent, local_gguf
from .store import UnknownCommunity, select_communities

DEFAULT_SAMPLING = Sampling(max_tokens=256, temperature=0.7)
HELP = ("/switch r/NAME  go on with another community's model\n"
        "/base           the base model's answer to your last message, for contrast\n"
        "/quit           end (Ctrl-D too)")


@dataclass
class Session:
    id: int
    community: str
    respondent: Respondent
    messages: list[dict] = field(default_factory=list)
    turns: int = 0


def fit_history(backend, messages: list[dict], max_tokens: int) -> tuple[list[dict], int]:
    """The conversation cut to the model's context window: the oldest exchanges (a
    message and its reply) go first; the latest message always stays.  Returns the
    messages to send and how many exchanges were left out."""
    limit = backend.context_length
    if not limit:
        return messages, 0
    kept, dropped = list(messages), 0
    while len(kept) > 2 and backend.count_tokens(kept) + max_tokens > limit:
        kept, dropped = kept[2:], dropped + 1
    return kept, dropped


def _new_session(db) -> int:
    row = db.execute("SELECT coalesce(max(session), 0) FROM asked WHERE kind = 'chat'").fetchone()
    return row[0] + 1


def _turn(db, session: Session, respondent: Respondent, messages: list[dict],
          sampling: Sampling, write: Callable[[str], None]) -> str:
    reply = chat_stream(db, respondent.backend, messages, sampling=sampling, on_piece=write)
    write("\n")
    session.turns += 1
    db.execute("INSERT OR IGNORE INTO asked (kind, session, turn, question, respondent, model,"
               " adapter, sampling, text, call_id, created_at) VALUES ('chat', ?, ?, ?, ?, ?,"
               " ?, ?, ?, ?, ?)",
               [session.id, session.turns, messages[-1]["content"], respondent.label,
                respondent.backend.spec, respondent.adapter,
                json.dumps(sampling.as_dict(), sort_keys=True), reply.text,
                reply.call_id, time.time()])
    db.conn.commit()
    return reply.text


def run_chat(db: sqlite_utils.Database, community: str, base: str, *,
             read_line: Callable[[str], str | None], write: Callable[[str], None],
             sampling: Sampling = DEFAULT_SAMPLING) -> Session:
    """Converse until /quit or the end of input.  ``read_line(prompt)`` returns a line
    or None at the end; ``write`` shows text (replies arrive in pieces)."""
    name = select_communities(db, [community])[0]
    # One base model for the whole conversation: /switch switches the adapter on it,
    # /base answers with no adapter, and nothing is loaded twice.
    shared = get_backend(base) if local_gguf(base) else None
    panels = [respondents(db, [name], base, base_backend=shared)]
    (aligned,) = panels[0].respondents
    session = Session(_new_session(db), name, aligned)
    models = {name: aligned}
    base_model, told = None, 0
    write(f"talking to r/{name}'s model ({aligned.backend.spec}); /help for commands\n")
    try:
        while True:
            line = read_line("you> ")
            if line is None:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit", "/q"):
                break
            if line == "/help":
                write(HELP + "\n")
                continue
            if line.startswith("/switch"):
                target = line.removeprefix("/switch").strip()
                try:
                    other = select_communities(db, [target])[0] if target else None
                    if other is None:
                        raise AskError("/switch needs a community: /switch r/NAME")
                    if other not in models:
                        panels.append(respondents(db, [other], base, base_backend=shared))
                        models[other] = panels[-1].respondents[0]
                except (AskError, NoAdapter, UnknownCommunity) as e:
                    write(f"{e}\n")
                    continue
                session.community, session.respondent = other, models[other]
                write(f"now talking to r/{other}'s model (the conversation so far is kept)\n")
                continue
            if line == "/base":
                if not session.messages:
                    write("nothing to compare yet: say something first\n")
                    continue
                if base_model is None:
                    base_model = Respondent("base", shared or get_backend(base))
                last = max(i for i, m in enumerate(session.messages) if m["role"] == "user")
                sent, _ = fit_history(base_model.backend, session.messages[:last + 1],
                                      sampling.max_tokens)
                write("base> ")
                try:
                    _turn(db, session, base_model, sent, sampling, write)
                except BackendError as e:
                    write(f"\nthe base model could not answer: {e}\n")
                continue
            if line.startswith("/"):
                write(f"unknown command {line.split()[0]}; /help lists them\n")
                continue
            session.messages.append({"role": "user", "content": line})
            sent, dropped = fit_history(session.respondent.backend, session.messages,
                                        sampling.max_tokens)
            if dropped > told:
                told = dropped
                write(f"(the earliest {dropped} exchanges no longer fit the model's context "
                      "and are left out of what it sees)\n")
            write(f"r/{session.community}> ")
            try:
                text = _turn(db, session, session.respondent, sent, sampling, write)
            except BackendError as e:
                session.messages.pop()
                write(f"\nthe model could not answer: {e}\n")
                continue
            session.messages.append({"role": "assistant", "content": text})
    finally:
        for p in panels:
            p.close()
        if base_model is not None and base_model.backend is not shared:
            base_model.backend.close()
        if shared is not None:
            shared.close()
    return session


__all__ = ["HELP", "Session", "run_chat"]
