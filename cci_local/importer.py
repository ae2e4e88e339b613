"""Import instruction data and surveys made elsewhere (docs/commands.md#cci-local-import).

``import_files(db, paths)`` reads, per file, one of:

- ``paper-csv``: the Community-Cross-Instruct release's CommInst and CommSurvey
  CSVs (``text_chunk_id, topic_id, question, answer_<Community>..., question_id,
  split, split_by_topic``).  A CommSurvey row's ``question`` holds the question,
  lines ``A. ...`` to ``D. ...`` and a fixed instruction sentence, which is
  dropped; its answers are letters.  A blank answer: that community had no chunk;
- ``paper-json``: the release's per-subreddit files (``instructions_<Community>_
  open_ended_train.json``, ``..._multi_choice_test_by_topic.json``): a list of
  ``{instruction, input, output, topic, split, split_by_topic}``;
- the tool's own exports: ``csv`` (one answer column per community), ``mlx``
  (``<community>/{train,valid,test}.jsonl``), ``openai``
  (``<community>.{train,valid,test}.jsonl``) and ``sharegpt`` (``<community>.json``
  beside a ``dataset_info.json``).

A question is stored once, whichever file and row it comes from (keyed by its
kind, text and options), with one answer per community; the file's ``split`` and
``split_by_topic`` become the store's random and unseen-topic holdouts (export's
``valid`` is training data).  Where each answer came from (file, line) is kept in
``import_rows``.  A file is read whole first: any malformed row is reported with
its file and line, and nothing of that file is stored.  Re-importing adds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from .errors import CciError
from .store import ensure_community, normalise_community

FORMATS = ("auto", "paper-csv", "paper-json", "csv", "mlx", "openai", "sharegpt")
OPTION = re.compile(r"^\s*([A-J])[.)]\s+(.*\S)\s*$")
PAPER_NAME = re.compile(r"instructions_(?P<community>.+?)_(?:open_ended|multi_choice)")
SUBSETS = ("train", "valid", "test")
SPLITS = ("train", "test")


class ImportFileError(CciError):
    """A file cannot be imported (exit code 2); the message names file and line."""


@dataclass
class Pair:
    """One question with this file's answer(s), before storing."""

    line: int
    kind: str  # open | choice | template (a real post as the answer)
    question: str
    options: dict[str, str] | None
    answers: dict[str, str]  # community -> answer (text, or a letter for choice)
    split: str
    split_by_topic: str | None
    topic: str | None = None


@dataclass
class FileResult:
    path: str
    format: str
    rows: int = 0
    questions_added: int = 0
    answers_added: int = 0
    already: int = 0
    communities: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def split_choice(text: str) -> tuple[str, dict[str, str]] | None:
    """A multiple-choice question written out as text: the question, then lines
    ``A. ...``, ``B. ...``; anything after the options (the release's "Select only
    one answer ..." sentence) is dropped.  None when there are not two options."""
    lines = text.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if OPTION.match(line)), None)
    if start is None or start == 0:
        return None
    options: dict[str, str] = {}
    for line in lines[start:]:
        found = OPTION.match(line)
        if not found:
            break
        options[found.group(1)] = found.group(2)
    letters = list(options)
    if len(options) < 2 or letters != [chr(ord("A") + i) for i in range(len(letters))]:
        return None
    return "\n".join(lines[:start]).strip(), options


def _split(value: str, where: str, column: str, errors: list[str],
           allow_empty: bool = False) -> str | None:
    value = (value or "").strip().lower()
    if value in SPLITS:
        return value
    if value == "valid":
        return "train"
    if allow_empty and not value:
        return None
    errors.append(f"{where}: {column} is {value!r}; expected train or test")
    return None


def _csv_rows(path: Path, text: str):
    """(first line of the record, row dict) for each CSV record, multi-line cells
    included."""
    reader = csv.DictReader(io.StringIO(text))
    previous = 1
    for row in reader:
        yield previous + 1, row
        previous = reader.line_num
    if reader.fieldnames is None:
        raise ImportFileError(f"{path}: empty file")


def _answer_columns(header: list[str]) -> list[str]:
    """The communities of a CSV with one answer_<Community> column each."""
    return [h[len("answer_"):] for h in header if h.startswith("answer_")]


