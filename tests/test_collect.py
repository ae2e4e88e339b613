"""collect: the Arctic Shift collector against a stand-in of the API on loopback
(tests/arctic_standin.py; the real API cannot be reached from the build machines).

Time is a fake clock: the collector's waits advance it instead of sleeping, and the
stand-in's rate-limit windows run on it, so the tests assert what the collector
would wait without waiting.
"""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

import orjson
import pytest
import zstandard
from arctic_standin import ArcticStandIn, Fault, corpus
from conftest import zstd_long

from cci_local import __version__
from cci_local.collect import KINDS, CollectError, collect, parse_since
from cci_local.ingest import ingest
from cci_local.store import open_store


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def standin(clock):
    with ArcticStandIn(page_cap=25, clock=clock.time) as server:
        yield server


def run(standin, clock, dumps, subreddit="keto", **kwargs):
    return collect(subreddit, dumps, base_url=standin.url, sleep=clock.sleep, clock=clock.time,
                   **kwargs)


def dump_items(path: Path) -> list[dict]:
    """The dump's objects; it must be one whole zstd frame."""
    decompressor = zstandard.ZstdDecompressor(max_window_size=2**31).decompressobj()
    data = decompressor.decompress(path.read_bytes())
    assert decompressor.eof and not decompressor.unused_data
    return [orjson.loads(line) for line in data.splitlines()]


def dump_ids(path: Path) -> list[str]:
    return [item["id"] for item in dump_items(path)]


@pytest.mark.parametrize("after_inclusive", [False, True], ids=["after-exclusive",
                                                                "after-inclusive"])
def test_every_item_arrives_once_through_faults_and_ingest_reads_the_dumps(
        tmp_path, clock, after_inclusive):
    dumps = tmp_path / "dumps"
    with ArcticStandIn(page_cap=25, after_inclusive=after_inclusive,
                       clock=clock.time) as standin:
        standin.faults = {3: Fault("429", retry_after=7), 6: Fault("drop"), 9: Fault("reset"),
                          12: Fault("cut"), 15: Fault("503"), 18: Fault("422"),
                          200: Fault("drop")}
        report = collect("r/keto", dumps, base_url=standin.url, sleep=clock.sleep,
                         clock=clock.time)

    for kind in KINDS:
        items = dump_items(dumps / f"keto_{kind}.zst")
        assert [i["id"] for i in items] == standin.ids(kind)  # each once, oldest first
        assert items == standin.items(kind)  # the API's objects as they came
    assert sorted(p.name for p in dumps.iterdir() if not p.name.startswith(".")) == [
        "keto_comments.zst", "keto_submissions.zst"]
    assert not list(dumps.glob("*.part")) and not list(dumps.glob(".*.part"))
    assert report.files_written == [str(dumps / "keto_submissions.zst"),
                                    str(dumps / "keto_comments.zst")]
    assert [k.status for k in report.kinds] == ["collected", "collected"]
    assert [k.added for k in report.kinds] == [len(standin.ids(k)) for k in KINDS]
    assert sum(k.retries for k in report.kinds) == 7
    assert report.requests == len(standin.requests)

    searches = standin.searches()
    assert all(r["params"]["sort"] == "asc" and r["params"]["subreddit"] == "keto"
               for r in searches)
    assert all(r["user_agent"] == f"cci-local/{__version__} (research; +local)"
               for r in searches)
    for kind in KINDS:
        afters = [int(r["params"]["after"]) for r in standin.searches(kind)
                  if "after" in r["params"]]
        assert afters == sorted(afters)  # only ever forward
    # Polite: a second or more between requests; the 429 waited its Retry-After.
    times = [r["at"] for r in searches]
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 1.0 - 1e-6
    assert pytest.approx(7.0) in clock.sleeps and max(clock.sleeps) == pytest.approx(7.0)

    # The dumps ingest as they are; the hidden working files beside them are not read.
    db = open_store(tmp_path / "s.db")
    ingested = ingest(db, [str(dumps)])
    assert sorted(Path(s.path).name for s in ingested.sources) == [
        "keto_comments.zst", "keto_submissions.zst"]
    assert all(s.status == "ingested" and s.bad == 0 and s.added > 1000
               for s in ingested.sources)
    counts = dict(db.execute("SELECT kind, count(*) FROM documents WHERE community = 'keto'"
                             " GROUP BY kind").fetchall())
    assert counts["submission"] > 1000 and counts["comment"] > 1000
    assert db.execute("SELECT count(DISTINCT author) FROM documents").fetchone()[0] > 300
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.conn.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("s.db*"))
    assert b"standin_user_" not in stored  # authors are pseudonymised


