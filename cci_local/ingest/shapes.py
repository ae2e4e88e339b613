"""Records in shapes other than Reddit's own.

Reddit's dumps and listings give ``body`` (comments) or ``title``/``selftext``
(submissions): those take the converter's fast path untouched.  Everything else
comes through here first:

- a **field map** the user gives (``--text postText --text title --created date``,
  or the same in a TOML file), for any CSV or JSON export;
- objects whose fields go by other common names (``postText``, ``comment``,
  ``date``, ``username``...), recognised by the same table as CSV headers;
- **posts with a nested comment tree** (scrapers' one-post-per-file JSON: a post
  with ``comments``, each comment with ``replies`` or ``children``, any depth),
  flattened into the post and its comments, each comment keeping its thread
  (``link_id``) and parent (``parent_id``);
- the **community named by a file or folder** (``<Name>_submissions.csv``,
  ``<Name>_comments.zst``, ``r-<name>/``, ``r_<name>``) for records that carry none.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import CciError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Canonical field -> names seen in the wild (lower case), best first: CSV headers and
# JSON keys alike.
ALIASES: dict[str, tuple[str, ...]] = {
    "body": ("body", "comment_body", "text", "content", "comment", "message", "post_text",
             "posttext", "full_text", "clean_text", "post"),
    "title": ("title", "post_title", "submission_title"),
    "selftext": ("selftext", "self_text", "post_body", "submission_text"),
    "subreddit": ("subreddit", "subreddit_name", "community", "sub", "group"),
    "id": ("id", "comment_id", "post_id", "submission_id", "name"),
    "created_utc": ("created_utc", "created", "timestamp", "created_at", "date", "time"),
    "author": ("author", "username", "user", "author_name", "user_name"),
    "score": ("score", "ups", "upvotes"),
    "link_id": ("link_id", "submission_id", "thread_id"),
    "parent_id": ("parent_id", "parent"),
}
CHILDREN = ("comments", "replies", "children")  # keys that hold nested comments
EXPECTED = ("objects with a text field (body, text, comment, postText, or title/selftext), "
            "Reddit listings, or posts with a nested 'comments' list")


def match_columns(names: list[str]) -> dict[str, int]:
    """Canonical field -> index into ``names`` (headers or keys), by the alias table.
    A submissions export that calls its self text 'text' or 'body' gets it as selftext."""
    low = [n.strip().lower().lstrip("\ufeff") for n in names]
    columns: dict[str, int] = {}
    taken: set[int] = set()
    for key, candidates in ALIASES.items():
        for candidate in candidates:
            if candidate in low and low.index(candidate) not in taken:
                columns[key] = low.index(candidate)
                taken.add(low.index(candidate))
                break
    if "title" in columns and "body" in columns and "selftext" not in columns:
        columns["selftext"] = columns.pop("body")
    return columns


class MappingError(CciError, ValueError):
    """The field map is unusable (a mapped column is missing, a bad mapping file)."""


class ShapeError(ValueError):
    """One object holds no usable record (reported as file:line: reason)."""


@dataclass(frozen=True)
class FieldMap:
    """Which of the source's fields hold what: ``--text`` may name several (joined
    by a blank line, in order); the rest name one field each."""

    text: tuple[str, ...] = ()
    title: str | None = None
    created: str | None = None
    author: str | None = None
    id: str | None = None
    score: str | None = None
    community: str | None = None  # a field holding the community's name
    parent: str | None = None
    thread: str | None = None

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def names(self) -> list[str]:
        out = list(self.text)
        out += [v for f in fields(self) if f.name != "text" and (v := getattr(self, f.name))]
        return out

    def describe(self) -> str:
        parts = [f"text from {' + '.join(repr(t) for t in self.text)}"] if self.text else []
        parts += [f"{f.name} from {v!r}" for f in fields(self)
                  if f.name != "text" and (v := getattr(self, f.name))]
        return "mapped: " + ", ".join(parts)

    def check_columns(self, header: list[str]) -> None:
        missing = [n for n in self.names() if n not in header]
        if missing:
            raise MappingError(f"no column {', '.join(repr(m) for m in missing)} among "
                               f"{header[:20]}: check --text/--title/... (names are "
                               "case-sensitive)")

    def apply(self, record: dict) -> dict:
        """The record with canonical keys, by this map (ShapeError: no text in it)."""
        get = record.get
        texts = []
        for name in self.text:
            value = get(name)
            if value in (None, ""):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                raise ShapeError(f"field {name!r}: expected text, got {type(value).__name__}")
            texts.append(value)
        title = get(self.title) if self.title else None
        if title is not None and not isinstance(title, str):
            raise ShapeError(f"field {self.title!r}: expected text, got {type(title).__name__}")
        if not texts and not title:
            raise ShapeError(f"none of the mapped fields {', '.join(self.text)} holds text"
                             if self.text else f"the mapped title field {self.title!r} is empty")
        out: dict = {}
        parent = get(self.parent) if self.parent else None
        if title is not None or parent in (None, ""):
            out["title"], out["selftext"] = title or "", "\n\n".join(texts)
        else:
            out["body"] = "\n\n".join(texts)
        for key, source in (("created_utc", self.created), ("author", self.author),
                            ("id", self.id), ("score", self.score),
                            ("subreddit", self.community), ("link_id", self.thread)):
            if source is not None:
                out[key] = get(source)
        if parent not in (None, ""):
            out["parent_id"] = parent
        return out

    @classmethod
    def from_file(cls, path: str | Path) -> FieldMap:
        """A TOML mapping file: ``text = ["postText", "title"]``, ``created = "date"``..."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise MappingError(f"{path}: {e}") from e
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MappingError(f"{path}: unknown keys {unknown}; expected {sorted(known)}")
        text = data.get("text", ())
        if isinstance(text, str):
            text = (text,)
        if not all(isinstance(t, str) for t in text) or not all(
                isinstance(data[k], str) for k in data if k != "text"):
            raise MappingError(f"{path}: every value must be a field name (text may be a list)")
        return cls(**{**data, "text": tuple(text)})

    def merged(self, other: FieldMap) -> FieldMap:
        """``other`` (the command line) over this (a mapping file)."""
        values = {f.name: getattr(other, f.name) or getattr(self, f.name) for f in fields(self)}
        return FieldMap(**values)


