"""Exports load with their consumers."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
from conftest import CORPUS_2022

from cci_local.export import export
from cci_local.generate import template_pairs
from cci_local.ingest import ingest


@pytest.fixture
def pairs(db):
    ingest(db, [str(CORPUS_2022)])
    template_pairs(db)
    return db


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from cci_local.llm.llama_cpp import embedded_model_path

    path = embedded_model_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_mlx_jsonl_loads_with_mlx_lm(pairs, tmp_path):
    from mlx_lm.tuner.datasets import load_local_dataset

    counts = export(pairs, "mlx", tmp_path / "mlx")
    assert counts["keto"]["train"] > counts["keto"]["test"] > 0 and counts["keto"]["valid"] > 0
    config = SimpleNamespace(mask_prompt=True)
    train, valid, test = load_local_dataset(tmp_path / "mlx" / "keto", smollm2_tokenizer(),
                                            config)
    assert (len(train), len(valid), len(test)) == (
        counts["keto"]["train"], counts["keto"]["valid"], counts["keto"]["test"])
    tokens, offset = train.process(train[0])
    assert 0 < offset < len(tokens)  # the loss covers the answer only


def test_openai_and_sharegpt_parse_as_json_lines(pairs, tmp_path):
    counts = export(pairs, "openai", tmp_path / "oa", ["nutrition"])
    lines = (tmp_path / "oa" / "nutrition.train.jsonl").read_text().splitlines()
    assert len(lines) == counts["nutrition"]["train"]
    first = json.loads(lines[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    export(pairs, "sharegpt", tmp_path / "sg")
    info = json.loads((tmp_path / "sg" / "dataset_info.json").read_text())
    assert set(info) == {"cci_keto", "cci_nutrition"}
    records = json.loads((tmp_path / "sg" / "keto.json").read_text())
    assert records[0]["conversations"][0]["from"] == "human"


def test_csv_one_row_per_question(pairs, tmp_path):
    export(pairs, "csv", tmp_path / "c")
    with open(tmp_path / "c" / "instructions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == pairs.execute("SELECT count(*) FROM instructions").fetchone()[0]
    assert {"question", "answer_keto", "answer_nutrition", "split", "split_by_topic",
            "topic"} <= set(rows[0])
    assert all(bool(r["answer_keto"]) != bool(r["answer_nutrition"]) for r in rows)
