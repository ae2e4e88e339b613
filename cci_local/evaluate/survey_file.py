"""A researcher's own survey (``cci-local survey --survey FILE``): read, check, store.

CSV, one item per row::

    id,question,options,topic,ordinal,r/keto,r/nutrition
    q1,How often do you eat bread?,Never;Sometimes;Often;Always,bread,yes,A,0.1;0.3;0.4;0.2

``question`` and ``options`` (``;``-separated, lettered A, B, ... in order) are
required; ``id`` (default: the row number), ``topic`` and ``ordinal`` (yes/no,
default yes: the options are ordered, as in OpinionQA) are optional; every other
column is a community, its cell either the community's answer letter or its
answer distribution (``;``-separated shares, one per option, summing to 1 or to
100).  An empty cell: the community was not asked.

JSON: a list of items, or ``{"name": ..., "items": [...]}``, each item
``{"id", "question", "options": [...], "topic", "ordinal", "answers": {community:
"B" | [shares] | {"A": share, ...}}}``.

The Community-Cross-Instruct release's CommSurvey CSV is read as it is
(``text_chunk_id, topic_id, question, answer_<Community>..., question_id, split,
split_by_topic``): options are parsed out of the question text, its "Select only
one answer ..." sentence is dropped (the survey words questions its own way), and
only the rows the file holds out are kept: ``split`` is test (``--split random``)
or ``split_by_topic`` is test (``--split topic``).

Every problem is reported with its row (CSV line or JSON item), all at once, and
nothing is stored unless the whole file is right.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import string
import time
from pathlib import Path

import sqlite_utils

from ..errors import CciError
from ..store import normalise_community
from .items import Item

RESERVED = ("id", "question", "options", "topic", "ordinal")
TRUE, FALSE = {"", "yes", "y", "true", "1"}, {"no", "n", "false", "0"}
MAX_ERRORS = 20


class SurveyFileError(CciError):
    pass


def _answer(value, letters: list[str]) -> tuple[str, dict[str, float] | None]:
    """A cell/JSON value -> (the answer letter, the distribution or None); ValueError
    says what was expected."""
    if isinstance(value, str):
        value = value.strip()
        if value.upper() in letters and len(value) == 1:
            return value.upper(), None
        if ";" not in value and not _number(value):
            raise ValueError(f"answer {value!r} is not one of the letters "
                             f"{', '.join(letters)} nor a distribution (shares separated by ;)")
        value = [v.strip() for v in value.split(";")]
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(letters))
        if unknown:
            raise ValueError(f"distribution names options {', '.join(unknown)} that the item "
                             f"does not have (it has {', '.join(letters)})")
        value = [value.get(k, 0) for k in letters]
    if not isinstance(value, list):
        raise ValueError(f"answer {value!r} is neither a letter nor a distribution")
    if len(value) != len(letters):
        raise ValueError(f"distribution has {len(value)} shares for {len(letters)} options")
    try:
        shares = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"distribution {value!r} has a share that is not a number") from None
    total = sum(shares)
    if any(s < 0 for s in shares) or not (abs(total - 1) <= 0.02 or abs(total - 100) <= 2):
        raise ValueError(f"distribution shares must be >= 0 and sum to 1 (or 100); "
                         f"these sum to {total:g}")
    dist = {k: s / total for k, s in zip(letters, shares, strict=True)}
    return max(letters, key=lambda k: dist[k]), dist


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _item(raw: dict, where: str, position: int, errors: list[str]) -> dict | None:
    problems = []
    question = str(raw.get("question") or "").strip()
    if not question:
        problems.append("the question is empty")
    options = raw.get("options")
    if isinstance(options, str):
        options = [o.strip() for o in options.split(";")]
    if not isinstance(options, list) or not all(isinstance(o, str) and o.strip()
                                                 for o in options):
        problems.append("options must be texts separated by ; (CSV) or a list of texts (JSON),"
                        " none empty")
        options = []
    elif not 2 <= len(options) <= 26:
        problems.append(f"an item needs 2 to 26 options, this one has {len(options)}")
    elif len(set(options)) != len(options):
        problems.append("two options have the same text")
    letters = list(string.ascii_uppercase[:len(options)])
    ordinal = raw.get("ordinal", True)
    if isinstance(ordinal, str):
        if ordinal.strip().lower() not in TRUE | FALSE:
            problems.append(f"ordinal must be yes or no, not {ordinal!r}")
        ordinal = ordinal.strip().lower() in TRUE
    answers, distributions = {}, {}
    for community, value in (raw.get("answers") or {}).items():
        if value is None or value == "":
            continue
        name = normalise_community(community)
        if not letters:
            continue
        try:
            answers[name], dist = _answer(value, letters)
        except ValueError as e:
            problems.append(f"r/{name}: {e}")
            continue
        if dist is not None:
            distributions[name] = dist
    if letters and not answers and not problems:
        problems.append("no community answers this item")
    for p in problems:
        errors.append(f"{where}: {p}")
    if problems:
        return None
    return {"item_id": str(raw.get("id") or position + 1).strip(), "position": position,
            "question": question, "options": dict(zip(letters, [o.strip() for o in options],
                                                        strict=True)),
            "topic": (str(raw["topic"]).strip() or None) if raw.get("topic") else None,
            "ordinal": bool(ordinal), "answers": answers, "distributions": distributions}


def is_release_layout(header: list[str]) -> bool:
    """The release's CommSurvey CSV: answer_<Community> columns and no options column."""
    return ("question" in header and "options" not in header
            and any(h.startswith("answer_") for h in header))