def _answers(row: dict, communities: list[str]) -> dict[str, str]:
    """community -> answer, for the answer cells that are not blank."""
    answers = {c: (row.get(f"answer_{c}") or "").strip() for c in communities}
    return {c: a for c, a in answers.items() if a}


def _kind(question: str, answers: dict[str, str], where: str,
          errors: list[str]) -> tuple[str, str, dict[str, str] | None] | None:
    """(kind, question, options): a question written with option lines whose
    answers are all letters is multiple-choice (the option lines and what follows
    them leave its text), anything else open-ended.  None, with the error
    recorded, when a letter is not one of the options."""
    choice = split_choice(question)
    if choice and answers and all(re.fullmatch(r"[A-J]", a) for a in answers.values()):
        text, options = choice
        bad = [c for c, a in answers.items() if a not in options]
        if bad:
            errors.append(f"{where}: answer of {', '.join(bad)} is not one of "
                          f"{', '.join(options)}")
            return None
        return "choice", text, options
    return "open", question, None


def read_paper_csv(path: Path, text: str, errors: list[str]) -> list[Pair]:
    header = csv.DictReader(io.StringIO(text)).fieldnames or []
    communities = _answer_columns(header)
    missing = [c for c in ("question", "split") if c not in header]
    if missing or not communities:
        raise ImportFileError(f"{path}:1: not the release's layout: needs question, split and "
                              f"answer_<Community> columns; found {', '.join(header)}")
    pairs = []
    for line, row in _csv_rows(path, text):
        where = f"{path}:{line}"
        question = (row.get("question") or "").strip()
        if not question:
            errors.append(f"{where}: empty question")
            continue
        answers = _answers(row, communities)
        if (parsed := _kind(question, answers, where, errors)) is None:
            continue
        kind, question, options = parsed
        split = _split(row.get("split", ""), where, "split", errors)
        by_topic = _split(row.get("split_by_topic", ""), where, "split_by_topic", errors,
                          allow_empty=True)
        if split is None:
            continue
        if not answers:
            continue  # no community had a chunk for this row
        topic = (row.get("topic_id") or row.get("topic") or "").strip() or None
        pairs.append(Pair(line, kind, question, options, answers, split, by_topic, topic))
    return pairs


def read_own_csv(path: Path, text: str, errors: list[str]) -> list[Pair]:
    header = csv.DictReader(io.StringIO(text)).fieldnames or []
    communities = _answer_columns(header)
    pairs = []
    for line, row in _csv_rows(path, text):
        where = f"{path}:{line}"
        kind = (row.get("kind") or "").strip()
        if kind not in ("open", "choice", "template"):
            errors.append(f"{where}: kind is {kind!r}; expected open, choice or template")
            continue
        question = (row.get("question") or "").strip()
        options = None
        if kind == "choice":
            try:
                options = json.loads(row.get("options") or "")
            except ValueError:
                options = None
            if not isinstance(options, dict) or len(options) < 2:
                errors.append(f"{where}: options must be a JSON object of two or more "
                              "letters for a choice question")
                continue
        answers = _answers(row, communities)
        split = _split(row.get("split", ""), where, "split", errors)
        by_topic = _split(row.get("split_by_topic", ""), where, "split_by_topic", errors,
                          allow_empty=True)
        if not question:
            errors.append(f"{where}: empty question")
        if split is None or not question or not answers:
            continue
        pairs.append(Pair(line, kind, question, options,
                          answers, split, by_topic, (row.get("topic") or "").strip() or None))
    return pairs


def read_paper_json(path: Path, data, community: str | None, errors: list[str]) -> list[Pair]:
    if community is None:
        found = PAPER_NAME.search(path.name)
        if not found:
            raise ImportFileError(f"{path}: cannot tell the community from the file name "
                                  "(expected instructions_<Community>_...json): give --community")
        community = found.group("community")
    pairs = []
    for n, item in enumerate(data, 1):
        where = f"{path}: item {n}"
        if not isinstance(item, dict) or not str(item.get("instruction", "")).strip() \
                or not str(item.get("output", "")).strip():
            errors.append(f"{where}: expected an object with instruction and output")
            continue
        question = str(item["instruction"]).strip()
        if str(item.get("input") or "").strip():
            question = f"{question}\n\n{str(item['input']).strip()}"
        answer = str(item["output"]).strip()
        if (parsed := _kind(question, {community: answer}, where, errors)) is None:
            continue
        kind, question, options = parsed
        split = _split(str(item.get("split", "train")), where, "split", errors)
        by_topic = _split(str(item.get("split_by_topic") or ""), where, "split_by_topic",
                          errors, allow_empty=True)
        if split is None:
            continue
        topic = str(item["topic"]) if item.get("topic") not in (None, "") else None
        pairs.append(Pair(n, kind, question, options, {community: answer}, split, by_topic,
                          topic))
    return pairs


