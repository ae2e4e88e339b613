"""Collect: a subreddit's posts and comments from the Arctic Shift API -> dump files.

``collect(subreddit, dumps_dir)`` pages through the API oldest first and leaves
``<subreddit>_submissions.zst`` and ``<subreddit>_comments.zst`` in ``dumps_dir``:
the names and format (NDJSON of the raw Reddit objects, zstd) of the per-subreddit
dumps cut from the Pushshift/Arctic Shift archives, so ``ingest`` reads a collected
subreddit and a downloaded one alike, and someone without network can put the
downloaded files in the same place instead.

What the API does, from its documentation (github.com/ArthurHeitmann/arctic_shift,
``api/README.md``, read at commit c66cbbe, 2026-01) and from its own download tool
(github.com/ArthurHeitmann/arctic_shift_ui, ``src/lib/archiveStream.ts``):

* ``GET /api/posts/search`` and ``GET /api/comments/search`` take ``subreddit`` (an
  ``r/`` prefix is ignored), ``after`` and ``before`` (a "Date": epoch seconds or
  milliseconds, ISO 8601 such as 2020-01-01, or an offset such as 2d), ``limit``
  (1-100, default 25, or ``auto``: "between 100 and 1000 results ... depending on
  the capacity of the server"; the download tool uses it), ``sort`` (asc | desc,
  by created_utc) and ``fields``.
* The answer is ``{"data": [objects]}``; a failure is ``{"error": "message"}`` (the
  tools check ``data.error``).  Under load it answers "Timeout. Maybe slow down a
  bit" (HTTP 422 as other clients report it): retried here like a 5xx.
* ``X-RateLimit-Remaining`` counts the requests left and ``X-RateLimit-Reset`` says
  when the limit resets; the reset's format is not documented, so epoch seconds,
  epoch milliseconds, seconds to wait and an HTTP date are all read.  "If you make
  excessive requests, you might get rate limited ... this is a free service, so be
  considerate": requests here are at least ``min_interval`` (1 s) apart.
* Whether ``after`` includes its own second is not documented.  The download tool
  asks for after = the last created_utc and steps one second on when a page does
  not move.  Here a page asks for after = last created_utc - 1 and skips the ids
  it already has, which loses nothing under either reading (items sharing the
  boundary second stay in reach).  Only more than a page of items within two
  seconds stalls it (the API has no cursor but time); it then steps on a second
  at a time, and items of that second beyond the page can be missed.

Files in ``dumps_dir`` (the working ones hidden: ``ingest DIR`` reads every file in a
directory that is not hidden):

* ``.<sub>_<kind>.ndjson.part``: the items as they arrive, a page appended and
  flushed at a time.  A re-run reads it back (dropping a last line cut off by a
  crash) and asks for what comes after its last item, so no page is fetched twice
  and no id is written twice.
* ``.<sub>_<kind>.collect.json``: what was asked (since, until, limit) and, once the
  kind is done, ``complete``, the item count, whether the range ran out before the
  limit and the .zst's size.  A re-run of a request that is already met makes no
  request; a larger ``limit`` over the same range continues from the .zst.
* ``<sub>_<kind>.zst``: compressed from the .part into a temporary file, renamed
  into place when the kind is complete.  A .zst that is not the one the state file
  recorded (a downloaded dump) is never touched.

Usernames are in the objects and so in the files (``ingest`` pseudonymises them as
it reads); nothing here logs an item.
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
import orjson
import zstandard

from . import __version__
from .errors import WorkFailed
from .store import normalise_community

__all__ = ["collect", "parse_since", "dump_name", "CollectError", "CollectReport", "KindReport",
           "DEFAULT_URL", "KINDS"]

DEFAULT_URL = "https://arctic-shift.photon-reddit.com"
KINDS = ("submissions", "comments")
ENDPOINTS = {"submissions": "/api/posts/search", "comments": "/api/comments/search"}
USER_AGENT = f"cci-local/{__version__} (research; +local)"
MAX_PAGE = 100  # the largest number the API takes as `limit`
MAX_WAIT = 900.0  # the longest single wait for a rate limit, in seconds
MAX_BACKOFF = 60.0
ZSTD_LEVEL = 9
# 128 MiB windows: what `zstd -d` accepts without --long (the reader takes up to 2 GiB).
ZSTD_WINDOW_LOG = 27

log = logging.getLogger(__name__)

_SUBREDDIT = re.compile(r"[A-Za-z0-9_]{2,21}")


class CollectError(WorkFailed):
    """The collection cannot go on; what was received so far stays on disk.

    ``report`` is the CollectReport up to the failure; ``retryable`` says whether the
    same command may succeed later (the API was down, overloaded or rate limiting)."""

    def __init__(self, message: str, report: CollectReport | None = None,
                 retryable: bool = False):
        super().__init__(message)
        self.report = report
        self.retryable = retryable


@dataclass
class KindReport:
    kind: str  # "submissions" or "comments"
    file: str  # the .zst
    status: str = ""  # collected, resumed, extended, already collected, present, no items
    note: str = ""
    added: int = 0  # items written by this run
    items: int = 0  # items in the file
    pages: int = 0  # pages received by this run
    retries: int = 0
    malformed: int = 0  # objects without an id or created_utc, skipped
    exhausted: bool = False  # the range ran out (rather than the limit)
    written: bool = False  # the .zst was (re)written by this run
    first_utc: int | None = None
    last_utc: int | None = None
    seconds: float = 0.0


@dataclass
class CollectReport:
    subreddit: str
    dumps_dir: str
    base_url: str
    kinds: list[KindReport] = field(default_factory=list)
    requests: int = 0  # HTTP requests sent, retries included
    seconds: float = 0.0

    @property
    def files_written(self) -> list[str]:
        return [k.file for k in self.kinds if k.written]

    @property
    def files(self) -> list[str]:
        """The dump files there are now, written by this run or not."""
        return [k.file for k in self.kinds if Path(k.file).exists()]


def dump_name(subreddit: str, kind: str) -> str:
    """The per-subreddit dump's file name: keto_submissions.zst, keto_comments.zst."""
    return f"{subreddit}_{kind}.zst"


