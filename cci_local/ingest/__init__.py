"""Ingest: corpus files -> the ``documents`` table.

``ingest(db, paths)`` is the stage's entry point.  It streams every record,
cleans and pseudonymises it, and inserts documents in batches, one transaction
per batch, so a crash or Ctrl-C loses at most the batch in flight and a re-run
picks up where it stopped (documents are keyed by their Reddit id, or by a hash
of community + text when the export has no id, and inserted with OR IGNORE).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import sqlite_utils
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from ..errors import CciError
from ..store import ensure_community, normalise_community, pseudonym_key
from .clean import CleanOptions, Pseudonymiser
from .encoding import UnknownEncoding, codec
from .no_records import no_records as _no_records
from .readers import (
    FORMAT_ALIASES,
    FORMATS,
    BadSource,
    open_csv,
    open_text,
    read_csv,
    read_json,
    read_ndjson,
    sniff_format,
)
from .records import Converter, convert_chunk, convert_chunk_in_worker, init_worker, insert_sql
from .shapes import FieldMap, community_from_path

__all__ = ["ingest", "IngestReport", "SourceReport", "BadInput", "CleanOptions", "FORMATS",
           "FieldMap"]

BATCH = 5000  # documents per transaction
CHUNK_RECORDS = 1000  # records per conversion task
PARALLEL_MIN_BYTES = 8 << 20
INFLIGHT = 16  # chunks queued for the workers: keeps them busy while the store writes
MAX_STORED_ERRORS = 1000  # per source, in ingest_errors
SHOWN_ERRORS = 5


class BadInput(CciError):
    """Input the user must fix (exit code 2); what was stored before stays stored."""


@dataclass
class SourceReport:
    path: str  # as the user can open it: the argument, or the argument / relative path
    name: str = ""  # shorter, for tables: relative to the directory argument
    format: str = ""
    compression: str = ""
    layout: str = ""
    status: str = "ingested"  # or "already ingested", "skipped", "left", "no records"
    note: str = ""  # why it was skipped, left, or found nothing
    community: str = ""  # the community the file's name says, where records carry none
    named: int = 0  # documents that took that name (their records carry no community)
    encoding: str = ""  # how the file was decoded, where not plainly UTF-8
    undecodable: int = 0  # bytes the encoding could not decode: U+FFFD, records kept
    records: int = 0
    added: int = 0
    bad: int = 0
    dropped: Counter = field(default_factory=Counter)
    errors: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    pii: Counter = field(default_factory=Counter)  # personal data replaced, per entity

    @property
    def duplicates(self) -> int:
        kept = self.records - self.bad - sum(self.dropped.values())
        return kept - self.added

    def error_lines(self) -> list[str]:
        unit = "item " if self.format in ("json", "reddit-json") else ""
        return [f"{self.path}:{unit}{line}: {reason}" for line, reason in self.errors]


@dataclass
class IngestReport:
    sources: list[SourceReport] = field(default_factory=list)

    def total(self, attr: str) -> int:
        return sum(getattr(s, attr) for s in self.sources)

    def pii(self) -> Counter:
        """Personal data replaced by placeholders in every file read, per entity."""
        return sum((s.pii for s in self.sources), Counter())

    @property
    def empty(self) -> list[SourceReport]:
        """Files read that held no record at all (each has an error line in ``note``)."""
        return [s for s in self.sources if s.status == "no records"]


@dataclass
class _Plan:
    path: Path
    shown: str
    name: str
    format: str
    community: str | None = None  # what the file's or folder's name says
    encoding: str | None = None  # --encoding (else decided per file: encoding.py)


def _fingerprint(path: Path) -> tuple[str, int]:
    """Cheap identity of a file's content: its size, first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), 2)
            h.update(fh.read())
    return h.hexdigest()[:32], size


