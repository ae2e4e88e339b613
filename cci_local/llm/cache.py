"""Every model call goes through here: the prompt cache and the call log in the store.

The key is a hash of (model identity, kind of call, messages, schema, sampling
parameters incl. seed).  A key answered before makes no model call.  A call that
fails (the backend raised, or the output does not match the schema) is logged
with its raw output and the reason, and never answers a later call.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import orjson
import sqlite_utils

from ..errors import WorkFailed
from .base import Backend, BackendError, Completion, Messages, NoLogprobs, Sampling, count_call


class InvalidOutput(WorkFailed):
    """The model answered, but not in the shape asked for (kept in llm_calls)."""

    def __init__(self, reason: str, raw: str, call_id: int):
        super().__init__(reason)
        self.reason, self.raw, self.call_id = reason, raw, call_id


@dataclass
class Reply:
    text: str
    data: object = None  # the parsed JSON when a schema was given
    cached: bool = False
    call_id: int = 0


@dataclass
class Request:
    messages: Messages
    schema: dict | None = None
    sampling: Sampling = field(default_factory=Sampling)


_hash_lock = threading.Lock()


def file_sha256(db: sqlite_utils.Database, path: Path) -> str:
    """sha256 of a (model) file, memoised in the store by path, size and mtime."""
    path = Path(path).resolve()
    st = path.stat()
    row = db.execute("SELECT sha256 FROM file_hashes WHERE path = ? AND size = ? AND mtime_ns = ?",
                     [str(path), st.st_size, st.st_mtime_ns]).fetchone()
    if row:
        return row[0]
    with _hash_lock:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    value = digest.hexdigest()
    db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)",
               [str(path), st.st_size, st.st_mtime_ns, value])
    db.conn.commit()
    return value


def identity(db: sqlite_utils.Database, backend: Backend) -> str:
    cached = getattr(backend, "_cci_identity", None)
    if cached is None:
        cached = backend.identity(lambda p: file_sha256(db, p))
        backend._cci_identity = cached
    return cached


def _key(ident: str, kind: str, payload: dict) -> str:
    blob = orjson.dumps({"identity": ident, "kind": kind, **payload}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


def _lookup(db, key: str):
    return db.execute("SELECT id, response FROM llm_calls WHERE key = ? AND status = 'ok'",
                      [key]).fetchone()


def _lookup_invalid(db, key: str):
    return db.execute("SELECT id, response, error FROM llm_calls WHERE key = ? AND"
                      " status = 'invalid' ORDER BY id DESC LIMIT 1", [key]).fetchone()


def _replayed(db, key: str, replay_invalid: bool) -> InvalidOutput | None:
    """An answer that did not match its schema, read back instead of asked again.
    Only callers that replay a deterministic chain of attempts (generation's
    retries) ask for this; the answer never counts as a success."""
    if replay_invalid and (bad := _lookup_invalid(db, key)):
        return InvalidOutput(bad[2], bad[1], bad[0])
    return None


def _record(db, *, key, kind, backend, ident, request, response, status, error=None,
            completion: Completion | None = None, seconds=None) -> int:
    cur = db.execute(
        "INSERT OR IGNORE INTO llm_calls (key, kind, model, identity, request, response, status,"
        " error, prompt_tokens, completion_tokens, seconds, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [key, kind, backend.spec, ident, orjson.dumps(request).decode(), response, status, error,
         completion.prompt_tokens if completion else None,
         completion.completion_tokens if completion else None, seconds, time.time()])
    db.conn.commit()
    if cur.rowcount == 0:  # another process answered the same key meanwhile
        return _lookup(db, key)[0]
    return cur.lastrowid


def _validate(text: str, schema: dict) -> tuple[object, str | None]:
    try:
        # strict=False: a raw control character (a tab, a newline) inside a string is
        # kept as it is. llama.cpp's JSON grammar lets them through, and such a reply
        # is otherwise valid: asking again costs a whole teacher call.
        data = json.loads(text, strict=False)
    except json.JSONDecodeError as e:
        return None, f"not JSON: {e}"
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "the top level"
        return None, f"does not match the schema at {where}: {e.message}"
    return data, None


def _payload(request: Request) -> dict:
    return {"messages": request.messages, "schema": request.schema,
            "sampling": request.sampling.as_dict()}


def _finish(db, backend, ident, key, request: Request, outcome, seconds) -> Reply:
    """Record one real call's outcome and turn it into a Reply (or raise)."""
    count_call(backend)
    payload = _payload(request)
    if isinstance(outcome, BaseException):
        _record(db, key=key, kind="chat", backend=backend, ident=ident, request=payload,
                response=None, status="error", error=f"{type(outcome).__name__}: {outcome}",
                seconds=seconds)
        raise outcome
    data, problem = (None, None)
    if request.schema is not None:
        data, problem = _validate(outcome.text, request.schema)
    if problem:
        call_id = _record(db, key=key, kind="chat", backend=backend, ident=ident,
                          request=payload, response=outcome.text, status="invalid",
                          error=problem, completion=outcome, seconds=seconds)
        raise InvalidOutput(problem, outcome.text, call_id)
    call_id = _record(db, key=key, kind="chat", backend=backend, ident=ident, request=payload,
                      response=outcome.text, status="ok", completion=outcome, seconds=seconds)
    return Reply(outcome.text, data, cached=False, call_id=call_id)


