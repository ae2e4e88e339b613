"""Export instruction data for training elsewhere (docs/method.md#export).

- ``mlx``: per community a folder with train/valid/test.jsonl of chat messages,
  what ``mlx_lm.lora --data DIR/<community>`` reads;
- ``openai``: per community <community>.{train,valid,test}.jsonl in OpenAI's
  fine-tuning format;
- ``sharegpt``: per community <community>.json (LLaMA-Factory / axolotl) and a
  dataset_info.json naming them;
- ``csv``: instructions.csv, one row per question with one answer column per
  community (question, answer_<community>, split, split_by_topic, topic).

Chat formats hold the training pairs ('open' and 'template' kinds; ``kinds``
picks); the held-out split is ``test``, and ``valid`` is a seeded 10% of the rest.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import sqlite_utils

from .store import select_communities

FORMATS = ("mlx", "openai", "sharegpt", "csv")
TRAINING_KINDS = ("open", "template")


def _valid(instruction_id: int, seed: int, share: float = 0.1) -> bool:
    digest = hashlib.sha256(f"{seed}:valid:{instruction_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def _pairs(db, community: str, kinds: tuple[str, ...], split_column: str, seed: int):
    """(subset, question, answer) for one community's training pairs."""
    marks = ",".join("?" * len(kinds))
    for iid, question, answer, split in db.execute(
            f"SELECT i.id, i.question, a.answer, coalesce(i.{split_column}, i.split)"
            " FROM instructions i JOIN community_answers a ON a.instruction_id = i.id"
            f" WHERE a.community = ? AND i.kind IN ({marks}) ORDER BY i.id",
            [community, *kinds]):
        subset = "test" if split == "test" else ("valid" if _valid(iid, seed) else "train")
        yield subset, question, answer


def export(db: sqlite_utils.Database, fmt: str, out_dir: str | Path,
           communities: list[str] | None = None, *, kinds: tuple[str, ...] = TRAINING_KINDS,
           split_by: str = "random", seed: int = 0) -> dict[str, dict[str, int]]:
    """Write the files; return rows written per community and subset."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    names = select_communities(db, communities)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split_column = "split_by_topic" if split_by == "topic" else "split"
    if fmt == "csv":
        return {"all": {"rows": _export_csv(db, names, out / "instructions.csv")}}
    counts: dict[str, dict[str, int]] = {}
    info = {}
    for community in names:
        subsets: dict[str, list] = {"train": [], "valid": [], "test": []}
        for subset, question, answer in _pairs(db, community, kinds, split_column, seed):
            subsets[subset].append((question, answer))
        counts[community] = {k: len(v) for k, v in subsets.items()}
        if fmt in ("mlx", "openai"):
            for subset, pairs in subsets.items():
                path = (out / community / f"{subset}.jsonl" if fmt == "mlx"
                        else out / f"{community}.{subset}.jsonl")
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "w", encoding="utf-8") as fh:
                    for question, answer in pairs:
                        fh.write(json.dumps({"messages": [
                            {"role": "user", "content": question},
                            {"role": "assistant", "content": answer}]}, ensure_ascii=False))
                        fh.write("\n")
        else:  # sharegpt
            records = [{"conversations": [{"from": "human", "value": q},
                                          {"from": "gpt", "value": a}], "split": subset}
                       for subset, pairs in subsets.items() for q, a in pairs]
            (out / f"{community}.json").write_text(
                json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
            info[f"cci_{community}"] = {"file_name": f"{community}.json",
                                        "formatting": "sharegpt",
                                        "columns": {"messages": "conversations"}}
    if fmt == "sharegpt":
        (out / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return counts


def _export_csv(db, names: list[str], path: Path) -> int:
    answers: dict[int, dict[str, str]] = {}
    for iid, community, answer in db.execute(
            "SELECT instruction_id, community, answer FROM community_answers"):
        answers.setdefault(iid, {})[community] = answer
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "kind", "question", "options",
                         *[f"answer_{n}" for n in names], "split", "split_by_topic", "topic"])
        for iid, kind, question, options, split, by_topic, keywords in db.execute(
                "SELECT i.id, i.kind, i.question, i.options, i.split, i.split_by_topic,"
                " t.keywords FROM instructions i LEFT JOIN topics t ON t.id = i.topic_id"
                " ORDER BY i.id"):
            per = answers.get(iid, {})
            if not any(n in per for n in names):
                continue
            topic = ", ".join(json.loads(keywords)[:5]) if keywords else ""
            writer.writerow([iid, kind, question, options or "", *[per.get(n, "") for n in names],
                             split, by_topic or "", topic])
            rows += 1
    return rows
