"""Instruction data: template pairs from real posts (docs/method.md#template-pairs).

``template_pairs(db)`` turns each real post into the answer to an instruction
drawn from a pool of paraphrased templates ("If you were in the online community
r/keto, what would you post?"), optionally naming the post's topic, as the
fidelity paper built its alignment data.  It needs no model at all, so it is
also the fast path on weak hardware.  Pairs are stored as instructions of kind
'template', so training can use them, Community-Cross-Instruct pairs, or a mix.

Splits are seeded: 15% of posts are held out at random, and separately every
post of a held-out topic (15% of the topics of the latest topic run) is marked
held out in ``split_by_topic`` -- the same topic holdout the teacher-generated
pairs use.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass

import sqlite_utils

from ..store import select_communities
from .splits import ensure_topic_holdout, unit

TEMPLATES = (
    "If you were in the online community r/{community}, what would you post?",
    "Write a post you would share with r/{community}.",
    "As a member of r/{community}, what is on your mind today?",
    "What would you write in a new post on r/{community}?",
    "Share something with the r/{community} community.",
    "You are a regular on r/{community}. Write your next post.",
    "Post something the way people in r/{community} do.",
    "What would a member of r/{community} say right now?",
    "Write a comment for a thread on r/{community}.",
    "Reply to a thread on r/{community} the way you usually would.",
    "Tell r/{community} what you think.",
    "What do you want to tell the people of r/{community}?",
)
TOPIC_TEMPLATES = (
    "If you were in the online community r/{community}, what would you post about {topic}?",
    "As a member of r/{community}, share your view on {topic}.",
    "Write a post for r/{community} about {topic}.",
    "What would you say on r/{community} about {topic}?",
    "r/{community} is discussing {topic}. What is your take?",
    "Tell r/{community} about your experience with {topic}.",
    "Write a comment on r/{community} about {topic}.",
    "What do you think about {topic}? Answer as a member of r/{community}.",
)
_LETTERS = re.compile(r"[^\W\d_]")

# Why a post did not become a pair.
TOO_SHORT = "too short"
JUNK = "junk (few letters or one word repeated)"
DUPLICATE = "duplicate text"


@dataclass
class TemplateOptions:
    min_words: int = 8
    topic_share: float = 0.5  # posts with a topic get a topic template this often
    holdout: float = 0.15
    seed: int = 0


def _is_junk(text: str, words: list[str]) -> bool:
    letters = len(_LETTERS.findall(text))
    if letters < 0.5 * len(text.replace(" ", "").replace("\n", "")):
        return True
    return len({w.lower() for w in words}) < 0.3 * len(words)


def template_pairs(db: sqlite_utils.Database, communities: list[str] | None = None,
                   options: TemplateOptions | None = None) -> dict[str, dict]:
    """Make template pairs for every post of ``communities`` (default: all).

    Returns, per community: posts read, pairs added now, pairs in the store, and
    the reasons posts were skipped.  Re-running adds nothing."""
    options = options or TemplateOptions()
    names = select_communities(db, communities)
    run = db.execute("SELECT max(id) FROM topic_runs").fetchone()[0]
    topic_of: dict[str, tuple[int, str]] = {}
    held_topics: set[int] = set()
    if run is not None:
        held_topics = ensure_topic_holdout(db, run, seed=options.seed)
        for doc_id, topic_id, words in db.execute(
                "SELECT dt.doc_id, t.id, t.keywords FROM doc_topics dt JOIN topics t"
                " ON t.id = dt.topic_id WHERE dt.run_id = ?", [run]):
            topic_of[doc_id] = (topic_id, ", ".join(json.loads(words)[:3]))
    report = {}
    now = time.time()
    for community in names:
        seen: set[str] = set()
        skipped: Counter = Counter()
        rows = []
        for doc_id, text in db.execute("SELECT id, text FROM documents WHERE community = ?"
                                       " ORDER BY id", [community]):
            words = text.split()
            if len(words) < options.min_words:
                skipped[TOO_SHORT] += 1
                continue
            if _is_junk(text, words):
                skipped[JUNK] += 1
                continue
            key = " ".join(words).lower()
            if key in seen:
                skipped[DUPLICATE] += 1
                continue
            seen.add(key)
            topic_id, topic = topic_of.get(doc_id, (None, None))
            if topic and unit(options.seed, "topic-template", doc_id) < options.topic_share:
                pool, fields = TOPIC_TEMPLATES, {"community": community, "topic": topic}
            else:
                pool, fields = TEMPLATES, {"community": community}
            template = pool[int(unit(options.seed, "template", doc_id) * len(pool))]
            split = "test" if unit(options.seed, "split", doc_id) < options.holdout else "train"
            by_topic = None if topic_id is None else (
                "test" if topic_id in held_topics else "train")
            rows.append((template.format(**fields), topic_id, f"template:{doc_id}", split,
                         by_topic, doc_id, text))
        added = _store_pairs(db, community, rows, now)
        total = db.execute("SELECT count(*) FROM community_answers a JOIN instructions i"
                           " ON i.id = a.instruction_id WHERE i.kind = 'template'"
                           " AND a.community = ?", [community]).fetchone()[0]
        report[community] = {"posts": len(rows) + sum(skipped.values()), "added": added,
                             "pairs": total, "skipped": dict(skipped)}
    return report


def _store_pairs(db, community: str, rows: list[tuple], now: float) -> int:
    conn = db.conn
    added = 0
    with conn:
        for question, topic_id, source, split, by_topic, doc_id, text in rows:
            cur = conn.execute(
                "INSERT OR IGNORE INTO instructions (kind, question, topic_id, source, split,"
                " split_by_topic, created_at) VALUES ('template', ?, ?, ?, ?, ?, ?)",
                [question, topic_id, source, split, by_topic, now])
            if cur.rowcount:
                conn.execute(
                    "INSERT INTO community_answers (instruction_id, community, answer, doc_ids)"
                    " VALUES (?, ?, ?, ?)", [cur.lastrowid, community, text, json.dumps([doc_id])])
                added += 1
    return added