def _header(text: str) -> list[str]:
    return [h.strip() for h in next(csv.reader(io.StringIO(text)), [])]


def _release_items(path: Path, text: str, split: str, errors: list[str]) -> list[dict]:
    from ..importer import ImportFileError, read_paper_csv

    try:
        pairs = read_paper_csv(path, text, errors)
    except ImportFileError as e:
        raise SurveyFileError(str(e)) from None
    column = "split_by_topic" if split == "topic" else "split"
    items = []
    for pair in pairs:
        if pair.kind != "choice":
            errors.append(f"{path}:{pair.line}: not a multiple-choice question (no A. B. ... "
                          "option lines, or an answer that is not a letter)")
            continue
        if getattr(pair, column) != "test":
            continue
        raw = {"id": f"line{pair.line}", "question": pair.question,
               "options": list(pair.options.values()), "topic": pair.topic,
               "ordinal": "no", "answers": pair.answers}
        if (item := _item(raw, f"{path}:{pair.line}", len(items), errors)) is not None:
            items.append(item)
    return items


def _csv_items(path: Path, text: str, errors: list[str]) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("question", "options") if c not in header]
    if missing:
        raise SurveyFileError(f"{path}:1: the header needs the columns question and options "
                              f"(missing: {', '.join(missing)}); other columns are "
                              "communities, e.g. r/keto")
    communities = [h for h in header if h not in RESERVED]
    if not communities:
        raise SurveyFileError(f"{path}:1: no community column: add one per community "
                              "(e.g. r/keto) holding its answer letter or distribution")
    reader.fieldnames = header
    items: list[dict] = []
    line = reader.line_num
    for i, row in enumerate(reader):
        where = f"{path}:{line + 1}"
        line = reader.line_num
        if None in row:
            errors.append(f"{where}: more cells than the header has columns "
                          "(a ; or , inside a cell needs quotes)")
            continue
        raw = {k: row.get(k) for k in RESERVED if row.get(k) is not None}
        raw["answers"] = {c: row.get(c) for c in communities}
        if (item := _item(raw, where, i, errors)) is not None:
            items.append(item)
    return items


