"""Precision and recall of the personal-data scrubber (pii.py) on a labelled file.

The file is JSON lines, {"marked": "...", "kind": "..."}: each span of personal data
written inline as {{entity:text}} ("I'm {{age:19}} and ..."), ``kind`` saying what
the line is for (an entity, "mixed", or "negative": nothing to find).  It is
tests/fixtures/pii_labelled.jsonl; benchmarks/bench_pii.py prints the figures and
tests/test_pii.py holds them to floors.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import orjson

from .pii import ENTITIES, PLACEHOLDERS, find_pii

_MARK = re.compile(r"\{\{(\w+):(.+?)\}\}")


def parse_marked(marked: str) -> tuple[str, list[tuple[int, int, str]]]:
    """'call {{phone:212 555 0143}}' -> ('call 212 555 0143', [(5, 17, 'phone')])."""
    text, spans, last = [], [], 0
    length = 0
    for match in _MARK.finditer(marked):
        entity, surface = match.group(1), match.group(2)
        if entity not in PLACEHOLDERS:
            raise ValueError(f"unknown entity {entity!r} in {marked!r}: use {', '.join(ENTITIES)}")
        before = marked[last:match.start()]
        text.append(before)
        length += len(before)
        spans.append((length, length + len(surface), entity))
        text.append(surface)
        length += len(surface)
        last = match.end()
    text.append(marked[last:])
    return "".join(text), spans


def load_labelled(path: str | Path) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """A JSONL file of {"marked": "I'm {{age:19}} ..."} lines -> (text, gold spans)."""
    examples = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                examples.append(parse_marked(orjson.loads(line)["marked"]))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: {e}") from e
    return examples


def evaluate(examples: Iterable[tuple[str, list[tuple[int, int, str]]]],
             names: bool = False) -> dict[str, dict[str, float]]:
    """Precision and recall per entity of ``find_pii`` on labelled examples.

    A found span is correct when it overlaps a labelled span of the same entity; a
    labelled span is found when spans of its entity cover every character of it
    (a phone number half replaced still leaks).  Returns {entity: {precision,
    recall, found, labelled, correct}}; an entity never found has precision 1.0."""
    tally = {e: Counter() for e in ENTITIES}
    for text, gold in examples:
        found = find_pii(text, names)
        for start, end, entity in found:
            tally[entity]["found"] += 1
            if any(g[2] == entity and start < g[1] and g[0] < end for g in gold):
                tally[entity]["correct"] += 1
        for g_start, g_end, entity in gold:
            tally[entity]["labelled"] += 1
            covered = set()
            for start, end, e in found:
                if e == entity:
                    covered.update(range(max(start, g_start), min(end, g_end)))
            if len(covered) == g_end - g_start:
                tally[entity]["recalled"] += 1
    result = {}
    for entity, t in tally.items():
        if not names and entity == "name":
            continue
        result[entity] = {
            "precision": t["correct"] / t["found"] if t["found"] else 1.0,
            "recall": t["recalled"] / t["labelled"] if t["labelled"] else 1.0,
            "found": t["found"], "labelled": t["labelled"], "correct": t["correct"]}
    return result
