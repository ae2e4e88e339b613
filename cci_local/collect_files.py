"""The files ``collect()`` keeps in ``dumps_dir``: their names (``dump_name``,
``DumpPaths``), the state file, reading back an interrupted run's .part (``Seen``,
``read_part``) and compressing it into the .zst.

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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import orjson
import zstandard

ZSTD_LEVEL = 9
# 128 MiB windows: what `zstd -d` accepts without --long (the reader takes up to 2 GiB).
ZSTD_WINDOW_LOG = 27


def dump_name(subreddit: str, kind: str) -> str:
    """The per-subreddit dump's file name: keto_submissions.zst, keto_comments.zst."""
    return f"{subreddit}_{kind}.zst"


@dataclass
class DumpPaths:
    """One kind's files: the .zst, the working .part, the state file and the .zst
    being written."""

    zst: Path
    part: Path
    state: Path
    tmp: Path

    @classmethod
    def of(cls, dumps_dir: Path, sub: str, kind: str) -> DumpPaths:
        stem = f"{sub}_{kind}"
        return cls(dumps_dir / dump_name(sub, kind), dumps_dir / f".{stem}.ndjson.part",
                   dumps_dir / f".{stem}.collect.json", dumps_dir / f".{stem}.zst.tmp")


def read_state(path: Path) -> dict | None:
    """The state file as a dict, or None when it is missing or unreadable."""
    try:
        state = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def write_state(path: Path, state: dict) -> None:
    """Replace the state file whole: written beside it, then renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(tmp, path)


def is_ours(paths: DumpPaths, state: dict | None) -> bool:
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


def created_utc(item) -> int | None:
    """An item's created_utc as an int; None when it is not an object with a string id
    and a readable created_utc."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        return None
    created = item.get("created_utc")
    if type(created) is int:
        return created
    try:
        return int(float(created))
    except (TypeError, ValueError):
        return None


class Seen:
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


def read_part(path: Path, keep: int | None = None) -> Seen:
    """What an interrupted run wrote; a last line cut off by a crash (or anything
    after the first unreadable line), and lines beyond ``keep``, are cut from the file."""
    seen = Seen()
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
            created = created_utc(item)
            if created is None:
                break
            seen.add(item["id"], created)
            seen.prune()
            good += len(line)
    if good < path.stat().st_size:
        with open(path, "r+b") as fh:
            fh.truncate(good)
    return seen


def decompress_to(zst: Path, part: Path) -> None:
    """The .zst back into a .part, to go on from an earlier collection."""
    dctx = zstandard.ZstdDecompressor(max_window_size=2**31)
    with open(zst, "rb") as src, open(part, "wb") as dst:
        dctx.copy_stream(src, dst)


def compress(part: Path, tmp: Path, zst: Path) -> None:
    """The .part as one zstd frame, renamed into place only once it is whole."""
    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL, window_log=ZSTD_WINDOW_LOG, enable_ldm=True)
    cctx = zstandard.ZstdCompressor(compression_params=params)
    with open(part, "rb") as src, open(tmp, "wb") as dst:
        cctx.copy_stream(src, dst, size=part.stat().st_size)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, zst)
