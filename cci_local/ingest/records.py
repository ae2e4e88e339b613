"""One raw record (any reader) -> one document row, or the reason it is not one."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from datetime import datetime, timezone

from .clean import REMOVED_MARKERS, CleanOptions, Pseudonymiser, clean_text, is_bot, truncate_words
from .pii import PLACEHOLDERS, PiiScrubber
from .readers import LineBlock, parse_ndjson
from .shapes import FieldMap, ShapeError, expand, needs_expansion


class BadRecord(Exception):
    """The record is malformed: reported as file:line: reason."""


# Dropped on purpose (counted, not reported as errors).
DROP_REMOVED = "deleted or removed"
DROP_BOT = "bot author"
DROP_SHORT = "empty or too short"
DROP_OTHER = "other community"
# Words past --max-words that are scrubbed too: longer than any span pii.py finds.
PII_MARGIN_WORDS = 12

# One converted chunk: rows (community, id, kind, text, created_utc, score, link_id,
# parent_id, author, line), drop counts, malformed records (line, reason), records seen,
# personal data replaced in the rows' texts ({entity: count}).
# (rows, dropped per reason, bad (line, error), records, PII replaced per entity,
#  rows whose community came from the file's name)
ChunkResult = tuple[list[tuple], dict[str, int], list[tuple[int, str]], int, dict[str, int], int]


def insert_sql(source_id: int) -> str:
    """INSERT for rows as ``convert_chunk`` makes them; the source id is an integer
    literal, so rows go to the store as they come back from the workers."""
    return (
        "INSERT OR IGNORE INTO documents (community, id, kind, text, created_utc, score,"
        " link_id, parent_id, author, source_line, source_id)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {int(source_id)})"
    )


@dataclass
class Converter:
    """Holds what is fixed for one source: the store's pseudonymiser, options and community."""

    pseudonymise: Pseudonymiser
    options: CleanOptions
    community: str | None  # --community: fills in a missing subreddit, filters the others
    stop_at_bad: bool = False  # --strict: a chunk ends at its first malformed record
    fields: FieldMap | None = None  # --text/--created/...: the source's own field names
    only: frozenset[str] | None = None  # lower-cased communities to keep (run's filter)

    def __post_init__(self):
        self._authors: dict[str, str] = {}  # username -> pseudonym, or "" for a bot
        self._pii = PiiScrubber(self.options.pii_names) if self.options.pii else None
        self.replaced: dict[str, int] = {}  # personal data replaced in converted texts
        self.named = 0  # rows whose community is the file's name (they carry none)

    def take_replaced(self) -> dict[str, int]:
        """The personal data replaced since the last call (sent back with each chunk)."""
        replaced, self.replaced = self.replaced, {}
        return replaced

    def take_named(self) -> int:
        """Rows given the file's name as their community since the last call."""
        named, self.named = self.named, 0
        return named

    def __call__(self, record: dict, fallback: str | None = None) -> tuple | str:
        """Return (community, id, kind, text, created_utc, score, link_id, parent_id, author)
        or a drop reason; raise BadRecord for a malformed record.  ``fallback``: the
        community the file's name says, for records that carry none.

        Every field is checked before any drop decision, so a malformed record is
        reported even when it would have been dropped.  This runs once per record of
        multi-GB dumps: the common types take the fast path (``type(x) is ...``)."""
        get = record.get
        created = get("created_utc")
        if created is not None and type(created) is not int:
            created = _timestamp(created)
        score = get("score")
        if score is not None and type(score) is not int:
            score = _integer(score, "score")
        link_id = get("link_id")
        if link_id is not None and type(link_id) is not str:
            link_id = _reddit_id(link_id, "link_id")
        parent_id = get("parent_id")
        if parent_id is not None and type(parent_id) is not str:
            parent_id = _reddit_id(parent_id, "parent_id")
        author = get("author")
        if author is not None and type(author) is not str:
            raise BadRecord(f"field 'author': expected a username, got {_show(author)}")
        subreddit = get("subreddit")
        community = _community(subreddit, self.community, fallback)
        named = fallback is not None and self.community is None and not _names(subreddit)
        if community is not None and self.only is not None \
                and community.lower() not in self.only:
            community = None

        body = get("body")
        if body is not None:
            if type(body) is not str:
                raise BadRecord(f"field 'body': expected text, got {_show(body)}")
            kind, raw = "comment", body
            removed = len(body) < 24 and body.strip() in REMOVED_MARKERS
        else:
            title, selftext = get("title"), get("selftext")
            if title is None and selftext is None:
                raise BadRecord(
                    "no text: expected 'body' (comments) or 'title'/'selftext' (submissions)")
            title = _text_field(title, "title")
            selftext = _text_field(selftext, "selftext")
            kind = "submission"
            removed = ((len(selftext) < 24 and selftext.strip() in REMOVED_MARKERS)
                       or (len(title) < 24 and title.strip() in REMOVED_MARKERS)
                       or bool(get("removed_by_category")))
            raw = f"{title}\n{selftext}" if title and selftext else title or selftext

        if community is None:
            return DROP_OTHER
        if removed:
            return DROP_REMOVED
        pseudonym = None
        if author and author != "[deleted]":
            pseudonym = self._authors.get(author)
            if pseudonym is None:
                pseudonym = "" if is_bot(author, self.options.extra_bots) else \
                    self.pseudonymise(author)
                if len(self._authors) < 1_000_000:
                    self._authors[author] = pseudonym
            if not pseudonym:
                return DROP_BOT
        else:
            author = None
        text = clean_text(raw)
        text = self.pseudonymise.scrub(text, author)
        found = ()
        if self._pii is not None:
            # A few words past the cut, so that a number or address the cut would
            # split is still found whole; not the whole text: scrubbing is the slow part.
            if self.options.max_words:
                text = truncate_words(text, self.options.max_words + PII_MARGIN_WORDS)
            text, found = self._pii.replace(text)
        scrubbed = text
        text = truncate_words(text, self.options.max_words)
        if len(text.split(None, self.options.min_words)) < self.options.min_words:
            return DROP_SHORT
        if found:  # counted in the texts kept, up to the cut
            cut = scrubbed[len(text):]
            for entity in found:
                self.replaced[entity] = self.replaced.get(entity, 0) + 1
            if cut:
                for entity in set(found):
                    self.replaced[entity] -= cut.count(PLACEHOLDERS[entity])

        doc_id = get("name")
        if type(doc_id) is not str or doc_id[:3] not in ("t1_", "t3_"):
            doc_id = _document_id(get("id"), kind, community, text)
        if named:
            self.named += 1
        return (community, doc_id, kind, text, created, score, link_id, parent_id, pseudonym)