# --------------------------------------------------------------------------- objects

_column_cache: dict[tuple, dict[str, str]] = {}


def _canonical_keys(keys: tuple) -> dict[str, str]:
    """Canonical field -> the key this object uses for it (memoised per key set)."""
    found = _column_cache.get(keys)
    if found is None:
        names = [k for k in keys if isinstance(k, str)]
        found = {canon: names[i] for canon, i in match_columns(names).items()}
        if len(_column_cache) < 4096:
            _column_cache[keys] = found
    return found


def _children(record: dict) -> list | None:
    for key in CHILDREN:
        value = record.get(key)
        if isinstance(value, list) and value:
            return value
    return None


def _bare(value) -> str | None:
    """An id without its Reddit type prefix ('t3_abc' -> 'abc')."""
    if value in (None, ""):
        return None
    value = str(value).strip()
    return value[3:] if value[:3] in ("t1_", "t3_") else value


def expand(record: dict, fields_map: FieldMap | None = None) -> Iterator[dict]:
    """One source object -> canonical records: itself, then its nested comments
    (depth first).  Raises ShapeError with the reason when the object holds no text."""
    yield from _expand(record, fields_map, None, None, None, "")


def _expand(record: dict, fmap, subreddit, thread: str | None, parent: str | None,
            path: str) -> Iterator[dict]:
    if fmap:
        out = fmap.apply(record)
    else:
        keys = _canonical_keys(tuple(record))
        if not ({"body", "title", "selftext"} & keys.keys()):
            raise ShapeError(f"no text field among its keys {sorted(map(str, record))[:12]}; "
                             "map one with --text FIELD")
        out = {canon: record[key] for canon, key in keys.items()}
    if thread is not None and "body" not in out:
        # A comment in a post's tree that calls its text 'text', 'postText', ...
        out["body"] = out.pop("selftext", None) or out.pop("title", None) or ""
        out.pop("title", None)
    if subreddit is not None and out.get("subreddit") in (None, ""):
        out["subreddit"] = subreddit
    own = _bare(out.get("id"))
    if thread is None:  # a post
        if own is None:
            text = f"{out.get('title') or ''}\n{out.get('selftext') or out.get('body') or ''}"
            own = "p" + hashlib.sha1(text.encode()).hexdigest()[:12]
        out["id"] = own
        thread_id = own
    else:  # a comment in a post's tree
        own = own or f"{thread}_{path}"
        out["id"] = own
        if out.get("link_id") in (None, ""):
            out["link_id"] = f"t3_{thread}"
        if out.get("parent_id") in (None, ""):
            out["parent_id"] = parent
        thread_id = thread
    yield out
    children = _children(record)
    if children:
        here = f"t3_{own}" if thread is None else f"t1_{own}"
        for i, child in enumerate(children):
            if isinstance(child, dict):
                yield from _expand(child, fmap, out.get("subreddit"), thread_id, here,
                                   f"{path}.{i}" if path else str(i))


