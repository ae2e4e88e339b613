"""Which text encoding a corpus file is in, and reading it as UTF-8 whatever it is.

Spreadsheets save CSV in the system's legacy code page (Excel on Windows: Windows-
1252 in Western Europe), or as UTF-16 ("Unicode text"); scrapers sometimes write
JSON the same way.  Read as UTF-8, every record with an accent or a dash is lost.
So before a file is read its encoding is decided, from its first bytes:

1. ``--encoding NAME`` when given;
2. a byte-order mark: UTF-8, UTF-16 or UTF-32;
3. UTF-8 when the start decodes as UTF-8, or when it has valid multi-byte characters
   and at most 4 invalid bytes for each (a UTF-8 file with a few stray bytes);
4. UTF-16 without a mark, told by its zero bytes;
5. otherwise what charset-normalizer detects, the commonest of its near-equal
   candidates (a few accents fit Windows-1252 and Mac Central European alike).

The readers then see UTF-8 bytes (``Recoded``): a byte that is not valid in the
chosen encoding becomes U+FFFD and is counted (``replaced``), and its record is
kept; nothing is dropped for its encoding.
"""

from __future__ import annotations

import codecs
import io
import re
import threading
from dataclasses import dataclass
from pathlib import Path

HEAD = 4 << 20  # bytes of an uncompressed file read to decide its encoding
CHUNK = 1 << 16
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))
_SHOWN = {"utf_8": "UTF-8", "utf-8": "UTF-8", "utf-8-sig": "UTF-8 (with a BOM)",
          "utf-16": "UTF-16", "utf-16-le": "UTF-16 LE", "utf-16-be": "UTF-16 BE",
          "utf-32": "UTF-32", "cp1252": "Windows-1252", "cp1250": "Windows-1250",
          "cp1251": "Windows-1251", "latin-1": "ISO-8859-1", "iso8859-15": "ISO-8859-15",
          "mac-roman": "Mac Roman", "cp437": "IBM 437", "cp850": "IBM 850"}
_ESCAPED = re.compile("[\udc80-\udcff]")
_LOCAL = threading.local()


def _replace_and_count(error: UnicodeDecodeError):
    _LOCAL.count = getattr(_LOCAL, "count", 0) + (error.end - error.start)
    return "\ufffd", error.end


codecs.register_error("cci-local-replace", _replace_and_count)


class UnknownEncoding(ValueError):
    """--encoding names no codec Python has."""


@dataclass(frozen=True)
class Encoding:
    name: str  # Python's codec name
    how: str  # "given" (--encoding), "BOM", "default" (UTF-8), "detected"

    @property
    def utf8(self) -> bool:
        return self.name in ("utf-8", "utf_8")

    def describe(self) -> str:
        shown = _SHOWN.get(self.name, self.name)
        return {"given": f"{shown} (--encoding)", "BOM": f"{shown} (byte-order mark)",
                "detected": f"{shown} (detected; --encoding NAME to choose another)"
                }.get(self.how, shown)


def codec(name: str) -> str:
    """Python's name for an encoding the user gave (UnknownEncoding if none)."""
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise UnknownEncoding(f"unknown encoding {name!r}: try utf-8, cp1252 (Excel on "
                              "Windows), utf-16, latin-1") from None


def _mostly_utf8(head: bytes) -> bool:
    text = codecs.getincrementaldecoder("utf-8")("surrogateescape").decode(head, final=False)
    bad = len(_ESCAPED.findall(text))
    if not bad:
        return True
    # Legacy text almost never forms a valid multi-byte UTF-8 character by chance (an
    # accent byte is followed by a letter, not by a continuation byte), so a few valid
    # ones outweigh several stray bytes.
    good = sum(1 for ch in text if ord(ch) > 127) - bad  # valid multi-byte characters
    return good > 0 and 4 * good >= bad


def _utf16_without_bom(head: bytes) -> str | None:
    sample = head[: 1 << 16]
    if len(sample) < 8:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    half = len(sample) / 2
    if odd > 0.3 * half and even < 0.05 * half:
        return "utf-16-le"
    if even > 0.3 * half and odd < 0.05 * half:
        return "utf-16-be"
    return None


def detect(head: bytes, given: str | None = None) -> Encoding:
    """The encoding of a file that starts with ``head`` (see the module's docstring)."""
    if given:
        return Encoding(codec(given), "given")
    for bom, name in _BOMS:
        if head.startswith(bom):
            return Encoding(name, "BOM")
    if _mostly_utf8(head):
        return Encoding("utf-8", "default")
    wide = _utf16_without_bom(head)
    if wide:
        return Encoding(wide, "detected")
    return Encoding(codec(_legacy(head[: 1 << 20])), "detected")


# Legacy encodings by how common they are: among detections that fit the bytes about
# equally well, the commoner is taken.  A few accents cannot tell Windows-1252 from Mac
# Central European by themselves; Windows-1252 is what Excel writes in the West.
_PREFERRED = ("cp1252", "iso8859_15", "latin_1", "cp1250", "cp1251", "cp1253", "cp1254",
              "cp1257", "cp1255", "cp1256", "koi8_r", "shift_jis", "cp932", "gb18030",
              "big5", "euc_kr", "euc_jp", "mac_roman", "cp850", "cp437")


def _legacy(sample: bytes) -> str:
    from charset_normalizer import from_bytes

    matches = list(from_bytes(sample))
    if not matches:
        return "cp1252"
    close = [m for m in matches if m.chaos <= matches[0].chaos + 0.02]
    for name in _PREFERRED:
        for match in close:
            if name in match.could_be_from_charset:
                return name
    return matches[0].encoding


class Recoded(io.RawIOBase):
    """A byte stream in ``encoding``, read as UTF-8 bytes.  What the encoding cannot
    decode becomes U+FFFD, counted in ``replaced`` (bytes)."""

    def __init__(self, stream, encoding: str):
        self._stream = stream
        self._decoder = codecs.getincrementaldecoder(encoding)("cci-local-replace")
        self._pending = memoryview(b"")
        self._eof = False
        self.replaced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            if self._eof:
                return 0
            chunk = self._stream.read1(CHUNK) if hasattr(self._stream, "read1") \
                else self._stream.read(CHUNK)
            self._eof = not chunk
            _LOCAL.count = 0
            text = self._decoder.decode(chunk, final=self._eof)
            self.replaced += _LOCAL.count
            self._pending = memoryview(text.encode("utf-8", "surrogatepass"))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def head_of(path: Path, stream: io.BufferedReader, compression: str) -> bytes:
    """The bytes the encoding is decided from: the first 4 MiB of an uncompressed
    file, else what the decompressed stream has buffered (64 KiB)."""
    if compression == "none":
        with open(path, "rb") as fh:
            return fh.read(HEAD)
    try:
        return stream.peek(CHUNK)[:CHUNK]
    except Exception:  # truncated or corrupt: the reader says what is wrong, and where
        return b""