def _subreddit(name: str) -> str:
    sub = normalise_community(name)
    if not _SUBREDDIT.fullmatch(sub):
        raise ValueError(f"{name!r} is not a subreddit name (2-21 letters, digits or _, "
                         "with or without r/)")
    return sub


# --------------------------------------------------------------------------- times

_AGE = re.compile(r"(\d+)\s*(s|sec|seconds?|min|minutes?|h|hours?|d|days?|w|weeks?|"
                  r"mo|months?|y|years?)", re.IGNORECASE)
_AGE_SECONDS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600,
                "hour": 3600, "d": 86400, "day": 86400, "w": 7 * 86400, "week": 7 * 86400,
                "mo": 30 * 86400, "month": 30 * 86400, "y": 365 * 86400, "year": 365 * 86400}


def parse_since(value: int | float | str, *, now: float | None = None) -> int:
    """A point in time -> epoch seconds (UTC), for ``since`` and ``until`` alike.

    Takes epoch seconds (or milliseconds, 13 digits), a date (2022-01-01), a date and
    time (2022-01-01T12:30:00, 2022-01-01 12:30, with Z or an offset; UTC when none)
    or an age back from now (30d, 12h, 6w, 3mo, 1y, 90min).  Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"cannot read {value!r} as a time")
    if isinstance(value, (int, float)):
        return _epoch(float(value), value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return _epoch(float(text), value)
    match = _AGE.fullmatch(text)
    if match:
        unit = match.group(2).lower()
        unit = unit[:-1] if unit.endswith("s") and len(unit) > 1 and unit != "s" else unit
        seconds = int(match.group(1)) * _AGE_SECONDS[unit]
        return int((time.time() if now is None else now) - seconds)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        moment = None
    if moment is not None:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return int(moment.timestamp())
    hint = " (for minutes write 'min', for months 'mo')" if re.fullmatch(r"\d+\s*m", text) else ""
    raise ValueError(
        f"cannot read {value!r} as a time{hint}: give a date (2022-01-01), a date and time "
        "(2022-01-01T12:00:00, UTC), epoch seconds (1640995200) or an age such as 30d, "
        "12h, 6w, 3mo or 1y")


def _epoch(number: float, shown) -> int:
    if number < 0:
        raise ValueError(f"cannot read {shown!r} as a time: negative")
    if number >= 1e11:  # 13 digits: milliseconds
        number /= 1000
    return int(number)


def _reset_wait(value: str | None, now: float) -> float | None:
    """Seconds until ``X-RateLimit-Reset`` (or ``Retry-After``): epoch seconds, epoch
    milliseconds, seconds to wait, or an HTTP or ISO date."""
    if not value:
        return None
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if number >= 1e12:
            return max(0.0, number / 1000 - now)
        if number >= 1e9:
            return max(0.0, number - now)
        return max(0.0, number)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, moment.timestamp() - now)


# --------------------------------------------------------------------------- HTTP


class _Transient(Exception):
    """A failure worth another try: (what happened, seconds to wait or None)."""

    def __init__(self, problem: str, wait: float | None = None):
        super().__init__(problem)
        self.problem = problem
        self.wait = wait


class _Unreachable(Exception):
    """The very first request could not connect: offline, DNS, refused."""


def _error_message(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(doc, dict) and doc.get("error"):
        return str(doc["error"])[:300]
    return ""


def _overloaded(message: str) -> bool:
    low = message.lower()
    return "timeout" in low or "timed out" in low or "slow down" in low


class _Api:
    """The API seen politely: one request at a time, at least ``min_interval`` apart,
    waiting out rate limits, retrying what may pass."""

    def __init__(self, base_url: str, client: httpx.Client, *, min_interval: float,
                 max_retries: int, sleep: Callable[[float], None], clock: Callable[[], float]):
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.min_interval = min_interval
        self.max_retries = max_retries
        self.sleep = sleep
        self.clock = clock
        self.reached = False  # an answer (any) came back: later connect errors are blips
        self.requests = 0
        self._last_start: float | None = None
        self._hold_until = 0.0  # no request before this (a rate limit's reset)

    def _pace(self) -> None:
        now = self.clock()
        wait = self._hold_until - now
        if self._last_start is not None:
            wait = max(wait, self._last_start + self.min_interval - now)
        if wait > 0:
            self.sleep(min(wait, MAX_WAIT))
        self._last_start = self.clock()

    def page(self, path: str, params: dict) -> tuple[list, int]:
        """One page of items, and how many retries it took."""
        url = self.base_url + path
        retries = 0
        while True:
            self._pace()
            try:
                return self._get(url, params), retries
            except _Transient as e:
                retries += 1
                if retries > self.max_retries:
                    shown = str(httpx.URL(url, params=params))
                    raise CollectError(f"{shown}: {e.problem}; gave up after {retries} tries "
                                       "(the Arctic Shift API may be down or overloaded)",
                                       retryable=True) from None
                wait = e.wait if e.wait is not None else min(MAX_BACKOFF, 2.0 ** (retries - 1))
                log.info("%s: %s; trying again in %.0f s", path, e.problem, wait)
                self._hold_until = self.clock() + min(wait, MAX_WAIT)

    def _get(self, url: str, params: dict) -> list:
        self.requests += 1
        try:
            response = self.client.get(url, params=params, headers={"User-Agent": USER_AGENT})
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            if not self.reached:
                raise _Unreachable(str(e) or type(e).__name__) from None
            raise _Transient(f"cannot connect ({e or type(e).__name__})") from None
        except httpx.UnsupportedProtocol as e:
            raise CollectError(f"{url}: {e}") from None
        except httpx.TimeoutException as e:
            raise _Transient(f"no answer in time ({type(e).__name__})") from None
        except httpx.TransportError as e:  # connection dropped, body cut short
            raise _Transient(f"connection dropped ({e or type(e).__name__})") from None
        self.reached = True
        status = response.status_code
        body = response.content
        if status == 429:
            headers = response.headers
            wait = _reset_wait(headers.get("retry-after"), self.clock())
            if wait is None:
                wait = _reset_wait(headers.get("x-ratelimit-reset"), self.clock())
            raise _Transient("rate limited (HTTP 429)", wait)
        if status >= 500:
            message = _error_message(body)
            raise _Transient(f"HTTP {status}" + (f" ({message})" if message else ""))
        if status >= 400:
            message = _error_message(body)
            if _overloaded(message):
                raise _Transient(f"HTTP {status} ({message})")
            shown = str(httpx.URL(url, params=params))
            raise CollectError(f"{shown}: the API answered HTTP {status}"
                               + (f": {message}" if message else ""))
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Transient(f"the answer is not complete JSON ({len(body):,} bytes: "
                             "cut off?)") from None
        if isinstance(doc, dict) and doc.get("error"):
            message = str(doc["error"])[:300]
            if _overloaded(message):
                raise _Transient(f"the API said: {message}")
            shown = str(httpx.URL(url, params=params))
            raise CollectError(f"{shown}: the API said: {message}")
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            raise _Transient("the answer has no 'data' list")
        self._note_rate_limit(response.headers)
        return doc["data"]

    def _note_rate_limit(self, headers: httpx.Headers) -> None:
        try:
            remaining = int(float(headers.get("x-ratelimit-remaining", "")))
        except ValueError:
            return
        if remaining > 0:
            return
        wait = _reset_wait(headers.get("x-ratelimit-reset"), self.clock())
        wait = 10.0 if wait is None else max(1.0, wait)
        log.info("rate limit spent; waiting %.0f s for its reset", wait)
        self._hold_until = self.clock() + min(wait, MAX_WAIT)


# --------------------------------------------------------------------------- files


@dataclass
class _Paths:
    zst: Path
    part: Path
    state: Path
    tmp: Path

    @classmethod
    def of(cls, dumps_dir: Path, sub: str, kind: str) -> _Paths:
        stem = f"{sub}_{kind}"
        return cls(dumps_dir / dump_name(sub, kind), dumps_dir / f".{stem}.ndjson.part",
                   dumps_dir / f".{stem}.collect.json", dumps_dir / f".{stem}.zst.tmp")


def _read_state(path: Path) -> dict | None:
    try:
        state = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(tmp, path)


def _ours(paths: _Paths, state: dict | None) -> bool:
    """Whether the .zst there is this collector's (and so may be replaced): the size
    its state file recorded, or, after a crash between renaming it into place and
    saying so, the .part it was made from.  Anything else (a downloaded dump) is not."""
    if state is None:
        return False
    if state.get("zst_bytes") == paths.zst.stat().st_size:
        return True
    if state.get("complete") or not paths.part.exists():
        return False
    try:
        with open(paths.zst, "rb") as fh:
            frame = zstandard.get_frame_parameters(fh.read(18))
    except (OSError, zstandard.ZstdError):
        return False
    return frame.content_size == paths.part.stat().st_size


def _created(item) -> int | None:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        return None
    created = item.get("created_utc")
    if type(created) is int:
        return created
    try:
        return int(float(created))
    except (TypeError, ValueError):
        return None


class _Seen:
    """Ids near the paging boundary.  Pages come oldest first and each starts a
    second before the last item written, so only ids of the last two seconds can
    come again: memory stays flat however many millions are collected."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.last: int | None = None
        self.first: int | None = None
        self.count = 0

    def add(self, item_id: str, created: int) -> None:
        self.ids[item_id] = created
        self.count += 1
        if self.first is None:
            self.first = created
        if self.last is None or created > self.last:
            self.last = created

    def prune(self) -> None:
        if self.last is not None and len(self.ids) > 256:
            floor = self.last - 1
            self.ids = {i: c for i, c in self.ids.items() if c >= floor}


