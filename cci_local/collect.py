"""Collect: a subreddit's posts and comments from the Arctic Shift API -> dump files.

``collect(subreddit, dumps_dir)`` pages through the API oldest first and leaves
``<subreddit>_submissions.zst`` and ``<subreddit>_comments.zst`` in ``dumps_dir``:
the names and format (NDJSON of the raw Reddit objects, zstd) of the per-subreddit
dumps cut from the Pushshift/Arctic Shift archives, so ``ingest`` reads a collected
subreddit and a downloaded one alike, and someone without network can put the
downloaded files in the same place instead.

The work is split four ways.  This module holds ``collect()``, which pages
through the API and resumes interrupted runs, and ``parse_since`` for its times;
cci_local/collect_api.py the API client (pacing, rate limits, retries) and what the
API does, from its documentation; cci_local/collect_files.py the files in
``dumps_dir`` (the working ones and the .zst) and how a re-run reads them;
cci_local/collect_report.py what ``collect()`` reports, and ``CollectError``.

Paging: whether ``after`` includes its own second is not documented.  The API's
own download tool (see cci_local/collect_api.py) asks for after = the last
created_utc and steps one second on when a page does not move.  Here a page asks
for after = last created_utc - 1 and skips the ids it already has, which loses
nothing under either reading (items sharing the boundary second stay in reach).
Only more than a page of items within two seconds stalls it (the API has no
cursor but time); it then steps on a second at a time, and items of that second
beyond the page can be missed.

Usernames are in the objects and so in the files (``ingest`` pseudonymises them as
it reads); nothing here logs an item.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import httpx
import orjson

from .collect_api import DEFAULT_URL, ENDPOINTS, MAX_PAGE, USER_AGENT, ApiClient, Unreachable
from .collect_files import (
    DumpPaths,
    Seen,
    compress,
    created_utc,
    decompress_to,
    dump_name,
    is_ours,
    read_part,
    read_state,
    write_state,
)
from .collect_report import CollectError, CollectReport, KindReport
from .store import normalise_community

__all__ = ["collect", "parse_since", "dump_name", "CollectError", "CollectReport", "KindReport",
           "DEFAULT_URL", "KINDS"]

KINDS = ("submissions", "comments")

_SUBREDDIT = re.compile(r"[A-Za-z0-9_]{2,21}")


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
    api = ApiClient(base_url, client, min_interval=min_interval, max_retries=max_retries,
               sleep=sleep or time.sleep, clock=clock or time.time)
    report = CollectReport(subreddit=sub, dumps_dir=str(dumps), base_url=api.base_url)
    started = time.monotonic()
    try:
        for kind in kinds:
            rep = KindReport(kind=kind, file=str(DumpPaths.of(dumps, sub, kind).zst))
            report.kinds.append(rep)
            t0 = time.monotonic()
            try:
                _collect_kind(api, sub, kind, dumps, rep, limit=limit, since=since,
                              until=until, page_size=page_size, progress=progress)
            except CollectError as e:
                part = DumpPaths.of(dumps, sub, kind).part
                if rep.items:
                    hint = (f"\n{rep.items:,} r/{sub} {kind} received so far are kept in "
                            f"{part}: run the same command again to resume")
                else:
                    hint = "\nrun the same command again later" if e.retryable else ""
                raise CollectError(f"{e}{hint}", report, e.retryable) from None
            finally:
                rep.seconds = time.monotonic() - t0
    except Unreachable as e:
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


def _collect_kind(api: ApiClient, sub: str, kind: str, dumps: Path, rep: KindReport, *,
                  limit: int | None, since: int | None, until: int | None,
                  page_size: int | str, progress) -> None:
    paths = DumpPaths.of(dumps, sub, kind)
    state = read_state(paths.state)
    have_zst = paths.zst.exists()
    zst_bytes = paths.zst.stat().st_size if have_zst else None
    if have_zst and not is_ours(paths, state):
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
        seen = read_part(paths.part, keep=limit)
        rep.status = "resumed"
    elif done_before and have_zst:  # met a smaller limit over this range: go on from there
        decompress_to(paths.zst, paths.part)
        seen = read_part(paths.part)
        rep.status = "extended"
    else:
        paths.part.write_bytes(b"")
        seen = Seen()
        rep.status = "collected"
        if have_zst:
            rep.note = "replaces an earlier collection of another range"
    write_state(paths.state, {
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
        compress(paths.part, paths.tmp, paths.zst)
        rep.written = True
        size = paths.zst.stat().st_size
    else:
        paths.zst.unlink(missing_ok=True)
        rep.status = "no items"
        size = None
    write_state(paths.state, {
        "subreddit": sub, "kind": kind, "api": api.base_url, "since": since, "until": until,
        "limit": limit, "complete": True, "items": seen.count, "exhausted": rep.exhausted,
        "first_utc": seen.first, "last_utc": seen.last, "zst_bytes": size,
        "finished_at": int(time.time())})
    paths.part.unlink(missing_ok=True)


def _page_through(api: ApiClient, sub: str, kind: str, out, seen: Seen, rep: KindReport, *,
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
            created = created_utc(item)
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
