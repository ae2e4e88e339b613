"""A stand-in for the Arctic Shift API (arctic-shift.photon-reddit.com), for tests.

The real API cannot be reached from the build machines, so the collector is tested
against this: a loopback HTTP server speaking the API as its documentation
(github.com/ArthurHeitmann/arctic_shift, api/README.md) describes it --
``GET /api/posts/search`` and ``GET /api/comments/search`` with ``subreddit`` and
``author`` (an r/ or u/ prefix ignored), ``link_id``, ``after`` and ``before`` (a
"Date": epoch seconds or milliseconds, ISO 8601 date or date-time, or an offset
such as 30d, 2hour, 5min), ``limit`` (1-100 or "auto", default 25), ``sort``
(asc | desc by created_utc) and ``fields``; answers ``{"data": [...]}``, or
``{"error": "..."}`` with a 4xx status for a bad parameter; ``X-RateLimit-Remaining``
and ``X-RateLimit-Reset`` on every answer, and 429 with ``Retry-After`` once a
window's requests are spent.

What the documentation leaves open is a choice here, and can be switched:
``after_inclusive`` (False: created_utc > after, as Pushshift did), ``before`` is
exclusive, the default sort is desc, "auto" gives ``auto_size`` items, and the
reset header is epoch seconds.  ``page_cap`` caps every page (the real server gives
fewer than asked under load) so tests see many pages.

The items are the shared corpus's r/keto and r/nutrition posts and comments
(keto_nutrition_posts_comments/*.csv, which hold text only), given deterministic
base-36 ids, created_utc from 2022-01-01 increasing with runs of equal seconds (so
ties land on page boundaries), fake authors (``standin_user_NNN``) and link/parent
ids, in the shape of Arctic Shift's objects.

Faults, by request number (1-based, every request counted): ``faults[n] =
Fault("429", retry_after=7)``; "drop" (headers with the full Content-Length and
half the body, then the socket is closed); "reset" (closed with no answer); "cut"
(half the body with no Content-Length, so the JSON ends early); "500", "503";
"422" (the API's "Timeout. Maybe slow down a bit"); "400" (an error the client
cannot fix).  ``down_from = n``: every request from the n-th on gets 503.  Every
request is kept in ``requests``.
"""

from __future__ import annotations

import functools
import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import orjson
from conftest import CORPUS_POSTS, read_csv_rows

START = 1640995200  # 2022-01-01T00:00:00Z
SUBREDDIT_IDS = {"keto": "t5_2rske", "nutrition": "t5_2qhom"}
SOURCES = {  # subreddit -> (posts csv, comments csv)
    "keto": ("keto_subs.csv", "keto_comments.csv"),
    "nutrition": ("nutrition_subs.csv", "nutrition_comment.csv"),
}


def base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _times(rng: random.Random, n: int, start: int) -> list[int]:
    """Increasing created_utc with ties: a fifth of the items share the previous
    item's second, and now and then four to six in a row do (rarely over ten)."""
    out, t, run = [], start, 0
    for _ in range(n):
        if run > 0:
            run -= 1
        elif rng.random() < 0.01:
            run = rng.randint(3, 5)
        elif rng.random() >= 0.2:
            t += rng.randint(1, 240)
        out.append(t)
    return out


def _author(rng: random.Random) -> str:
    if rng.random() < 0.02:
        return "[deleted]"
    return f"standin_user_{rng.randint(0, 399):03d}"