def _detect(path: Path, fmt: str, fields: FieldMap | None = None,
            community: str | None = None, encoding: str | None = None) -> str:
    """The file's format; BadSource when it cannot give records (a CSV with no text
    column, or with no community column, no --community and a name that says none)."""
    stream, raw, *_ = open_text(path, encoding)
    try:
        detected = sniff_format(stream) if fmt == "auto" else fmt
        if detected == "csv":
            _, layout, _ = open_csv(stream, fields)  # BadSource: no text column
            if not layout.has_community and community is None:
                raise BadSource(
                    f"no community: no subreddit column among {layout.header[:12]} and the "
                    "file's name does not say (<Name>_submissions.csv, <Name>_comments.csv, "
                    "r-<name>/); pass --community NAME or rename the file")
        return detected
    except (OSError, EOFError) as e:
        raise BadSource(f"cannot read: {e}") from e
    finally:
        raw.close()


def plan_sources(paths: list[str], fmt: str = "auto", *, fields: FieldMap | None = None,
                 community: str | None = None, only: frozenset[str] | None = None,
                 encoding: str | None = None) -> tuple[list[_Plan], list[SourceReport]]:
    """Expand directories and tell each file's format before anything is stored.

    A file named on the command line that is not a corpus is an error (BadInput);
    inside a directory it is skipped and reported.  With ``only`` (lower-cased
    community names), a file whose name says another community is left unread."""
    plans, skipped = [], []
    for arg in paths:
        path = Path(arg)
        if not path.exists():
            raise BadInput(f"{arg}: no such file or directory")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise BadInput(f"{arg}: the directory holds no files")
            found = [(file, str(file), str(file.relative_to(path)),
                      community_from_path(file, path)) for file in files]
        else:
            found = [(path, arg, arg, community_from_path(path))]
        for file, shown, name, hint in found:
            if only is not None and community is None and hint and hint.lower() not in only:
                skipped.append(SourceReport(shown, name, status="left", community=hint,
                                            note=f"its name says r/{hint}, not asked for"))
                continue
            try:
                plans.append(_Plan(file, shown, name, _detect(file, fmt, fields,
                                                              community or hint, encoding),
                                   hint, encoding))
            except BadSource as e:
                if not path.is_dir():
                    raise BadInput(f"{arg}: {e}") from e
                skipped.append(SourceReport(shown, name, status="skipped", note=str(e)))
    if not plans and not any(s.status == "left" for s in skipped):
        raise BadInput(f"no corpus file found in {', '.join(paths)} "
                       "(expected NDJSON/.zst/.gz dumps, CSV exports or JSON)"
                       + (f"; {skipped[0].path}: {skipped[0].note}" if skipped else ""))
    return plans, skipped


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        docs = task.fields.get("docs", 0)
        rate = docs / task.elapsed if task.elapsed else 0
        return Text(f"{docs:,} docs {rate:,.0f}/s", style="progress.data.speed")


def ingest(
    db: sqlite_utils.Database,
    paths: list[str],
    *,
    community: str | None = None,
    fmt: str = "auto",
    strict: bool = False,
    limit: int | None = None,
    force: bool = False,
    options: CleanOptions | None = None,
    workers: int | None = None,
    progress: bool = False,
    fields: FieldMap | None = None,
    only: list[str] | None = None,
    encoding: str | None = None,
) -> IngestReport:
    """Read every corpus file under ``paths`` into the store's documents table.

    ``workers``: processes that parse and clean records (default: one per core, at
    most 8); the main process reads, decompresses and writes to the store.  Files
    under PARALLEL_MIN_BYTES are done in-process: starting workers costs more.
    ``fields``: the source's own field names (``--text`` ...).  ``only``: keep these
    communities' records and leave unread the files whose names say another.
    ``encoding``: every file's text encoding (default: decided per file, encoding.py).

    A file that gives no record at all is reported with its shape and how to map
    it (``status == "no records"``); with ``strict`` it stops the ingest (BadInput)."""
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt != "auto" and fmt not in FORMATS:
        raise BadInput(f"unknown format {fmt!r}: use auto, {', '.join(FORMATS)}")
    wanted = normalise_community(community) if community else None
    keep = frozenset(normalise_community(c).lower() for c in only) if only else None
    if encoding:
        try:
            encoding = codec(encoding)
        except UnknownEncoding as e:
            raise BadInput(f"--encoding: {e}") from None
    plans, skipped = plan_sources(paths, fmt, fields=fields or None, community=wanted, only=keep,
                                  encoding=encoding)
    convert = Converter(Pseudonymiser(pseudonym_key(db)), options or CleanOptions(), wanted,
                        stop_at_bad=strict, fields=fields or None, only=keep)
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    report = IngestReport(sources=list(skipped))
    columns = (TextColumn("{task.description}"), BarColumn(bar_width=24), DownloadColumn(),
               TransferSpeedColumn(), _RateColumn(), TimeRemainingColumn())
    big = [p for p in plans if p.path.stat().st_size >= PARALLEL_MIN_BYTES]
    pool = _start_pool(workers, convert) if big and workers > 1 else None
    try:
        with Progress(*columns, disable=not progress, transient=False) as bar:
            for plan in plans:
                size = plan.path.stat().st_size
                task = bar.add_task(Path(plan.shown).name[:32], total=size, docs=0)
                source_report = SourceReport(plan.shown, plan.name, format=plan.format,
                                             community=plan.community or "")
                report.sources.append(source_report)
                _ingest_source(db, plan, convert, source_report, strict=strict, limit=limit,
                               force=force, bar=bar, task=task,
                               pool=pool if plan in big else None)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return report


