"""The Arctic Shift API as ``collect()`` uses it: its endpoints, and ``ApiClient``,
which asks for one page at a time, at least ``min_interval`` apart, waits out rate
limits and retries what may pass (a 5xx, an overloaded server, a dropped connection).

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

How ``collect()`` pages through the API (what it asks as ``after``) is in
cci_local/collect.py.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Callable
from datetime import datetime, timezone

import httpx
import orjson

from . import __version__
from .collect_report import CollectError

DEFAULT_URL = "https://arctic-shift.photon-reddit.com"
ENDPOINTS = {"submissions": "/api/posts/search", "comments": "/api/comments/search"}
USER_AGENT = f"cci-local/{__version__} (research; +local)"
MAX_PAGE = 100  # the largest number the API takes as `limit`
MAX_WAIT = 900.0  # the longest single wait for a rate limit, in seconds
MAX_BACKOFF = 60.0

log = logging.getLogger("cci_local.collect")  # logged as the collect stage


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


class _Transient(Exception):
    """A failure worth another try: (what happened, seconds to wait or None)."""

    def __init__(self, problem: str, wait: float | None = None):
        super().__init__(problem)
        self.problem = problem
        self.wait = wait


class Unreachable(Exception):
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


class ApiClient:
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
                raise Unreachable(str(e) or type(e).__name__) from None
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
