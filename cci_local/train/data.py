"""A community's training pairs, in the base model's chat template, loss on the answer only."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import sqlite_utils

from .dedup import Dedup
from .dedup import dedup as remove_duplicates

IGNORE = -100  # label of a token the loss skips (the prompt)


def seeded_sample(rows: list, n: int | None, seed: int) -> list:
    """``n`` of ``rows`` chosen by ``seed``, in their original order (all when ``n`` is
    None or not fewer): the one sampling rule train, export and the audit share."""
    if n is None or len(rows) <= n:
        return list(rows)
    keep = np.sort(np.random.default_rng(seed).permutation(len(rows))[:n])
    return [rows[i] for i in keep]


def training_rows(db: sqlite_utils.Database, community: str, kinds: tuple[str, ...] = ("open",),
                  split: str = "train", max_examples: int | None = None,
                  seed: int = 0, split_by: str = "random", dedup: str = "none") -> list[dict]:
    """This community's ``kinds`` pairs in ``split`` as dicts (id, kind, document_id for a
    template pair, question, answer), in a stable order; ``max_examples`` keeps a seeded
    sample.  ``split_by`` 'topic' reads the unseen-topic split, so an adapter never sees
    a held-out topic.  ``dedup`` (none, exact, near): duplicate answers are removed
    first, the first by id kept (train/dedup.py), then the sample is drawn."""
    return select_rows(db, community, kinds, split, max_examples, seed, split_by, dedup)[0]


def select_rows(db: sqlite_utils.Database, community: str, kinds: tuple[str, ...] = ("open",),
                split: str = "train", max_examples: int | None = None, seed: int = 0,
                split_by: str = "random", dedup: str = "none") -> tuple[list[dict], Dedup]:
    """training_rows() and what its dedup removed (before the sample was drawn)."""
    column = {"random": "i.split", "topic": "coalesce(i.split_by_topic, i.split)"}[split_by]
    marks = ",".join("?" * len(kinds))
    rows = db.execute(
        "SELECT i.id, i.kind, i.source, i.question, a.answer FROM instructions i"
        " JOIN community_answers a ON a.instruction_id = i.id WHERE a.community = ?"
        f" AND i.kind IN ({marks}) AND {column} = ? ORDER BY i.id",
        [community, *kinds, split]).fetchall()
    removed = remove_duplicates([a for *_, a in rows], dedup)
    rows = [rows[i] for i in removed.keep]
    return seeded_sample([
        {"id": i, "kind": kind,
         "document_id": source.removeprefix("template:") if kind == "template" else None,
         "question": q, "answer": a} for i, kind, source, q, a in rows], max_examples,
        seed), removed


def training_pairs(db: sqlite_utils.Database, community: str, kinds: tuple[str, ...] = ("open",),
                   split: str = "train", max_examples: int | None = None,
                   seed: int = 0, split_by: str = "random",
                   dedup: str = "none") -> list[tuple[str, str]]:
    """(question, this community's answer) of training_rows(): what train() trains on."""
    return [(r["question"], r["answer"]) for r in training_rows(
        db, community, kinds, split, max_examples, seed, split_by, dedup)]


def data_hash(pairs: list[tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()[:16]


def chat_prompt(tokenizer, question: str) -> list[int]:
    """The tokens of a user turn and the assistant's header: what a model answers after."""
    return list(tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True,
        return_dict=False))


def encode(tokenizer, pairs: list[tuple[str, str]], max_len: int | None,
           skipped: list[int] | None = None) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per pair: the whole exchange in the chat template, the prompt's
    labels IGNORE so the loss covers the answer (and its end-of-turn) only.  Cut at
    ``max_len`` tokens (None: never); a pair whose prompt alone fills it is skipped (its
    index appended to ``skipped``)."""
    out = []
    for index, (question, answer) in enumerate(pairs):
        prompt = chat_prompt(tokenizer, question)
        full = list(tokenizer.apply_chat_template(
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            tokenize=True, return_dict=False))
        if full[:len(prompt)] != prompt:  # a template that rewrites earlier turns
            raise ValueError("the chat template does not keep the prompt as a prefix of the "
                             "whole exchange; cannot mask the prompt")
        if max_len is not None:
            if len(prompt) >= max_len:
                if skipped is not None:
                    skipped.append(index)
                continue
            full = full[:max_len]
        out.append((full, [IGNORE] * len(prompt) + full[len(prompt):]))
    return out