def _chat_pair(record: dict) -> tuple[str, str] | None:
    if "messages" in record:
        turns = [(m.get("role"), m.get("content")) for m in record["messages"]]
        user = [c for r, c in turns if r == "user"]
        assistant = [c for r, c in turns if r == "assistant"]
    elif "conversations" in record:
        turns = [(m.get("from"), m.get("value")) for m in record["conversations"]]
        user = [c for r, c in turns if r in ("human", "user")]
        assistant = [c for r, c in turns if r in ("gpt", "assistant")]
    else:
        return None
    if len(user) != 1 or len(assistant) != 1 or not user[0] or not assistant[0]:
        return None
    return str(user[0]).strip(), str(assistant[0]).strip()


def read_chat_jsonl(path: Path, text: str, community: str, subset: str,
                    errors: list[str]) -> list[Pair]:
    pairs = []
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            pair = _chat_pair(json.loads(raw))
        except (ValueError, AttributeError):
            pair = None
        if pair is None:
            errors.append(f"{path}:{line}: expected one user and one assistant message")
            continue
        split = "test" if subset == "test" else "train"
        pairs.append(Pair(line, "open", pair[0], None, {community: pair[1]}, split, None))
    return pairs


def read_sharegpt(path: Path, data, community: str, errors: list[str]) -> list[Pair]:
    pairs = []
    for n, record in enumerate(data, 1):
        pair = _chat_pair(record) if isinstance(record, dict) else None
        if pair is None:
            errors.append(f"{path}: item {n}: expected conversations with one human and "
                          "one gpt turn")
            continue
        split = _split(str(record.get("split", "train")), f"{path}: item {n}", "split", errors)
        if split:
            pairs.append(Pair(n, "open", pair[0], None, {community: pair[1]}, split, None))
    return pairs


def detect(path: Path, text: str) -> str:
    """The format of one file (see the module docstring)."""
    name = path.name
    if name.endswith(".csv"):
        header = next(csv.reader(io.StringIO(text)), [])
        if "text_chunk_id" in header or "question_id" in header:
            return "paper-csv"
        if "kind" in header and "question" in header:
            return "csv"
        if "question" in header and _answer_columns(header):
            return "paper-csv"
        raise ImportFileError(f"{path}:1: a CSV with columns {', '.join(header)} is neither the "
                              "release's CommInst/CommSurvey layout nor cci-local's export")
    if name.endswith(".jsonl"):
        return "mlx" if path.stem in SUBSETS else "openai"
    if name.endswith(".json"):
        if PAPER_NAME.search(name):
            return "paper-json"
        if (path.parent / "dataset_info.json").is_file():
            return "sharegpt"
        raise ImportFileError(f"{path}: a JSON file that is neither the release's "
                              "instructions_<Community>_... layout nor a ShareGPT export beside "
                              "its dataset_info.json; name the format with --format")
    raise ImportFileError(f"{path}: unknown file type; expected .csv, .json or .jsonl")


