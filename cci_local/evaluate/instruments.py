"""Psychometric instruments: the file format, the item bank, and scoring like a human
respondent (docs/method.md#instruments, docs/method.md#human-like-scoring).

An instrument is a TOML file::

    name = "Weight concerns (example)"
    preamble = "Think about the past four weeks."      # put before every item
    instruction = "Answer with the letter of one option only."
    personas = ["You are a member of r/{community}.", ...]   # prefixes, one per administration
    item_bank = "eating_disorder_items.csv"             # optional: texts by item id

    [scales.days]                                       # a response scale
    options = [{text = "No days", value = 0}, {text = "1-5 days", value = 1}, ...]
    [scales.times]
    kind = "count"                                      # a number is the answer
    max = 100

    [[items]]
    id = "W1"
    text = "..."                                        # or taken from the item bank
    scale = "days"
    reverse = false                                     # value -> min + max - value
    rescale = [0, 100]                                  # value -> its place on [0, 100]

    [subscales.WCS]
    items = ["W1", "W2"]
    rule = "mean"                                       # or "sum"

    [global]
    rule = "mean_of_subscales"                          # or mean_of_items, sum_of_items
    of = ["WCS"]

    [[flags]]
    name = "high weight concern"
    score = "WCS"                                       # a subscale, "global" or an item id
    op = ">="
    threshold = 47

    [[rules]]
    name = "likely eating disorder"
    any = ["high weight concern"]                       # or all = [...]

Option letters are A, B, ... in order unless given.  Every rule is checked on
load: a subscale naming an unknown item, a flag naming an unknown score, a scale
an item does not have, each is an error naming the file and the place.
"""

from __future__ import annotations

import csv
import operator
import string
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import CciError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SHIPPED = Path(__file__).resolve().parent.parent / "instruments"
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
       "==": operator.eq}


