"""Seeded held-out splits shared by every kind of instruction data.

Two independent holdouts live in the store's ``holdouts`` table, per topic run:
15% of chunk rows at random (unit 'chunk_row') and 15% of topics (unit 'topic',
the unseen-topic test).  Each is drawn once, seeded, then read back, so every
later generation run -- template pairs or teacher rows -- agrees with it."""

from __future__ import annotations

import hashlib
import zlib

import numpy as np
import sqlite_utils


def unit(seed: int, *parts) -> float:
    """A stable pseudo-random number in [0, 1) for these parts and seed."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


_UNITS = {
    "topic": "SELECT id FROM topics WHERE run_id = ? ORDER BY number",
    "chunk_row": "SELECT r.id FROM chunk_rows r JOIN topics t ON t.id = r.topic_id"
                 " WHERE t.run_id = ? ORDER BY t.number, r.row_number",
}


def ensure_holdout(db: sqlite_utils.Database, run_id: int, unit_name: str,
                   share: float = 0.15, seed: int = 0) -> set[int]:
    """The held-out topics or chunk rows of a topic run: drawn once, seeded, stored,
    then read back (so a later run with another share or seed keeps the first)."""
    held = {r[0] for r in db.execute("SELECT unit_id FROM holdouts WHERE run_id = ? AND"
                                     " unit = ?", [run_id, unit_name])}
    if held or share <= 0:
        return held
    ids = [r[0] for r in db.execute(_UNITS[unit_name], [run_id])]
    count = max(1, round(share * len(ids))) if len(ids) > 1 else 0
    order = np.random.default_rng([seed, zlib.crc32(unit_name.encode())]).permutation(len(ids))
    held = {ids[i] for i in order[:count]}
    with db.conn:
        db.conn.executemany("INSERT OR IGNORE INTO holdouts VALUES (?, ?, ?)",
                            [(run_id, unit_name, i) for i in held])
    return held


def ensure_topic_holdout(db: sqlite_utils.Database, run_id: int, share: float = 0.15,
                         seed: int = 0) -> set[int]:
    """The held-out topics of a topic run (the unseen-topic test)."""
    return ensure_holdout(db, run_id, "topic", share, seed)