def test_a_run_cut_short_by_the_api_resumes_without_asking_again(tmp_path, clock, standin):
    dumps = tmp_path / "dumps"
    standin.down_from = 40  # the API goes away about a quarter through the posts
    with pytest.raises(CollectError) as failure:
        run(standin, clock, dumps, max_retries=2)
    message = str(failure.value)
    assert "HTTP 503" in message and standin.url in message and "gave up after 3 tries" in message
    assert "run the same command again to resume" in message
    part = dumps / ".keto_submissions.ndjson.part"
    kept = [orjson.loads(line)["id"] for line in part.read_bytes().splitlines()]
    assert len(kept) > 500 and kept == standin.ids("submissions")[:len(kept)]
    assert failure.value.report.kinds[0].items == len(kept)
    assert not (dumps / "keto_submissions.zst").exists()

    done = {r["params"].get("after") for r in standin.searches("submissions")
            if r["status"] == 200}
    first_run = len(standin.requests)
    standin.down_from = None
    report = run(standin, clock, dumps)
    again = [r for r in standin.requests[first_run:] if r["path"] == "/api/posts/search"]
    created = {i["id"]: i["created_utc"] for i in standin.items("submissions")}
    assert int(again[0]["params"]["after"]) == created[kept[-1]] - 1
    assert not done & {r["params"].get("after") for r in again}  # no page asked for twice
    assert [k.status for k in report.kinds] == ["resumed", "collected"]
    assert report.kinds[0].added == len(standin.ids("submissions")) - len(kept)
    for kind in KINDS:
        assert dump_ids(dumps / f"keto_{kind}.zst") == standin.ids(kind)
    assert not part.exists()


def test_ctrl_c_and_a_line_cut_by_the_crash_resume_cleanly(tmp_path, clock, standin):
    dumps = tmp_path / "dumps"
    calls = []

    def progress(kind, n):
        calls.append((kind, n))
        if kind == "comments" and sum(m for k, m in calls if k == "comments") > 300:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(standin, clock, dumps, progress=progress)
    assert calls[0] == ("phase", ("r/keto submissions", None))
    assert ("phase", ("r/keto comments", None)) in calls
    assert sum(n for k, n in calls if k == "submissions") == len(standin.ids("submissions"))
    part = dumps / ".keto_comments.ndjson.part"
    with open(part, "ab") as fh:  # the crash came in the middle of a line
        fh.write(b'{"id": "zzzzzzz", "body": "cut of')

    before = len(standin.requests)
    calls.clear()
    report = run(standin, clock, dumps, progress=lambda k, n: calls.append((k, n)))
    assert [k.status for k in report.kinds] == ["already collected", "resumed"]
    assert all(r["path"] == "/api/comments/search" for r in standin.requests[before:])
    kept = report.kinds[1].items - report.kinds[1].added
    assert 300 < kept < 400
    assert calls[:2] == [("phase", ("r/keto comments", None)), ("comments", kept)]
    for kind in KINDS:
        assert dump_ids(dumps / f"keto_{kind}.zst") == standin.ids(kind)