def _read_part(path: Path, keep: int | None = None) -> _Seen:
    """What an interrupted run wrote; a last line cut off by a crash (or anything
    after the first unreadable line), and lines beyond ``keep``, are cut from the file."""
    seen = _Seen()
    good = 0
    with open(path, "rb") as fh:
        for line in fh:
            if keep is not None and seen.count >= keep:
                break
            if not line.endswith(b"\n"):
                break
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                break
            created = _created(item)
            if created is None:
                break
            seen.add(item["id"], created)
            seen.prune()
            good += len(line)
    if good < path.stat().st_size:
        with open(path, "r+b") as fh:
            fh.truncate(good)
    return seen


def _decompress_to(zst: Path, part: Path) -> None:
    dctx = zstandard.ZstdDecompressor(max_window_size=2**31)
    with open(zst, "rb") as src, open(part, "wb") as dst:
        dctx.copy_stream(src, dst)


def _compress(part: Path, tmp: Path, zst: Path) -> None:
    """The .part as one zstd frame, renamed into place only once it is whole."""
    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL, window_log=ZSTD_WINDOW_LOG, enable_ldm=True)
    cctx = zstandard.ZstdCompressor(compression_params=params)
    with open(part, "rb") as src, open(tmp, "wb") as dst:
        cctx.copy_stream(src, dst, size=part.stat().st_size)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, zst)