def read_file(path: Path, fmt: str = "auto", community: str | None = None
              ) -> tuple[str, list[Pair]]:
    """The format and the pairs of one file; ImportFileError listing every bad row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ImportFileError(f"{path}: cannot read: {e}") from e
    fmt = detect(path, text) if fmt == "auto" else fmt
    if fmt in ("mlx", "openai") and not text.strip():
        return fmt, []  # an empty subset of an export (the table shows its 0 rows)
    errors: list[str] = []
    if fmt in ("paper-json", "sharegpt"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ImportFileError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from e
        if not isinstance(data, list):
            raise ImportFileError(f"{path}: expected a JSON list of records")
        if fmt == "paper-json":
            pairs = read_paper_json(path, data, community, errors)
        else:
            pairs = read_sharegpt(path, data, community or path.stem, errors)
    elif fmt == "paper-csv":
        pairs = read_paper_csv(path, text, errors)
    elif fmt == "csv":
        pairs = read_own_csv(path, text, errors)
    elif fmt == "mlx":
        pairs = read_chat_jsonl(path, text, community or path.parent.name, path.stem, errors)
    elif fmt == "openai":
        name, _, subset = path.stem.rpartition(".")
        if subset not in SUBSETS or not name:
            raise ImportFileError(f"{path}: expected <community>.<train|valid|test>.jsonl")
        pairs = read_chat_jsonl(path, text, community or name, subset, errors)
    else:
        raise ImportFileError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if errors:
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ImportFileError(f"{len(errors)} bad row{'s' if len(errors) > 1 else ''}; nothing "
                              f"from {path} was stored:\n  " + "\n  ".join(errors[:20]) + more)
    if not pairs:
        raise ImportFileError(f"{path}: no question with an answer in it")
    return fmt, pairs


# --------------------------------------------------------------------------- storing


def _source(pair: Pair) -> str:
    key = json.dumps([pair.kind, pair.question, pair.options], sort_keys=True)
    return "import:" + hashlib.sha256(key.encode()).hexdigest()[:20]


def store_pairs(db: sqlite_utils.Database, path: Path, fmt: str, pairs: list[Pair],
                file_hash: str) -> FileResult:
    """Store one file's pairs in one transaction; what was already there is kept."""
    result = FileResult(str(path), fmt, rows=len(pairs))
    conn = db.conn
    names: dict[str, str] = {}
    with conn:
        for pair in pairs:
            for community in pair.answers:
                if community not in names:
                    names[community] = ensure_community(db, normalise_community(community))
        conn.execute("INSERT OR IGNORE INTO imports (id, path, format, rows, imported_at)"
                     " VALUES (?, ?, ?, ?, ?)",
                     [file_hash, str(path), fmt, len(pairs), time.time()])
        for pair in pairs:
            source = _source(pair)
            options = json.dumps(pair.options) if pair.options else None
            cursor = conn.execute(
                "INSERT OR IGNORE INTO instructions (kind, question, options, source, split,"
                " split_by_topic, topic_label, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [pair.kind, pair.question, options, source, pair.split, pair.split_by_topic,
                 pair.topic, time.time()])
            result.questions_added += cursor.rowcount
            iid = conn.execute("SELECT id FROM instructions WHERE source = ? AND question = ?",
                               [source, pair.question]).fetchone()[0]
            for community, answer in pair.answers.items():
                added = conn.execute(
                    "INSERT OR IGNORE INTO community_answers (instruction_id, community, answer,"
                    " doc_ids) VALUES (?, ?, ?, '[]')",
                    [iid, names[community], answer]).rowcount
                result.answers_added += added
                result.already += 1 - added
                conn.execute("INSERT OR IGNORE INTO import_rows (import_id, line, instruction_id,"
                             " community) VALUES (?, ?, ?, ?)",
                             [file_hash, pair.line, iid, names[community]])
    result.communities = sorted(names.values())
    return result


def import_files(db: sqlite_utils.Database, paths: list[str], *, fmt: str = "auto",
                 community: str | None = None) -> list[FileResult]:
    """Import each file (a folder: its .csv, .json and .jsonl files, dataset_info.json
    aside).  Every file is read and checked before anything is stored, so one bad
    file stores nothing at all."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file()
                            and p.suffix in (".csv", ".json", ".jsonl")
                            and p.name != "dataset_info.json")
        elif path.is_file():
            files.append(path)
        else:
            raise ImportFileError(f"{path}: no such file or folder")
    if not files:
        raise ImportFileError(f"no .csv, .json or .jsonl file in {', '.join(paths)}")
    read = []
    for path in files:
        found, pairs = read_file(path, fmt, community)
        read.append((path, found, pairs, hashlib.sha256(path.read_bytes()).hexdigest()))
    return [store_pairs(db, path, found, pairs, digest) for path, found, pairs, digest in read]