def test_limit_since_until_and_re_runs(tmp_path, clock, standin):
    dumps = tmp_path / "dumps"
    posts = standin.items("submissions")
    since = posts[1000]["created_utc"]

    def expected(kind, n=None, until=None):
        ids = [i["id"] for i in standin.items(kind) if i["created_utc"] >= since
               and (until is None or i["created_utc"] < until)]
        return ids[:n] if n else ids

    report = run(standin, clock, dumps, limit=120, since=since)
    for kind in KINDS:
        assert dump_ids(dumps / f"keto_{kind}.zst") == expected(kind, 120)
    first = standin.searches("submissions")[0]["params"]
    assert int(first["after"]) == since - 1 and first["limit"] == "auto"
    assert standin.searches("submissions")[-1]["params"]["limit"] == "100"
    assert [k.items for k in report.kinds] == [120, 120]
    assert not any(k.exhausted for k in report.kinds)

    # The same request again, or a smaller one: nothing to ask.
    for limit in (120, 50):
        asked = len(standin.requests)
        report = run(standin, clock, dumps, limit=limit, since=since)
        assert len(standin.requests) == asked
        assert [k.status for k in report.kinds] == ["already collected"] * 2
        assert report.files_written == [] and report.requests == 0

    # A larger limit over the same range goes on from the dump.
    asked = len(standin.requests)
    report = run(standin, clock, dumps, kinds=("submissions",), limit=200, since=since)
    created = {i["id"]: i["created_utc"] for i in posts}
    more = [r for r in standin.requests[asked:] if r["path"] == "/api/posts/search"]
    assert int(more[0]["params"]["after"]) == created[expected("submissions", 120)[-1]] - 1
    assert report.kinds[0].status == "extended" and report.kinds[0].added == 80
    assert dump_ids(dumps / "keto_submissions.zst") == expected("submissions", 200)

    # Another range replaces the dump; `before` bounds the pages.
    until = posts[1300]["created_utc"]
    report = run(standin, clock, dumps, kinds=("submissions",), since=since, until=until)
    assert report.kinds[0].status == "collected" and report.kinds[0].exhausted
    assert "replaces" in report.kinds[0].note
    assert dump_ids(dumps / "keto_submissions.zst") == expected("submissions", until=until)
    assert all(r["params"]["before"] == str(until)
               for r in standin.searches("submissions")[-3:])
    asked = len(standin.requests)
    run(standin, clock, dumps, kinds=("submissions",), since=since, until=until, limit=5)
    assert len(standin.requests) == asked  # the whole range is there: any limit is met


def test_unreachable_api_names_the_dump_files_to_use_instead(tmp_path, clock):
    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dumps = tmp_path / "dumps"
    with pytest.raises(CollectError) as failure:
        collect("r/keto", dumps, base_url=f"http://127.0.0.1:{port}", sleep=clock.sleep,
                clock=clock.time)
    message = str(failure.value)
    assert "could not reach the Arctic Shift API" in message
    assert "keto_submissions.zst" in message and "keto_comments.zst" in message
    assert str(dumps) in message and "--corpus" in message
    assert clock.sleeps == []  # no waiting on an API that is not there
    assert not list(dumps.glob("*.zst"))

    # Downloaded dumps put there instead are used as they are: no request, no error.
    posts = zstd_long(b"".join(orjson.dumps(i) + b"\n" for i in corpus("keto")[0][:50]))
    (dumps / "keto_submissions.zst").write_bytes(posts)
    (dumps / "keto_comments.zst").write_bytes(posts)
    report = collect("keto", dumps, base_url=f"http://127.0.0.1:{port}", sleep=clock.sleep,
                     clock=clock.time)
    assert [k.status for k in report.kinds] == ["present", "present"]
    assert report.requests == 0 and report.files_written == []
    assert (dumps / "keto_submissions.zst").read_bytes() == posts


def test_rate_limit_headers_and_backoff(tmp_path, clock):
    with ArcticStandIn(page_cap=25, rate_limit=5, window_s=60, clock=clock.time) as standin:
        standin.faults = {2: Fault("503"), 3: Fault("500"), 4: Fault("422"),
                          10: Fault("429")}  # a 429 without Retry-After
        report = collect("keto", tmp_path / "d", kinds=("submissions",), limit=300,
                         base_url=standin.url, sleep=clock.sleep, clock=clock.time)
    assert report.kinds[0].items == 300 and report.kinds[0].retries == 4
    waits = clock.sleeps
    assert waits[1:4] == [1.0, 2.0, 4.0]  # exponential backoff for 5xx and "slow down"
    # The window's five requests spent: the collector waits for X-RateLimit-Reset
    # instead of running into 429s; the one 429 without Retry-After waits for it too.
    served_429 = [r for r in standin.requests if r["status"] == 429]
    assert [r["n"] for r in served_429] == [10]
    long_waits = [w for w in waits if w > 5]
    assert len(long_waits) >= 3 and all(w <= 60 for w in long_waits)


def test_400_is_not_retried(tmp_path, clock, standin):
    standin.faults = {1: Fault("400")}
    with pytest.raises(CollectError) as failure:
        run(standin, clock, tmp_path / "d")
    assert "HTTP 400: Invalid request" in str(failure.value)
    assert len(standin.requests) == 1