# --------------------------------------------------------------------------- collect


def collect(
    subreddit: str,
    dumps_dir: str | os.PathLike,
    *,
    kinds: Sequence[str] = KINDS,
    limit: int | None = None,
    since: int | str | None = None,
    until: int | str | None = None,
    base_url: str = DEFAULT_URL,
    client: httpx.Client | None = None,
    progress: Callable[[str, object], None] | None = None,
    min_interval: float = 1.0,
    max_retries: int = 6,
    page_size: int | str = "auto",
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> CollectReport:
    """Collect r/``subreddit``'s submissions and comments into ``dumps_dir``.

    ``limit``: at most this many items per kind (the oldest in the range).
    ``since``/``until``: only items created at/after ``since`` and before ``until``
    (epoch seconds, or anything ``parse_since`` reads).  ``page_size``: the API's
    ``limit`` per request, "auto" (100-1000, the server's choice) or 1-100.
    ``progress(name, n)``: ("phase", (description, total or None)) as each kind
    starts, then (kind, items added).  ``client``: an httpx.Client to use (closed by
    the caller).  ``sleep`` and ``clock`` (epoch seconds) are for tests.

    A kind already complete for this range is not asked for again (a dump holding
    more than a lower ``limit`` asks for is left as it is); an interrupted one goes
    on where it stopped.  Raises CollectError (network, API; its ``report`` says what
    was done) and ValueError (arguments)."""
    sub = _subreddit(subreddit)
    kinds = tuple(kinds)
    for kind in kinds:
        if kind not in ENDPOINTS:
            raise ValueError(f"unknown kind {kind!r}: use {' or '.join(KINDS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if page_size != "auto" and not (isinstance(page_size, int) and 1 <= page_size <= MAX_PAGE):
        raise ValueError(f"page_size must be 'auto' or 1-{MAX_PAGE}, not {page_size!r}")
    since = None if since is None else parse_since(since)
    until = None if until is None else parse_since(until)
    if since is not None and until is not None and since >= until:
        raise ValueError("since must be before until")
    dumps = Path(dumps_dir)
    dumps.mkdir(parents=True, exist_ok=True)

    own = client is None
    if own:
        client = httpx.Client(timeout=httpx.Timeout(120.0, connect=15.0),
                              headers={"User-Agent": USER_AGENT}, follow_redirects=True)
    api = _Api(base_url, client, min_interval=min_interval, max_retries=max_retries,
               sleep=sleep or time.sleep, clock=clock or time.time)
    report = CollectReport(subreddit=sub, dumps_dir=str(dumps), base_url=api.base_url)
    started = time.monotonic()
    try:
        for kind in kinds:
            rep = KindReport(kind=kind, file=str(_Paths.of(dumps, sub, kind).zst))
            report.kinds.append(rep)
            t0 = time.monotonic()
            try:
                _collect_kind(api, sub, kind, dumps, rep, limit=limit, since=since,
                              until=until, page_size=page_size, progress=progress)
            except CollectError as e:
                part = _Paths.of(dumps, sub, kind).part
                if rep.items:
                    hint = (f"\n{rep.items:,} r/{sub} {kind} received so far are kept in "
                            f"{part}: run the same command again to resume")
                else:
                    hint = "\nrun the same command again later" if e.retryable else ""
                raise CollectError(f"{e}{hint}", report, e.retryable) from None
            finally:
                rep.seconds = time.monotonic() - t0
    except _Unreachable as e:
        missing = [dump_name(sub, k) for k in kinds if not (dumps / dump_name(sub, k)).exists()]
        names = " and ".join(missing or [dump_name(sub, k) for k in kinds])
        raise CollectError(
            f"could not reach the Arctic Shift API at {api.base_url} ({e}).\n"
            f"Without network: download Arctic Shift's per-subreddit dumps of r/{sub} "
            f"({names}) and put them into {dumps} (a re-run leaves them as they are), "
            "or ingest a corpus you already have with --corpus PATH.", report) from None
    finally:
        report.requests = api.requests
        report.seconds = time.monotonic() - started
        if own:
            client.close()
    return report


def _collect_kind(api: _Api, sub: str, kind: str, dumps: Path, rep: KindReport, *,
                  limit: int | None, since: int | None, until: int | None,
                  page_size: int | str, progress) -> None:
    paths = _Paths.of(dumps, sub, kind)
    state = _read_state(paths.state)
    have_zst = paths.zst.exists()
    zst_bytes = paths.zst.stat().st_size if have_zst else None
    if have_zst and not _ours(paths, state):
        rep.status, rep.note = "present", "not written by cci-local collect: left as it is"
        return
    same_range = (state is not None and state.get("since") == since
                  and state.get("until") == until)
    done_before = (same_range and state.get("complete")
                   and (have_zst or state.get("items") == 0))
    if done_before and (state.get("exhausted") or (limit is not None
                                                   and limit <= state.get("items", 0))):
        rep.status = "already collected"
        rep.items = state.get("items", 0)
        rep.exhausted = bool(state.get("exhausted"))
        rep.first_utc, rep.last_utc = state.get("first_utc"), state.get("last_utc")
        paths.part.unlink(missing_ok=True)
        return

    if (same_range and not state.get("complete") and paths.part.exists()):
        seen = _read_part(paths.part, keep=limit)
        rep.status = "resumed"
    elif done_before and have_zst:  # met a smaller limit over this range: go on from there
        _decompress_to(paths.zst, paths.part)
        seen = _read_part(paths.part)
        rep.status = "extended"
    else:
        paths.part.write_bytes(b"")
        seen = _Seen()
        rep.status = "collected"
        if have_zst:
            rep.note = "replaces an earlier collection of another range"
    _write_state(paths.state, {
        "subreddit": sub, "kind": kind, "api": api.base_url, "since": since, "until": until,
        "limit": limit, "complete": False, "items": seen.count,
        "zst_bytes": zst_bytes if have_zst else None})
    rep.items = seen.count

    if progress:
        progress("phase", (f"r/{sub} {kind}", limit))
        if seen.count:
            progress(kind, min(seen.count, limit) if limit else seen.count)

    with open(paths.part, "ab") as out:
        _page_through(api, sub, kind, out, seen, rep, limit=limit, since=since, until=until,
                      page_size=page_size, progress=progress)
        out.flush()
        os.fsync(out.fileno())

    rep.items = seen.count
    rep.first_utc, rep.last_utc = seen.first, seen.last
    if seen.count:
        _compress(paths.part, paths.tmp, paths.zst)
        rep.written = True
        size = paths.zst.stat().st_size
    else:
        paths.zst.unlink(missing_ok=True)
        rep.status = "no items"
        size = None
    _write_state(paths.state, {
        "subreddit": sub, "kind": kind, "api": api.base_url, "since": since, "until": until,
        "limit": limit, "complete": True, "items": seen.count, "exhausted": rep.exhausted,
        "first_utc": seen.first, "last_utc": seen.last, "zst_bytes": size,
        "finished_at": int(time.time())})
    paths.part.unlink(missing_ok=True)


def _page_through(api: _Api, sub: str, kind: str, out, seen: _Seen, rep: KindReport, *,
                  limit: int | None, since: int | None, until: int | None,
                  page_size: int | str, progress) -> None:
    """Ask for pages oldest first until the range or the limit runs out.

    Each page starts a second before the last item written (or before ``since``);
    ``step`` moves that start on a second when a page brings nothing new, which is
    how the end shows (the API has no end marker) and how a second holding more
    than a page of items is passed."""
    step = 0
    while limit is None or seen.count < limit:
        floor = seen.last if seen.last is not None else since
        near_limit = limit is not None and limit - seen.count <= MAX_PAGE
        per_request = MAX_PAGE if page_size == "auto" and near_limit else page_size
        params: dict = {"subreddit": sub, "sort": "asc", "limit": per_request}
        if floor is not None:
            params["after"] = max(0, floor - 1 + step)
        if until is not None:
            params["before"] = until
        items, retries = api.page(ENDPOINTS[kind], params)
        rep.pages += 1
        rep.retries += retries
        if not items:
            rep.exhausted = True
            return
        lines: list[bytes] = []
        ended = False
        for item in items:
            created = _created(item)
            if created is None:
                rep.malformed += 1
                continue
            if until is not None and created >= until:
                ended = True
                break
            if (since is not None and created < since) or item["id"] in seen.ids:
                continue
            if floor is not None and created < floor - 1:
                continue  # older than this page asked for: had it before
            seen.add(item["id"], created)
            lines.append(orjson.dumps(item) + b"\n")
            if limit is not None and seen.count >= limit:
                break
        if lines:
            out.write(b"".join(lines))
            out.flush()
            rep.added += len(lines)
            rep.items = seen.count
            seen.prune()
            step = 0
            if progress:
                progress(kind, len(lines))
        if ended:
            rep.exhausted = True
            return
        if not lines:
            if floor is None or step >= 2:
                rep.exhausted = True
                return
            step += 1