class InstrumentError(CciError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Option(_Strict):
    text: str
    value: float
    letter: str | None = None


class Scale(_Strict):
    kind: Literal["choice", "count"] = "choice"
    options: list[Option] = []
    min: float = 0  # counts: the smallest and largest number accepted
    max: float = 1000

    @model_validator(mode="after")
    def _letters(self):
        if self.kind == "choice":
            if not 2 <= len(self.options) <= 26:
                raise ValueError(f"a choice scale needs 2 to 26 options, not {len(self.options)}")
            for option, letter in zip(self.options, string.ascii_uppercase, strict=False):
                option.letter = option.letter or letter
            letters = [o.letter for o in self.options]
            if len(set(letters)) != len(letters):
                raise ValueError(f"option letters repeat: {letters}")
        elif self.options:
            raise ValueError("a count scale takes no options (it has min and max)")
        return self

    @property
    def low(self) -> float:
        return min(o.value for o in self.options) if self.kind == "choice" else self.min

    @property
    def high(self) -> float:
        return max(o.value for o in self.options) if self.kind == "choice" else self.max

    def value(self, letter: str) -> float:
        for option in self.options:
            if option.letter == letter:
                return option.value
        raise KeyError(letter)


class ItemSpec(_Strict):
    id: str
    scale: str
    text: str | None = None
    reverse: bool = False
    rescale: tuple[float, float] | None = None


class Subscale(_Strict):
    items: list[str]
    rule: Literal["mean", "sum"] = "mean"


class GlobalScore(_Strict):
    rule: Literal["mean_of_subscales", "mean_of_items", "sum_of_items"]
    of: list[str]


class Flag(_Strict):
    name: str
    score: str
    op: Literal[">=", ">", "<=", "<", "=="]
    threshold: float


class Rule(_Strict):
    name: str
    any: list[str] = []
    all: list[str] = []


class Instrument(_Strict):
    name: str
    description: str = ""
    citation: str = ""
    preamble: str = ""
    instruction: str = "Answer with the letter of one option only."
    count_instruction: str = "Answer with a number only."
    personas: list[str] = Field(default_factory=lambda: [""])
    item_bank: str | None = None
    scales: dict[str, Scale]
    items: list[ItemSpec]
    subscales: dict[str, Subscale] = {}
    global_score: GlobalScore | None = Field(default=None, alias="global")
    flags: list[Flag] = []
    rules: list[Rule] = []

    @model_validator(mode="after")
    def _references(self):
        ids = [it.id for it in self.items]
        problems = [f"item id {i!r} is used twice" for i, n in Counter(ids).items() if n > 1]
        for it in self.items:
            if it.scale not in self.scales:
                problems.append(f"item {it.id}: no scale {it.scale!r} (scales: "
                                f"{', '.join(self.scales)})")
            elif it.rescale and self.scales[it.scale].low == self.scales[it.scale].high:
                problems.append(f"item {it.id}: cannot rescale a scale with one value")
        for name, sub in self.subscales.items():
            problems += [f"subscale {name}: no item {i!r}" for i in sub.items if i not in ids]
        if self.global_score:
            known = self.subscales if self.global_score.rule == "mean_of_subscales" else ids
            problems += [f"global: no {'subscale' if known is self.subscales else 'item'} {x!r}"
                         for x in self.global_score.of if x not in known]
        scores = set(self.subscales) | set(ids) | ({"global"} if self.global_score else set())
        problems += [f"flag {f.name!r}: no score {f.score!r} (a subscale, 'global' or an item)"
                     for f in self.flags if f.score not in scores]
        flags = {f.name for f in self.flags}
        for rule in self.rules:
            if not rule.any and not rule.all:
                problems.append(f"rule {rule.name!r}: give any = [...] or all = [...]")
            problems += [f"rule {rule.name!r}: no flag {n!r}" for n in rule.any + rule.all
                         if n not in flags]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def item(self, item_id: str) -> ItemSpec:
        return next(it for it in self.items if it.id == item_id)

    def scale_of(self, item_id: str) -> Scale:
        return self.scales[self.item(item_id).scale]


def load_item_bank(path: str | Path) -> dict[str, str]:
    """Item id -> text from a CSV with the columns Item and Question (the shared
    ``eating_disorder_items.csv``)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not {"Item", "Question"} <= set(reader.fieldnames or []):
                raise InstrumentError(f"{path}:1: an item bank needs the columns Item and "
                                      f"Question (found: {', '.join(reader.fieldnames or [])})")
            return {row["Item"].strip(): " ".join(row["Question"].split()) for row in reader}
    except FileNotFoundError:
        raise InstrumentError(f"{path}: no such item bank") from None


def find_instrument(name: str | Path) -> Path:
    """A path, or the name of an instrument shipped with cci-local."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = SHIPPED / f"{name}.toml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
    raise InstrumentError(f"{name}: no such file, nor a shipped instrument ({names})")


def load_instrument(name: str | Path, item_bank: str | Path | None = None) -> Instrument:
    """Read and check an instrument; item texts missing from the file come from
    ``item_bank`` (or the file's own ``item_bank``, relative to the file)."""
    path = find_instrument(name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise InstrumentError(f"{path}: not TOML: {e}") from None
    try:
        inst = Instrument.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"] if x != "__root__")
            if err["loc"][:1] == ("items",) and len(err["loc"]) > 1:
                item = data["items"][err["loc"][1]]
                where += f" (id {item.get('id')})" if isinstance(item, dict) else ""
            lines.append(f"{path}: {where or 'instrument'}: {err['msg']}")
        raise InstrumentError("\n".join(lines)) from None
    missing = [it.id for it in inst.items if not it.text]
    if missing:
        bank = item_bank or (path.parent / inst.item_bank if inst.item_bank else None)
        if bank is None:
            raise InstrumentError(f"{path}: items {', '.join(missing)} have no text: give the "
                                  "item bank CSV (--items FILE)")
        texts = load_item_bank(bank)
        absent = [i for i in missing if i not in texts]
        if absent:
            raise InstrumentError(f"{bank}: no item {', '.join(absent)} (needed by {path})")
        for it in inst.items:
            it.text = it.text or texts[it.id]
    return inst


# --------------------------------------------------------------------------- scoring


def item_value(inst: Instrument, item_id: str, raw: float) -> float:
    """A raw answer value -> the value scoring uses: reverse-coded, then rescaled."""
    item, scale = inst.item(item_id), inst.scale_of(item_id)
    low, high = scale.low, scale.high
    value = low + high - raw if item.reverse else raw
    if item.rescale:
        a, b = item.rescale
        value = a + (value - low) / (high - low) * (b - a)
    return value


def aggregate(inst: Instrument, item_id: str, answers: Sequence, how: str = "majority") -> float:
    """Repeated answers to one item -> its raw value.  ``answers``: letters (choice
    scales), numbers (count scales) or distributions {letter: probability}.
    ``majority``: the most frequent option (ties: the lower value), as the paper did;
    counts and distributions always average (a distribution by its expected value)."""
    scale = inst.scale_of(item_id)
    if not answers:
        raise ValueError(f"item {item_id}: no answers")
    if scale.kind == "count":
        return float(sum(float(a) for a in answers) / len(answers))
    if isinstance(answers[0], dict):
        expected = [sum(p * scale.value(k) for k, p in a.items()) for a in answers]
        return float(sum(expected) / len(expected))
    if how == "mean":
        return float(sum(scale.value(a) for a in answers) / len(answers))
    counts = Counter(answers)
    best = max(counts.values())
    return min(scale.value(a) for a, n in counts.items() if n == best)


@dataclass
class Scores:
    items: dict[str, float]  # after reverse coding and rescaling
    subscales: dict[str, float]
    global_score: float | None
    flags: dict[str, bool]
    rules: dict[str, bool]

    def get(self, name: str) -> float:
        if name == "global":
            return self.global_score
        return self.subscales[name] if name in self.subscales else self.items[name]


def score(inst: Instrument, raw: dict[str, float]) -> Scores:
    """Score one respondent's raw item values (item id -> value) like a human's."""
    unknown = sorted(set(raw) - {it.id for it in inst.items})
    if unknown:
        raise ValueError(f"answers to items the instrument does not have: {unknown}")
    items = {i: item_value(inst, i, v) for i, v in raw.items()}
    subs = {}
    for name, sub in inst.subscales.items():
        values = [items[i] for i in sub.items if i in items]
        if len(values) < len(sub.items):
            missing = [i for i in sub.items if i not in items]
            raise ValueError(f"subscale {name}: no answer to {', '.join(missing)}")
        subs[name] = sum(values) / len(values) if sub.rule == "mean" else sum(values)
    total = None
    if inst.global_score:
        g = inst.global_score
        values = [subs[x] for x in g.of] if g.rule == "mean_of_subscales" else \
            [items[x] for x in g.of]
        total = sum(values) if g.rule == "sum_of_items" else sum(values) / len(values)
    result = Scores(items, subs, total, {}, {})
    result.flags = {f.name: bool(OPS[f.op](result.get(f.score), f.threshold))
                    for f in inst.flags}
    result.rules = {r.name: (any(result.flags[n] for n in r.any) if r.any else True)
                    and all(result.flags[n] for n in r.all) for r in inst.rules}
    return result
