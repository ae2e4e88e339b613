"""Where `cci-local run` finds each community's documents, first that applies:

1. ``--corpus PATH...``: only the communities asked for are stored (files named for
   others are left unread, other communities' records in shared files skipped);
2. Arctic Shift's per-subreddit dumps (``<name>_submissions.zst``,
   ``<name>_comments.zst``, or its download tool's ``.jsonl``) in the dumps folder;
3. documents already in the store;
4. the public Arctic Shift API (``cci-local collect``), unless offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlite_utils

from .errors import WorkFailed

ENV_DUMPS = "CCI_LOCAL_DUMPS"
ENV_URL = "CCI_LOCAL_ARCTIC_SHIFT_URL"  # another Arctic Shift server (a mirror, a stand-in)
# The subreddit-split dumps' names, and those Arctic Shift's download tool saves.
DUMP_NAMES = ("{}_submissions.zst", "{}_comments.zst", "{}_posts.jsonl", "{}_comments.jsonl",
              "{}_posts.jsonl.zst", "{}_comments.jsonl.zst")


class NoData(WorkFailed):
    """A community has no documents anywhere run looks: the message says where to put them."""


def dumps_folder(db_path: Path, given: str | os.PathLike | None = None) -> Path:
    """--dumps, else $CCI_LOCAL_DUMPS, else dumps/ beside the store."""
    return Path(given or os.environ.get(ENV_DUMPS) or Path(db_path).resolve().parent / "dumps")


def find_dumps(folder: Path, community: str) -> list[Path]:
    """Arctic Shift's per-subreddit dumps of ``community`` in ``folder`` (any case)."""
    if not folder.is_dir():
        return []
    wanted = {pattern.format(community).lower() for pattern in DUMP_NAMES}
    return sorted(p for p in folder.iterdir() if p.name.lower() in wanted and p.is_file())


def find_data(db: sqlite_utils.Database, db_path: Path, names: list[str], options, *,
              progress=None, log=None) -> tuple[int, dict[str, int]]:
    """Bring each community's documents into the store, from the first source that has
    them (see the module docstring); return (documents added now, documents per
    community).  Raises NoData naming the files, folder and commands when a community
    has none, and ingest's BadInput for a corpus that cannot be read.  ``options``: a
    pipeline.RunOptions (corpus, dumps, limit, force, offline, collect_limit, since)."""
    from .ingest import ingest

    log = log or (lambda text: None)
    folder = dumps_folder(db_path, options.dumps)
    force = "ingest" in options.force
    added = 0
    if options.corpus:
        # Only the communities asked for: files named for others are left unread,
        # other communities' records in shared files are not stored.
        rep = ingest(db, list(options.corpus), limit=options.limit, force=force,
                     only=names)
        added += rep.total("added")
        _say_left(rep, log)
        _say_pii(rep, log)
    for name in names:
        files = find_dumps(folder, name)
        if not files and not options.corpus and not _documents(db, name):
            files = _collect(name, folder, options, progress, log)
        if files:
            rep = ingest(db, [str(p) for p in files], limit=options.limit, force=force)
            added += rep.total("added")
            _say_pii(rep, log)
    counts = {n: _documents(db, n) for n in names}
    missing = [n for n, c in counts.items() if not c]
    if missing:
        raise NoData(_no_data_message(missing, folder, options))
    return added, counts


def _say_left(rep, log) -> None:
    """One note for the corpus files left and the records of other communities."""
    left = [s for s in rep.sources if s.status == "left"]
    other = sum(s.dropped.get("other community", 0) for s in rep.sources)
    if left:
        names = ", ".join(s.name for s in left[:6]) + (" ..." if len(left) > 6 else "")
        log(f"note: left {len(left)} corpus file(s) named for other communities ({names})")
    if other:
        log(f"note: skipped {other:,} records of communities not asked for")
    for s in rep.empty:
        log(f"warning: {s.path}: {s.note}")


def _say_pii(rep, log) -> None:
    """How much personal data ingest replaced by placeholders (docs/method.md#pii-on-ingest)."""
    from .ingest.pii import describe_counts

    replaced = rep.pii()
    if replaced:
        log(f"note: scrubbed PII: {describe_counts(replaced)}")


def _documents(db, name: str) -> int:
    return db.execute("SELECT count(*) FROM documents WHERE community = ?", [name]).fetchone()[0]


def _collect(name: str, folder: Path, options, progress, log) -> list[Path]:
    """Fetch ``name``'s public posts and comments from the Arctic Shift API into
    ``folder``; [] when offline or unreachable (the caller says what to do)."""
    if options.offline:
        return []
    from .collect import DEFAULT_URL, CollectError, collect

    log(f"note: no documents of r/{name} here: fetching its public posts and comments from "
        f"the Arctic Shift API into {folder} (only the subreddit's name is sent; --offline "
        "stops this)")
    try:
        collect(name, folder, limit=options.collect_limit, since=options.since,
                base_url=os.environ.get(ENV_URL) or DEFAULT_URL, progress=progress)
    except (CollectError, ValueError) as e:
        log(f"note: {e}")
        return []
    return find_dumps(folder, name)


def _no_data_message(missing: list[str], folder: Path, options) -> str:
    lines = []
    for name in missing:
        if options.corpus:
            lines.append(f"the corpus ({', '.join(options.corpus)}) has no documents of r/{name}")
        else:
            lines.append(f"no documents of r/{name}: put Arctic Shift's dumps {name}_submissions"
                         f".zst and/or {name}_comments.zst (the subreddit-split dumps; "
                         f"{name}_posts.jsonl from its download tool does too) into {folder} "
                         "(or set --dumps / "
                         f"${ENV_DUMPS}), pass --corpus PATH (NDJSON, .zst, CSV or Reddit "
                         f"JSON), or run `cci-local collect r/{name}` where the internet can "
                         "be reached")
    return "; ".join(lines)