def needs_expansion(record: dict) -> bool:
    """Whether an object is not in Reddit's own shape (which takes the fast path)."""
    if "body" in record or "selftext" in record:
        return ("comments" in record or "replies" in record or "children" in record) \
            and _children(record) is not None
    return True


# --------------------------------------------------------------------------- names

_NAME = r"(?P<name>[A-Za-z0-9][A-Za-z0-9_]{1,40})"
_FILE_PATTERNS = [
    re.compile(rf"^{_NAME}_(?:submissions?|comments?|posts?|subs)$", re.I),
    re.compile(rf"^r[-_]{_NAME}$", re.I),
]
_DIR_PATTERN = re.compile(rf"^r[-_]{_NAME}$", re.I)


def community_from_path(path: Path, root: Path | None = None) -> str | None:
    """The community a file's or folder's name says (nearest first), or None.
    Folders are looked at up to ``root`` (the argument the user gave)."""
    stem = path.name
    while "." in stem and len(stem.rsplit(".", 1)[1]) <= 8:
        stem = stem.rsplit(".", 1)[0]
    for pattern in _FILE_PATTERNS:
        if m := pattern.match(stem):
            return m.group("name")
    parent = path.parent
    stop = root.parent if root is not None else None
    while parent != parent.parent and parent != stop:
        if m := _DIR_PATTERN.match(parent.name):
            return m.group("name")
        if root is None:
            break
        parent = parent.parent
    return None


# --------------------------------------------------------------------------- shapes


def describe_value(value) -> str:
    """A JSON value's shape, in words, for 'no records found' messages."""
    if isinstance(value, dict):
        return f"top-level keys {sorted(map(str, value))[:15]}"
    if isinstance(value, list):
        if not value:
            return "an empty array"
        kinds = sorted({_kind(v) for v in value})
        first = next((v for v in value if isinstance(v, dict)), None)
        keys = f"; the first object's keys {sorted(map(str, first))[:15]}" if first else ""
        return f"an array of {len(value):,} {' and '.join(kinds)}{keys}"
    return f"{_kind(value)} at the top level"


def _kind(value) -> str:
    return {dict: "objects", list: "arrays", str: "strings", int: "numbers", float: "numbers",
            bool: "booleans", type(None): "nulls"}.get(type(value), type(value).__name__)


def mapping_hint(fmt: str) -> str:
    what = "columns" if fmt == "csv" else "fields"
    return (f"map {what} with --text FIELD (repeatable) and --title/--created/--author/--id/"
            "--score/--parent/--thread/--community-field, or --fields MAP.toml")