def _start_pool(workers: int, convert: Converter) -> ProcessPoolExecutor:
    """Worker processes for conversion, all started now, before any other thread
    (the progress display's) exists: on Linux they are forked, which is fast and
    needs no importable __main__; elsewhere they are spawned."""
    method = "fork" if sys.platform == "linux" else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                               initializer=init_worker, initargs=(convert,))
    for future in [pool.submit(os.getpid) for _ in range(workers)]:
        future.result()
    return pool


def _chunks(triples, limit: int | None):
    """Group reader triples into conversion tasks (NDJSON comes in blocks already)."""
    chunk = []
    seen = 0
    for triple in triples:
        if limit is not None and seen >= limit:
            break
        seen += 1
        chunk.append(triple)
        if len(chunk) == CHUNK_RECORDS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _converted(chunks, convert: Converter, pool: ProcessPoolExecutor | None,
               fallback: str | None = None):
    """Convert chunks in order: in-process, or on the pool.

    With a pool, a feeder thread reads, decompresses and submits chunks while the
    caller writes to the store (SQLite releases the GIL while it works); the queue
    of chunks in flight is bounded, so memory stays flat however large the file."""
    if pool is None:
        for chunk in chunks:
            yield convert_chunk(convert, chunk, fallback)
        return
    inflight: queue.Queue = queue.Queue(maxsize=INFLIGHT)
    stop = threading.Event()

    def feed() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                inflight.put(pool.submit(convert_chunk_in_worker, chunk, fallback))
        except BaseException as e:  # handed to the consumer, raised there
            inflight.put(e)
            return
        inflight.put(None)

    feeder = threading.Thread(target=feed, name="cci-local-ingest-reader", daemon=True)
    feeder.start()
    try:
        while (item := inflight.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item.result()
    finally:
        stop.set()
        while feeder.is_alive() or not inflight.empty():  # unblock and cancel the rest
            try:
                item = inflight.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(item, Future):
                item.cancel()
        feeder.join()


def _ingest_source(db, plan: _Plan, convert: Converter, rep: SourceReport, *, strict: bool,
                   limit: int | None, force: bool, bar: Progress, task, pool) -> None:
    conn = db.conn
    started = time.monotonic()
    fingerprint, size = _fingerprint(plan.path)
    if convert.community or convert.only or convert.fields:
        # What was kept depends on these: another community (or map) reads the file again,
        # adding only what is missing.
        scope = sorted(convert.only or ()) + ([convert.community] if convert.community else [])
        mapped = repr(convert.fields) if convert.fields else ""
        fingerprint += "+" + hashlib.sha256(f"{scope}{mapped}".encode()).hexdigest()[:12]
    resolved = str(plan.path.resolve())
    row = conn.execute("SELECT id, complete FROM sources WHERE path = ? AND fingerprint = ?",
                       [resolved, fingerprint]).fetchone()
    if row and row[1] and not force:
        rep.status = "already ingested"
        bar.update(task, completed=size)
        return
    if row:
        source_id = row[0]
    else:
        source_id = conn.execute(
            "INSERT INTO sources (path, fingerprint, size, format, started_at) VALUES (?,?,?,?,?)",
            [resolved, fingerprint, size, plan.format, time.time()]).lastrowid
        conn.commit()

    stream, raw, rep.compression, chosen, recoded = open_text(plan.path, plan.encoding)
    rep.encoding = "" if chosen.utf8 and chosen.how == "default" else chosen.describe()
    canonical: set[str] = set()  # community names as the store spells them
    rename: dict[str, str] = {}  # other spellings ('Keto') -> the stored one ('keto')
    batch: list[tuple] = []
    sql = insert_sql(source_id)
    new_errors: list[tuple] = []
    stored_errors = conn.execute("SELECT count(*) FROM ingest_errors WHERE source_id = ?",
                                 [source_id]).fetchone()[0]
    added_at_last_flush = 0

    def flush(complete: bool = False) -> None:
        nonlocal stored_errors, added_at_last_flush
        if batch:
            rep.added += conn.executemany(sql, batch).rowcount
            batch.clear()
        if new_errors:
            room = max(0, MAX_STORED_ERRORS - stored_errors)
            conn.executemany("INSERT INTO ingest_errors (source_id, line, reason) VALUES (?,?,?)",
                             new_errors[:room])
            stored_errors += min(room, len(new_errors))
            new_errors.clear()
        conn.execute(
            "UPDATE sources SET records = ?, added = added + ?, bad = ?, complete = ?,"
            " finished_at = ?, pii = coalesce(?, pii) WHERE id = ?",
            [rep.records, rep.added - added_at_last_flush, rep.bad, int(complete),
             time.time() if complete else None,
             orjson.dumps(dict(rep.pii)).decode() if convert.options.pii else None,
             source_id])
        added_at_last_flush = rep.added
        conn.commit()
        bar.update(task, completed=size if raw.closed else raw.tell(), docs=rep.added)

    results = None
    info: dict = {}
    try:
        if plan.format == "ndjson":
            chunks = read_ndjson(stream, limit)
        elif plan.format == "csv":
            reader, layout, _ = open_csv(stream, convert.fields)
            rep.layout = layout.describe()
            chunks = _chunks(read_csv(reader, layout), limit)
        else:
            chunks = _chunks(read_json(stream, info), limit)
        fallback = None if convert.community else plan.community
        results = _converted(chunks, convert, pool, fallback)
        for rows, dropped, bad, n, replaced, named in results:
            rep.named += named
            spellings = {row[0] for row in rows}
            if not spellings <= canonical:  # a new community, or another spelling of one
                for spelling in spellings - canonical:
                    stored = ensure_community(db, spelling)
                    if stored == spelling:
                        canonical.add(spelling)
                    else:
                        rename[spelling] = stored
                rows = [(rename[r[0]], *r[1:]) if r[0] in rename else r for r in rows]
            batch.extend(rows)
            rep.records += n
            rep.dropped.update(dropped)
            if replaced:
                rep.pii.update(replaced)
            if bad:
                rep.bad += len(bad)
                new_errors.extend((source_id, line, error) for line, error in bad)
                rep.errors.extend(bad[: max(0, SHOWN_ERRORS - len(rep.errors))])
                if strict:  # the chunk stopped at its first malformed record
                    flush()
                    line, error = bad[0]
                    unit = "item " if plan.format == "json" else ""
                    raise BadInput(f"{plan.shown}:{unit}{line}: {error} (--strict: stopped here; "
                                   f"documents stored from this file: {rep.added:,})")
            if len(batch) >= BATCH:
                flush()
        rep.format = info.get("shape", rep.format)
        if rep.records == rep.bad and size:
            # Not marked complete: the next run reads it again and says so again.
            rep.status, rep.note = "no records", _no_records(plan, convert, rep,
                                                             info.get("document"))
            flush()
            if strict:
                raise BadInput(f"{plan.shown}: {rep.note} (--strict: stopped here)")
            return
        flush(complete=True)
    except BadSource as e:
        flush()
        raise BadInput(f"{plan.shown}: {e}") from e
    except BaseException:
        # Ctrl-C or a crash: keep what was converted so far; the source stays
        # incomplete and the next run re-reads it, adding only what is missing.
        flush()
        raise
    finally:
        if results is not None:
            results.close()  # stops the feeder thread before the file is closed
        rep.undecodable = recoded.replaced
        raw.close()
        rep.seconds = time.monotonic() - started