def _timed(backend: Backend, request: Request):
    start = time.monotonic()
    try:
        outcome = backend.chat(request.messages, schema=request.schema, sampling=request.sampling)
    except BackendError as e:
        outcome = e
    return outcome, time.monotonic() - start


def chat(db: sqlite_utils.Database, backend: Backend, messages: Messages, *,
         schema: dict | None = None, sampling: Sampling = Sampling(),
         use_cache: bool = True, replay_invalid: bool = False) -> Reply:
    """One chat call through the cache.  Raises BackendError when the model could not
    be called, InvalidOutput when its answer does not match ``schema``
    (``replay_invalid``: such an answer given before is raised again, no call)."""
    request = Request(messages, schema, sampling)
    ident = identity(db, backend)
    key = _key(ident, "chat", _payload(request))
    if use_cache and (hit := _lookup(db, key)):
        data = json.loads(hit[1], strict=False) if schema is not None else None
        return Reply(hit[1], data, cached=True, call_id=hit[0])
    if use_cache and (bad := _replayed(db, key, replay_invalid)):
        raise bad
    outcome, seconds = _timed(backend, request)
    return _finish(db, backend, ident, key, request, outcome, seconds)


def chat_stream(db: sqlite_utils.Database, backend: Backend, messages: Messages, *,
                sampling: Sampling = Sampling(), use_cache: bool = True,
                on_piece: Callable[[str], None] | None = None) -> Reply:
    """``chat`` whose reply is handed to ``on_piece`` as it is generated (token by token
    where the backend streams); a cached reply is handed over whole.  The finished
    reply is recorded under the same key as ``chat``'s, so either reads the other's."""
    request = Request(messages, None, sampling)
    ident = identity(db, backend)
    key = _key(ident, "chat", _payload(request))
    if use_cache and (hit := _lookup(db, key)):
        if on_piece:
            on_piece(hit[1])
        return Reply(hit[1], None, cached=True, call_id=hit[0])
    start, pieces = time.monotonic(), []
    try:
        for piece in backend.stream(messages, sampling=sampling):
            pieces.append(piece)
            if on_piece:
                on_piece(piece)
    except BackendError as e:
        return _finish(db, backend, ident, key, request, e, time.monotonic() - start)
    return _finish(db, backend, ident, key, request, Completion("".join(pieces)),
                   time.monotonic() - start)