def read_survey_file(path: str | Path, split: str = "random") -> tuple[str, list[dict]]:
    """(name, items) of a CSV or JSON survey file; SurveyFileError lists every problem.
    ``split`` picks the held-out rows of a file in the release's CommSurvey layout."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SurveyFileError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise SurveyFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    errors: list[str] = []
    items: list[dict] = []
    name = path.stem
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SurveyFileError(f"{path}:{e.lineno}: not JSON ({e.msg}, column {e.colno})"
                                  ) from None
        if isinstance(data, dict):
            name = str(data.get("name") or name)
            data = data.get("items")
        if not isinstance(data, list):
            raise SurveyFileError(f"{path}: expected a list of items or "
                                  '{"name": ..., "items": [...]}')
        for i, raw in enumerate(data):
            where = f"{path}: item {i + 1}"
            if not isinstance(raw, dict):
                errors.append(f"{where}: expected an object with question, options, answers")
                continue
            if raw.get("id"):
                where += f" (id {raw['id']})"
            if not isinstance(raw.get("answers", {}), dict):
                errors.append(f"{where}: answers must be an object: community -> answer")
                continue
            if (item := _item(raw, where, i, errors)) is not None:
                items.append(item)
    else:
        if is_release_layout(_header(text)):
            items = _release_items(path, text, split, errors)
            name = f"{path.stem} ({split} split, held-out rows)"
            if not items and not errors:
                errors.append(f"{path}: no row is held out (test) in its "
                              f"{'split_by_topic' if split == 'topic' else 'split'} column")
        else:
            items = _csv_items(path, text, errors)
    seen: dict[str, int] = {}
    for item in items:
        seen[item["item_id"]] = seen.get(item["item_id"], 0) + 1
    errors += [f"{path}: id {k!r} is used by {n} items" for k, n in seen.items() if n > 1]
    if not items and not errors:
        errors.append(f"{path}: no items")
    if errors:
        more = f"\n... and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
        raise SurveyFileError(f"{len(errors)} problem(s) in the survey file:\n"
                              + "\n".join(errors[:MAX_ERRORS]) + more)
    return name, items


def load_survey(db: sqlite_utils.Database, path: str | Path, split: str = "random") -> str:
    """Check ``path`` and store it (once per content, and per split for the
    release's layout); return the survey id."""
    path = Path(path)
    name, items = read_survey_file(path, split)
    content = path.read_bytes()
    if path.suffix.lower() != ".json" and is_release_layout(
            _header(content.decode("utf-8-sig"))):
        content += f"\0split={split}".encode()  # each split is its own survey
    survey_id = hashlib.sha256(content).hexdigest()[:16]
    if db.execute("SELECT 1 FROM surveys WHERE id = ?", [survey_id]).fetchone():
        return survey_id
    with db.conn:
        db.conn.execute("INSERT INTO surveys VALUES (?, ?, ?, ?, ?)",
                        [survey_id, name, str(path), len(items), time.time()])
        db.conn.executemany(
            "INSERT INTO survey_items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [[survey_id, it["item_id"], it["position"], it["question"],
              json.dumps(it["options"]), it["topic"], int(it["ordinal"]),
              json.dumps(it["answers"]), json.dumps(it["distributions"])] for it in items])
    return survey_id


def survey_items(db: sqlite_utils.Database, survey_id: str,
                 communities: list[str] | None = None) -> list[Item]:
    out = []
    for item_id, question, options, topic, ordinal, answers, dists in db.execute(
            "SELECT item_id, question, options, topic, ordinal, answers, distributions"
            " FROM survey_items WHERE survey_id = ? ORDER BY position", [survey_id]):
        answers, dists = json.loads(answers), json.loads(dists)
        if communities is not None:
            answers = {c: a for c, a in answers.items() if c in communities}
            dists = {c: d for c, d in dists.items() if c in communities}
        if answers:
            out.append(Item(f"{survey_id}:{item_id}", question, json.loads(options), answers,
                            topic=topic, distributions=dists, ordinal=bool(ordinal)))
    return out


def survey_communities(db: sqlite_utils.Database, survey_id: str) -> list[str]:
    names: set[str] = set()
    for (answers,) in db.execute("SELECT answers FROM survey_items WHERE survey_id = ?",
                                 [survey_id]):
        names |= set(json.loads(answers))
    return sorted(names)