def test_a_second_holding_more_than_a_page_is_stepped_over(tmp_path, clock):
    """More items in one second than a page holds cannot all be reached (the API has no
    cursor but time): the collector must step past them rather than loop."""
    with ArcticStandIn(page_cap=5, clock=clock.time) as standin:
        report = run(standin, clock, tmp_path / "d", kinds=("submissions",), limit=600,
                     min_interval=0.0)
    ids = dump_ids(tmp_path / "d" / "keto_submissions.zst")
    assert len(ids) == len(set(ids)) == 600
    everything = standin.items("submissions")
    order = {i["id"]: n for n, i in enumerate(everything)}
    assert [order[i] for i in ids] == sorted(order[i] for i in ids)
    per_second = Counter(i["created_utc"] for i in everything)
    got = set(ids)
    missed = [i for i in everything[:order[ids[-1]]] if i["id"] not in got]
    assert all(per_second[i["created_utc"] - 1] + per_second[i["created_utc"]] > 5
               for i in missed)
    assert report.kinds[0].pages < 3 * 600 / 5


def test_subreddit_names_and_times(tmp_path, clock, standin):
    report = run(standin, clock, tmp_path / "d", subreddit="/r/keto/", kinds=("comments",),
                 limit=10)
    assert report.files_written == [str(tmp_path / "d" / "keto_comments.zst")]
    for bad in ("../etc", "r/", "two words", "x" * 22):
        with pytest.raises(ValueError, match="not a subreddit name"):
            run(standin, clock, tmp_path / "d", subreddit=bad)
    with pytest.raises(ValueError, match="unknown kind"):
        run(standin, clock, tmp_path / "d", kinds=("posts",))
    with pytest.raises(ValueError, match="since must be before until"):
        run(standin, clock, tmp_path / "d", since="2022-02-01", until="2022-01-01")

    now = 1_700_000_000
    assert parse_since("2022-01-01") == 1640995200
    assert parse_since("2022-01-01T12:00:00Z") == 1641038400
    assert parse_since("1640995200") == parse_since(1640995200) == 1640995200
    assert parse_since("1640995200000") == 1640995200  # milliseconds
    assert parse_since("30d", now=now) == now - 30 * 86400
    assert parse_since("12h", now=now) == now - 12 * 3600
    assert parse_since("1y", now=now) == now - 365 * 86400
    for bad in ("30m", "yesterday", "", "2022-13-01"):
        with pytest.raises(ValueError, match="cannot read"):
            parse_since(bad)


def test_crash_windows_and_an_empty_subreddit(tmp_path, clock, standin):
    dumps = tmp_path / "dumps"
    run(standin, clock, dumps, kinds=("submissions",), limit=60)
    zst = dumps / "keto_submissions.zst"
    state_file = dumps / ".keto_submissions.collect.json"
    part = dumps / ".keto_submissions.ndjson.part"
    state = orjson.loads(state_file.read_bytes())
    assert state["complete"] and state["items"] == 60 and state["zst_bytes"] == zst.stat().st_size

    # A crash after the .zst was renamed into place, before the state said so: the
    # .zst is recognised as made from the .part beside it, and the run completes.
    part.write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in dump_items(zst)))
    state_file.write_bytes(orjson.dumps({**state, "complete": False, "zst_bytes": None}))
    report = run(standin, clock, dumps, kinds=("submissions",), limit=60)
    assert report.kinds[0].status == "resumed" and report.kinds[0].added == 0
    assert dump_ids(zst) == standin.ids("submissions")[:60] and not part.exists()

    # An interrupted run's .part holds more than a re-run with a lower limit asks for.
    part.write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in dump_items(zst)))
    state_file.write_bytes(orjson.dumps({**state, "complete": False, "limit": None}))
    report = run(standin, clock, dumps, kinds=("submissions",), limit=40)
    assert report.kinds[0].status == "resumed" and report.kinds[0].items == 40
    assert dump_ids(zst) == standin.ids("submissions")[:40]

    # A subreddit with nothing in it: no file, and a re-run asks nothing.
    report = run(standin, clock, dumps, subreddit="emptysub")
    assert [k.status for k in report.kinds] == ["no items", "no items"]
    assert report.files_written == [] and not list(dumps.glob("emptysub*"))
    asked = len(standin.requests)
    report = run(standin, clock, dumps, subreddit="emptysub")
    assert [k.status for k in report.kinds] == ["already collected"] * 2
    assert len(standin.requests) == asked
