"""Opening and reading corpus files: compression and format are told from the content.

Every reader yields ``(line, record, error)`` triples: ``line`` is where the
record starts in the (decompressed) file (for Reddit JSON listings it is the
item's ordinal), ``record`` a dict with canonical keys, or ``None`` with
``error`` saying what was wrong.  NDJSON is the exception: for speed on large
dumps it comes as blocks of raw lines, parsed during conversion.  Readers never
raise for a bad record; they raise ``BadSource`` only when the file as a whole
cannot be read as a corpus.
"""

from __future__ import annotations

import bz2
import csv
import io
import lzma
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import zstandard

from .shapes import ALIASES, FieldMap, MappingError, mapping_hint, match_columns

FORMATS = ("ndjson", "csv", "json")
FORMAT_ALIASES = {"reddit-json": "json"}  # the name before JSON documents of any shape
# Arctic Shift and Pushshift dumps are written with `zstd --long=31`.
ZSTD_MAX_WINDOW = 2**31
CHUNK = 1 << 16

Triple = tuple[int, "dict | None", "str | None"]


class BadSource(Exception):
    """The file cannot be read as a corpus (wrong format, no text column, ...)."""


class TruncatedInput(Exception):
    """A compressed stream ended before its end-of-stream marker."""


class _DecompressRaw(io.RawIOBase):
    """Streaming decompression that notices truncated input and reads concatenated
    frames/members.  Built on the libraries' one-shot decompressor objects (they all
    offer ``decompress``, ``eof`` and ``unused_data``) because python-zstandard's
    stream_reader silently stops at a cut, and gzip.GzipFile raises without giving
    back the data it decompressed before the cut."""

    def __init__(self, fh, new_decompressor, name: str):
        self._fh = fh
        self._new = new_decompressor
        self._name = name
        self._obj = new_decompressor()
        self._fed = False
        self._pending = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            self._fed = True
            out.append(self._obj.decompress(data))
            data = b""
            if self._obj.eof:  # a frame/member ended; another may follow
                data = self._obj.unused_data
                self._obj = self._new()
                self._fed = False
                if not data.strip(b"\x00"):  # trailing padding, not a new frame
                    data = b""
        return b"".join(out)

    def readinto(self, buffer) -> int:
        while not self._pending:
            if self._done:
                return 0
            chunk = self._fh.read(CHUNK)
            if not chunk:
                self._done = True
                if self._fed:
                    raise TruncatedInput(
                        f"{self._name} stream ends in the middle (truncated file?)")
                return 0
            try:
                self._pending = memoryview(self._decompress(chunk))
            except (zstandard.ZstdError, zlib.error, OSError, lzma.LZMAError, EOFError) as e:
                self._done = True
                raise TruncatedInput(f"{self._name} data is corrupt: {e}") from e
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


_ZSTD = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
_DECOMPRESSORS = {
    b"\x28\xb5\x2f\xfd": ("zstd", _ZSTD.decompressobj),
    b"\x1f\x8b": ("gzip", lambda: zlib.decompressobj(wbits=31)),
    b"BZh": ("bz2", bz2.BZ2Decompressor),
    b"\xfd7zXZ\x00": ("xz", lzma.LZMADecompressor),
}


def open_decompressed(path: Path) -> tuple[io.BufferedReader, object, str]:
    """Open ``path`` and undo its compression, told by magic bytes, not by extension.

    Returns (decompressed stream, raw file object for progress, compression name)."""
    raw = open(path, "rb", buffering=0)  # noqa: SIM115 - handed to the caller
    magic = raw.read(6)
    raw.seek(0)
    for prefix, (name, new) in _DECOMPRESSORS.items():
        if magic.startswith(prefix):
            return io.BufferedReader(_DecompressRaw(raw, new, name), 1 << 16), raw, name
    return io.BufferedReader(raw, 1 << 16), raw, "none"


def open_text(path: Path, encoding: str | None = None):
    """``open_decompressed``, then the text read as UTF-8 bytes whatever its encoding
    (encoding.py).  Returns (stream, raw file, compression, Encoding, the Recoded
    stream, whose ``replaced`` counts the bytes the encoding could not decode)."""
    from .encoding import Recoded, detect, head_of

    stream, raw, compression = open_decompressed(path)
    try:
        chosen = detect(head_of(path, stream, compression), encoding)
    except BaseException:
        raw.close()
        raise
    recoded = Recoded(stream, chosen.name)
    return io.BufferedReader(recoded, 1 << 16), raw, compression, chosen, recoded