def chat_many(db: sqlite_utils.Database, backend: Backend, requests: list[Request], *,
              parallel: int = 1, replay_invalid: bool = False
              ) -> Iterator[tuple[int, Reply | Exception]]:
    """Answer many requests, yielding (index, Reply or the exception) as each is done.

    Cache hits (and, with ``replay_invalid``, invalid answers given before) come
    first.  A server backend gets up to ``parallel`` calls at once;
    an in-process model is always called one request at a time.  The store is only
    touched from the calling thread."""
    ident = identity(db, backend)
    todo = []
    for i, request in enumerate(requests):
        key = _key(ident, "chat", _payload(request))
        if hit := _lookup(db, key):
            data = json.loads(hit[1], strict=False) if request.schema is not None else None
            yield i, Reply(hit[1], data, cached=True, call_id=hit[0])
        elif bad := _replayed(db, key, replay_invalid):
            yield i, bad
        else:
            todo.append((i, key, request))
    if parallel > 1 and backend.concurrent and len(todo) > 1:
        with ThreadPoolExecutor(parallel, thread_name_prefix="cci-local-llm") as pool:
            futures = {pool.submit(_timed, backend, req): (i, key, req) for i, key, req in todo}
            for future in as_completed(futures):
                i, key, req = futures[future]
                yield i, _outcome(db, backend, ident, key, req, *future.result())
    else:
        for i, key, req in todo:
            yield i, _outcome(db, backend, ident, key, req, *_timed(backend, req))


def _outcome(db, backend, ident, key, request, outcome, seconds) -> Reply | Exception:
    try:
        return _finish(db, backend, ident, key, request, outcome, seconds)
    except (BackendError, InvalidOutput) as e:
        return e


def option_logprobs_many(db: sqlite_utils.Database, backend: Backend,
                         requests: list[tuple[Messages, list[str]]], *, parallel: int = 1,
                         use_cache: bool = True
                         ) -> Iterator[tuple[int, dict[str, float] | Exception]]:
    """option_logprobs for many (messages, options), yielding (index, log-probabilities
    or the exception, NoLogprobs included) as each is done.  Cache hits come first; a
    server backend gets up to ``parallel`` calls at once; the store is only touched
    from the calling thread."""
    ident = identity(db, backend)
    todo = []
    for i, (messages, options) in enumerate(requests):
        payload = {"messages": messages, "options": list(options)}
        key = _key(ident, "logprobs", payload)
        if use_cache and (hit := _lookup(db, key)):
            yield i, {k: (-math.inf if v is None else v) for k, v in json.loads(hit[1]).items()}
        else:
            todo.append((i, key, payload))

    def call(payload):
        start = time.monotonic()
        try:
            return backend.option_logprobs(payload["messages"], payload["options"]), \
                time.monotonic() - start
        except BackendError as e:  # NoLogprobs too
            return e, time.monotonic() - start

    def finish(i, key, payload, outcome, seconds):
        if isinstance(outcome, NoLogprobs):
            return outcome  # a capability, not a failed call: nothing to log
        count_call(backend)
        if isinstance(outcome, BackendError):
            _record(db, key=key, kind="logprobs", backend=backend, ident=ident,
                    request=payload, response=None, status="error",
                    error=f"{type(outcome).__name__}: {outcome}", seconds=seconds)
            return outcome
        # JSON has no -inf: an option the model gives no probability is stored as null.
        stored = {k: (None if v == -math.inf else v) for k, v in outcome.items()}
        _record(db, key=key, kind="logprobs", backend=backend, ident=ident, request=payload,
                response=json.dumps(stored), status="ok", seconds=seconds)
        return outcome

    if parallel > 1 and backend.concurrent and len(todo) > 1:
        with ThreadPoolExecutor(parallel, thread_name_prefix="cci-local-llm") as pool:
            futures = {pool.submit(call, payload): (i, key, payload) for i, key, payload in todo}
            for future in as_completed(futures):
                i, key, payload = futures[future]
                yield i, finish(i, key, payload, *future.result())
    else:
        for i, key, payload in todo:
            yield i, finish(i, key, payload, *call(payload))


def option_logprobs(db: sqlite_utils.Database, backend: Backend, messages: Messages,
                    options: list[str], *, use_cache: bool = True) -> dict[str, float]:
    """Log-probability of each option as the start of the reply, through the cache.
    Raises NoLogprobs where the backend cannot give them."""
    for _, outcome in option_logprobs_many(db, backend, [(messages, options)],
                                           use_cache=use_cache):
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    raise AssertionError("option_logprobs_many yields once per request")