@functools.cache
def corpus(subreddit: str) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """(submissions, comments) of one subreddit, oldest first, as Arctic Shift serves them."""
    posts_csv, comments_csv = SOURCES[subreddit]
    sub_id = SUBREDDIT_IDS[subreddit]
    salt = sum(map(ord, subreddit))
    rng = random.Random(f"posts-{subreddit}")
    rows = read_csv_rows(CORPUS_POSTS / posts_csv)
    times = _times(rng, len(rows), START + salt)
    posts = []
    for i, (row, created) in enumerate(zip(rows, times, strict=True)):
        pid = base36(int("rx0000", 36) + salt * 100_000 + i)
        author = _author(rng)
        posts.append({
            "author": author, "author_flair_text": None,
            "author_fullname": None if author == "[deleted]" else f"t2_{base36(7919 * (i + 1))}",
            "created_utc": created, "distinguished": None, "id": pid,
            "link_flair_text": None, "name": f"t3_{pid}", "num_comments": 0,
            "over_18": False, "permalink": f"/r/{subreddit}/comments/{pid}/",
            "retrieved_on": created + 36 * 3600, "score": rng.randint(0, 120),
            "selftext": row["selftext"], "spoiler": False, "subreddit": subreddit,
            "subreddit_id": sub_id, "title": row["title"],
            "url": f"https://www.reddit.com/r/{subreddit}/comments/{pid}/",
        })
    rng = random.Random(f"comments-{subreddit}")
    rows = read_csv_rows(CORPUS_POSTS / comments_csv)
    times = _times(rng, len(rows), START + salt + 60)
    comments = []
    for i, (row, created) in enumerate(zip(rows, times, strict=True)):
        cid = base36(int("hq00000", 36) + salt * 100_000 + i)
        post = posts[min(len(posts) - 1, i * len(posts) // len(rows))]
        parent = (f"t1_{comments[-1]['id']}" if comments and rng.random() < 0.4
                  else post["name"])
        post["num_comments"] += 1
        author = _author(rng)
        comments.append({
            "author": author, "author_flair_text": None,
            "author_fullname": None if author == "[deleted]" else f"t2_{base36(104729 + i)}",
            "body": row["body"], "controversiality": 0, "created_utc": created,
            "distinguished": None, "id": cid, "link_id": post["name"], "name": f"t1_{cid}",
            "parent_id": parent, "retrieved_on": created + 36 * 3600,
            "score": rng.randint(-3, 60), "subreddit": subreddit, "subreddit_id": sub_id,
        })
    return tuple(posts), tuple(comments)


@dataclass
class Fault:
    kind: str  # 429, drop, reset, cut, 500, 503, 422, 400
    retry_after: int | None = None


class BadParameter(Exception):
    pass


_OFFSET = re.compile(r"(\d+)\s*(years?|y|months?|m|weeks?|days?|d|hours?|h|minutes?|min|"
                     r"seconds?|sec|s)", re.IGNORECASE)
_OFFSET_SECONDS = {"y": 365 * 86400, "m": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600,
                   "min": 60, "s": 1}


def parse_date(value: str, now: float) -> float:
    """An API "Date" -> epoch milliseconds."""
    value = value.strip()
    if value.isdigit():
        number = int(value)
        return float(number) if len(value) > 11 else number * 1000.0
    match = _OFFSET.fullmatch(value)
    if match:
        unit = match.group(2).lower()
        key = ("min" if unit.startswith("min") else "m" if unit.startswith("m")
               else "s" if unit.startswith("s") else unit[0])
        return (now - int(match.group(1)) * _OFFSET_SECONDS[key]) * 1000.0
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadParameter(f"Invalid date: {value}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp() * 1000.0


def _name(value: str, prefix: str) -> str:
    value = value.strip().strip("/")
    return value[2:] if value.lower().startswith(prefix) else value


class ArcticStandIn:
    def __init__(self, *, page_cap: int | None = None, auto_size: int = 1000,
                 after_inclusive: bool = False, rate_limit: int = 10_000, window_s: float = 60.0,
                 clock: Callable[[], float] = time.time):
        self.page_cap = page_cap
        self.auto_size = auto_size
        self.after_inclusive = after_inclusive
        self.rate_limit = rate_limit
        self.window_s = window_s
        self.clock = clock
        self.faults: dict[int, Fault] = {}
        self.down_from: int | None = None
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._window_start: float | None = None
        self._window_used = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def log_message(self, *args):
                pass

            def do_GET(self):
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    # -------------------------------------------------------------- data

    def items(self, kind: str, subreddit: str = "keto") -> list[dict]:
        posts, comments = corpus(subreddit)
        return list(posts if kind == "submissions" else comments)

    def ids(self, kind: str, subreddit: str = "keto") -> list[str]:
        return [item["id"] for item in self.items(kind, subreddit)]

    def search(self, kind: str, params: dict) -> list[dict]:
        now = self.clock()
        limit = params.get("limit", "25")
        if limit == "auto":
            size = self.auto_size
        elif limit.isdigit() and 1 <= int(limit) <= 100:
            size = int(limit)
        else:
            raise BadParameter(f"Invalid limit: {limit} (1-100 or auto)")
        if self.page_cap:
            size = min(size, self.page_cap)
        sort = params.get("sort", "desc")
        if sort not in ("asc", "desc"):
            raise BadParameter(f"Invalid sort: {sort}")
        after = parse_date(params["after"], now) if "after" in params else None
        before = parse_date(params["before"], now) if "before" in params else None
        subreddit = _name(params["subreddit"], "r/").lower() if "subreddit" in params else None
        author = _name(params["author"], "u/") if "author" in params else None
        link_id = params.get("link_id")
        link_id = None if link_id is None else "t3_" + link_id.removeprefix("t3_")
        pool = []
        for name in SOURCES:
            if subreddit is None or subreddit == name:
                pool.extend(self.items(kind, name))
        out = []
        for item in pool:
            ms = item["created_utc"] * 1000
            if after is not None and (ms < after if self.after_inclusive else ms <= after):
                continue
            if before is not None and ms >= before:
                continue
            if author is not None and item["author"] != author:
                continue
            if link_id is not None and item.get("link_id") != link_id:
                continue
            out.append(item)
        out.sort(key=lambda it: (it["created_utc"], it["id"]), reverse=sort == "desc")
        out = out[:size]
        if "fields" in params:
            keep = [f.strip() for f in params["fields"].split(",") if f.strip()]
            out = [{k: it[k] for k in keep if k in it} for it in out]
        return out

    # -------------------------------------------------------------- HTTP

    def _rate(self) -> tuple[int, int, bool]:
        """(remaining, reset as epoch seconds, over the limit) for one more request."""
        now = self.clock()
        if self._window_start is None or now >= self._window_start + self.window_s:
            self._window_start, self._window_used = now, 0
        self._window_used += 1
        reset = math.ceil(self._window_start + self.window_s)
        return (max(0, self.rate_limit - self._window_used), reset,
                self._window_used > self.rate_limit)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        params = dict(parse_qsl(split.query, keep_blank_values=True))
        with self._lock:
            n = len(self.requests) + 1
            record = {"n": n, "path": split.path, "params": params, "at": self.clock(),
                      "status": None, "served": 0, "fault": None,
                      "user_agent": h.headers.get("User-Agent")}
            self.requests.append(record)
            remaining, reset, over = self._rate()
            fault = self.faults.get(n)
            if fault is None and self.down_from is not None and n >= self.down_from:
                fault = Fault("503")
        rate_headers = {"X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": str(reset)}
        if fault is None and over:
            fault = Fault("429", retry_after=max(1, math.ceil(reset - self.clock())))
        if fault is not None:
            record["fault"] = fault.kind
        kind = {"/api/posts/search": "submissions", "/api/comments/search": "comments"}.get(
            split.path)
        if fault is not None and fault.kind in ("429", "500", "503", "422", "400"):
            status = int(fault.kind)
            message = {429: "Too many requests", 500: "Internal server error",
                       503: "Service unavailable", 422: "Timeout. Maybe slow down a bit",
                       400: "Invalid request"}[status]
            headers = dict(rate_headers)
            if status == 429 and fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            record["status"] = status
            self._send(h, status, {"error": message}, headers)
            return
        if kind is None:
            record["status"] = 404
            self._send(h, 404, {"error": "Not found"}, rate_headers)
            return
        try:
            data = self.search(kind, params)
        except BadParameter as e:
            record["status"] = 400
            self._send(h, 400, {"error": str(e)}, rate_headers)
            return
        body = orjson.dumps({"data": data})
        if fault is not None and fault.kind == "reset":
            record["status"] = "reset"
            h.close_connection = True
            return
        if fault is not None and fault.kind in ("drop", "cut"):
            record["status"] = fault.kind
            h.send_response(200)
            h.send_header("Content-Type", "application/json; charset=utf-8")
            if fault.kind == "drop":
                h.send_header("Content-Length", str(len(body)))
            else:
                h.send_header("Connection", "close")
            for name, value in rate_headers.items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        record["status"] = 200
        record["served"] = len(data)
        self._send(h, 200, body, rate_headers)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body, headers: dict) -> None:
        if not isinstance(body, bytes):
            body = orjson.dumps(body)
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)

    # -------------------------------------------------------------- log helpers

    def searches(self, kind: str | None = None) -> list[dict]:
        paths = {"submissions": ("/api/posts/search",), "comments": ("/api/comments/search",),
                 None: ("/api/posts/search", "/api/comments/search")}[kind]
        return [r for r in self.requests if r["path"] in paths]