def sniff_format(stream: io.BufferedReader) -> str:
    """Tell NDJSON, Reddit JSON listings and CSV apart from the first bytes."""
    try:
        head = stream.peek(1 << 16)[: 1 << 16]
    except (TruncatedInput, EOFError, OSError) as e:
        raise BadSource(f"cannot read the start of the file: {e}") from e
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text:
        raise BadSource("the file is empty")
    if b"\x00" in head:
        raise BadSource("this is a binary file, not a corpus (expected NDJSON, CSV or Reddit JSON)")
    if text[:1] == b"[":
        return "json"
    if text[:1] == b"{":
        first_line = text.split(b"\n", 1)[0]
        try:
            first = orjson.loads(first_line)
        except orjson.JSONDecodeError:
            return "json"  # one JSON document spread over lines
        if isinstance(first, dict) and (first.get("kind") == "Listing" or "data" in first):
            return "json"
        return "ndjson"
    return "csv"


# --------------------------------------------------------------------------- NDJSON


@dataclass
class LineBlock:
    """Whole NDJSON lines, undecoded: one unit of conversion work.  Shipping a block
    of bytes to a worker costs far less than shipping a Python object per line."""

    first_line: int
    data: bytes


NDJSON_BLOCK = 1 << 20


def read_ndjson(stream: io.BufferedReader, limit: int | None = None,
                block_size: int | None = None) -> Iterator[LineBlock | list[Triple]]:
    """Cut the stream into blocks of whole lines (at most ``limit`` lines).  A read
    error (truncated or corrupt compressed data) ends the file with a one-triple
    list naming the line where reading stopped."""
    block_size = block_size or NDJSON_BLOCK
    line_no, left, buf, need = 1, limit, b"", block_size
    eof, error = False, None
    while not eof:
        parts, size = [buf], len(buf)
        try:
            while size < need:
                data = stream.read1(block_size)  # one read: data before a failure is kept
                if not data:
                    eof = True
                    break
                parts.append(data)
                size += len(data)
        except (TruncatedInput, EOFError, OSError, lzma.LZMAError) as e:
            error, eof = e, True
        buf = b"".join(parts)
        cut = len(buf) if eof else buf.rfind(b"\n") + 1
        if cut == 0:  # a single line longer than a block: read on
            need = len(buf) + block_size
            continue
        block, buf, need = buf[:cut], buf[cut:], block_size
        lines = block.count(b"\n") + (not block.endswith(b"\n") and len(block) > 0)
        if left is not None and lines >= left:
            end = -1
            for _ in range(left):
                end = block.find(b"\n", end + 1)
                if end < 0:
                    break
            block = block if end < 0 else block[: end + 1]
            lines, eof, error = left, True, None
        if block:
            yield LineBlock(line_no, block)
        line_no += lines
        if left is not None:
            left -= lines
        if error is not None:
            yield [(line_no, None, _truncation_message(error))]