def convert_chunk(convert: Converter, chunk: LineBlock | list[tuple],
                  fallback: str | None = None) -> ChunkResult:
    """Convert a block of NDJSON lines or a list of reader triples; runs in-process
    or in a worker process.  An object not in Reddit's own shape (a mapped export,
    a post with its comment tree) becomes its records first: each counts, and they
    share the object's line."""
    if isinstance(chunk, LineBlock):
        chunk = _ndjson_triples(chunk)
    rows, dropped, bad = [], {}, []
    n = 0
    mapped = convert.fields
    for line, record, error in chunk:
        if error is None and (mapped or needs_expansion(record)):
            try:
                records = list(expand(record, mapped))
            except ShapeError as e:
                records, error = [None], str(e)
        else:
            records = [record]
        for record in records:
            n += 1
            if error is None:
                try:
                    result = convert(record, fallback)
                except BadRecord as e:
                    error = str(e)
            if error is not None:
                bad.append((line, error))
                error = None
                if convert.stop_at_bad:
                    return rows, dropped, bad, n, convert.take_replaced(), convert.take_named()
            elif isinstance(result, str):
                dropped[result] = dropped.get(result, 0) + 1
            else:
                rows.append((*result, line))
    return rows, dropped, bad, n, convert.take_replaced(), convert.take_named()


def _ndjson_triples(block: LineBlock):
    lines = block.data.split(b"\n")
    last = len(lines) - 1
    for i, raw in enumerate(lines):
        if raw.strip():
            record, error = parse_ndjson(raw, terminated=i < last)
            yield block.first_line + i, record, error


_worker_converter: Converter | None = None


def init_worker(convert: Converter) -> None:
    """Pool initializer: keep the converter; leave Ctrl-C to the main process."""
    import signal

    global _worker_converter
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Below the main process, which reads the file and writes the store: on a
    # machine with few cores the pipeline is only as fast as that one process.
    with contextlib.suppress(OSError, AttributeError):
        os.nice(5)
    _worker_converter = convert


def convert_chunk_in_worker(chunk: list[tuple], fallback: str | None = None) -> ChunkResult:
    return convert_chunk(_worker_converter, chunk, fallback)


def _text_field(value, key: str) -> str:
    if value is None:
        return ""
    if type(value) is str:
        return value
    raise BadRecord(f"field '{key}': expected text, got {_show(value)}")


def _names(value) -> bool:
    """Whether a record's 'subreddit' names a community ('r/' alone does not)."""
    return type(value) is str and bool(value[2:].strip() if value[:2].lower() == "r/"
                                       else value.strip())


def _community(value, wanted: str | None, fallback: str | None = None) -> str | None:
    if value is not None and type(value) is not str:
        raise BadRecord(f"field 'subreddit': expected a name, got {_show(value)}")
    if value and value[:2].lower() == "r/":
        value = value[2:]
    if not value or not value.strip():
        value = wanted or fallback
        if value is None:
            raise BadRecord("no community: the record has no 'subreddit' and the file's name "
                            "does not say (<Name>_submissions.csv, r-<name>/); pass "
                            "--community NAME")
        return value
    if wanted is not None and value.lower() != wanted.lower():
        return None
    return value.strip() if value[0] == " " or value[-1] == " " else value


def _timestamp(value) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRecord(f"field 'created_utc': expected a Unix timestamp, got {_show(value)}")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value))
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return int(parsed.timestamp())
    raise BadRecord(
        f"field 'created_utc': expected a Unix timestamp or ISO date, got {_show(value)}"
    )


def _integer(value, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value)
            if number.is_integer():
                return int(number)
        except ValueError:
            pass
    raise BadRecord(f"field '{name}': expected an integer, got {_show(value)}")


def _reddit_id(value, name: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    raise BadRecord(f"field '{name}': expected an id such as 't3_abc123', got {_show(value)}")


def _document_id(value, kind: str, community: str, text: str) -> str:
    if type(value) is int:
        value = str(value)
    if isinstance(value, str) and value.strip():
        value = value.strip()
        if value[:3] in ("t1_", "t3_"):
            return value
        return ("t1_" if kind == "comment" else "t3_") + value
    if value not in (None, ""):
        raise BadRecord(f"field 'id': expected a Reddit id, got {_show(value)}")
    # No id (many CSV exports): the same text in the same community is the same document.
    digest = hashlib.sha1(f"{community.lower()}\x00{kind}\x00{text}".encode()).hexdigest()
    return "h_" + digest[:20]


def _show(value) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