def parse_ndjson(line: bytes, terminated: bool = True) -> tuple[dict | None, str | None]:
    """(record, None) or (None, what is wrong with the line)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        return None, _json_error(str(e), terminated)
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {_json_type(record)}"
    return record, None


def _json_error(message: str, terminated: bool) -> str:
    if "UTF-8" in message:
        return "invalid UTF-8 in record"
    if not terminated and "unexpected end" in message:
        return "record cut off at end of file (truncated file?)"
    return f"invalid JSON: {message}"


def _truncation_message(e: Exception) -> str:
    if isinstance(e, TruncatedInput):
        return str(e)
    if isinstance(e, EOFError):
        return "compressed stream ends before its end marker (truncated file?)"
    return f"compressed data is corrupt: {e}"


def _json_type(value) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- CSV

@dataclass
class CsvLayout:
    delimiter: str
    columns: dict[str, int] = field(default_factory=dict)  # canonical -> column index
    header: list[str] = field(default_factory=list)
    mapped: FieldMap | None = None  # records come raw ({header: value}) for the map

    def describe(self) -> str:
        if self.mapped:
            return self.mapped.describe()

        def name(key):
            return self.header[self.columns[key]]

        if "body" in self.columns:
            text = f"text from '{name('body')}'"
        elif "selftext" in self.columns:
            text = f"text from '{name('title')}' + '{name('selftext')}'"
        else:
            text = f"text from '{name('title')}'"
        community = (f"community from '{name('subreddit')}'" if "subreddit" in self.columns
                     else "no community column")
        return f"{text}, {community}"

    @property
    def has_community(self) -> bool:
        return "subreddit" in self.columns or bool(self.mapped and self.mapped.community)


def csv_layout(header: list[str], delimiter: str, mapped: FieldMap | None = None) -> CsvLayout:
    clean = [h.strip().lstrip("\ufeff") for h in header]
    if mapped:
        try:
            mapped.check_columns(clean)
        except MappingError as e:
            raise BadSource(str(e)) from e
        return CsvLayout(delimiter, {h: i for i, h in enumerate(clean)}, clean, mapped)
    layout = CsvLayout(delimiter=delimiter, header=clean, columns=match_columns(clean))
    if not ({"body", "title", "selftext"} & layout.columns.keys()):
        expected = ", ".join(ALIASES["body"][:5] + ALIASES["title"][:1] + ALIASES["selftext"][:1])
        raise BadSource(
            f"no records found: no text column among {layout.header[:12]}; expected one of: "
            f"{expected}; {mapping_hint('csv')}")
    return layout


def _detect_delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in (",", "\t", ";", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def open_csv(stream: io.BufferedReader, mapped: FieldMap | None = None
             ) -> tuple[Iterator[list[str]], CsvLayout, object]:
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    first = text.readline()
    delimiter = _detect_delimiter(first)
    header = next(csv.reader([first], delimiter=delimiter), [])
    reader = csv.reader(text, delimiter=delimiter)
    return reader, csv_layout(header, delimiter, mapped), text


_SURROGATE = re.compile("[\udc80-\udcff]")


def read_csv(reader, layout: CsvLayout) -> Iterator[Triple]:
    columns = layout.columns.items()
    width = len(layout.header)
    line_no = 1  # the header
    try:
        for row in reader:
            start = line_no + 1
            line_no = reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                yield start, None, f"expected {width} columns, found {len(row)}"
                continue
            record = {}
            for key, index in columns:
                value = row[index]
                if _SURROGATE.search(value):
                    record = None
                    break
                record[key] = value
            if record is None:
                yield start, None, "invalid UTF-8 in record"
                continue
            yield start, record, None
    except (TruncatedInput, EOFError, OSError, lzma.LZMAError) as e:
        yield line_no + 1, None, _truncation_message(e)
    except csv.Error as e:
        yield line_no + 1, None, f"unreadable CSV from here on: {e}"


# --------------------------------------------------------------------------- JSON documents


def read_json(stream: io.BufferedReader, info: dict | None = None) -> Iterator[Triple]:
    """A whole JSON document: Reddit's own listings (``/comments/ID.json``: [post
    listing, comment listing] with nested ``replies``), subreddit listings,
    ``{"data": [...]}`` API pages, or any objects, one or an array of them (a
    scraper's post with its comment tree: the converter flattens it).  ``info``
    gets ``shape`` ("reddit-json" for listings, else "json") and ``document``."""
    try:
        document = orjson.loads(stream.read())
    except orjson.JSONDecodeError as e:
        raise BadSource(f"not valid JSON: {_json_error(str(e), True)}") from e
    except (TruncatedInput, EOFError, OSError, lzma.LZMAError) as e:
        raise BadSource(_truncation_message(e)) from e
    listing = [False]
    if info is not None:
        info["document"] = document
    ordinal = 0
    for kind, item in _walk(document, listing):
        ordinal += 1
        if not isinstance(item, dict):
            yield ordinal, None, f"expected a JSON object for a {kind}, got {_json_type(item)}"
            continue
        yield ordinal, item, None
    if info is not None:
        info["shape"] = "reddit-json" if listing[0] else "json"


def _walk(node, listing: list) -> Iterator[tuple[str, object]]:
    if isinstance(node, list):
        for child in node:
            if isinstance(child, (dict, list)):
                yield from _walk(child, listing)
            else:
                yield "record", child
        return
    if not isinstance(node, dict):
        return
    kind = node.get("kind")
    data = node.get("data")
    if kind == "Listing" and isinstance(data, dict):
        listing[0] = True
        yield from _walk(data.get("children") or [], listing)
    elif kind in ("t1", "t3"):
        listing[0] = True
        yield ("comment" if kind == "t1" else "submission"), data
        if isinstance(data, dict) and isinstance(data.get("replies"), dict):
            yield from _walk(data["replies"], listing)
    elif kind == "more":
        return  # "load more comments": ids only, no text
    elif kind is None and isinstance(data, list):  # Arctic Shift API page
        for item in data:
            yield "record", item
    else:  # any other object is a record (a post with its comment tree, ...)
        yield "record", node
