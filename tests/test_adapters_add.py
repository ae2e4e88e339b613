"""Adapters trained anywhere come into the store (`cci-local adapters add`), and the
LLaMA-Factory export (`cci-local export --format llamafactory`).

The adapters here are written by PEFT itself (get_peft_model + save_pretrained on
the embedded model's weights), laid out as LLaMA-Factory, axolotl and unsloth save
them; an mlx-lm adapter is the same matrices in mlx-lm's names, layout and config.
llama.cpp, the GGUF conversion and the store are real.  The real LLaMA-Factory run
is benchmarks/bench_llamafactory.py (its own virtual environment: its pins conflict
with this project's).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cci_local.cli import cli
from cci_local.llm.llama_cpp import LlamaCppBackend, embedded_model_path
from cci_local.store import open_store

RANK, ALPHA = 4, 8.0
PROMPTS = ["What do you eat for breakfast?", "How do you lose weight?"]
ROWS = "subreddit,author,created_utc,title,selftext\n" + "".join(
    f"{c},u{i},{1650000000 + i},Post {i} on {c},Body of post number {i} about {c} and food\n"
    for c in ("keto", "nutrition") for i in range(12))


def cci(*args, db):
    """`cci-local --db DB ARGS...` in-process (click's runner): exit code and output."""
    return CliRunner().invoke(cli, ["--db", str(db), *args])


@pytest.fixture(scope="module")
def torch_base():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    return model, tokenizer


def _peft_folder(model, folder, *, seed=0, scale_b=0.3, zero_b=False, **extra):
    """A LoRA adapter written by PEFT, with random non-zero matrices (an adapter that
    moves the model) unless ``zero_b`` (PEFT's initialisation: a no-op adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                        "up_proj", "down_proj"],
                        init_lora_weights=zero_b, **extra)
    peft = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name and not zero_b:
                p.mul_(scale_b / p.abs().max())
    peft.save_pretrained(str(folder), save_embedding_layers=False)
    return peft


def _delta(peft, tokenizer, question):
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        tuned = peft(input_ids=ids).logits[0, -1].double().numpy()
        with peft.disable_adapter():
            plain = peft(input_ids=ids).logits[0, -1].double().numpy()
    return tuned - plain


@pytest.fixture(scope="module")
def made(tmp_path_factory, torch_base):
    """Adapter folders written once for the module: PEFT (plain and rsLoRA), PEFT with
    zero lora_B, and the plain one's matrices as mlx-lm saves them; and the torch
    logit deltas of the plain and rsLoRA adapters."""
    from safetensors.numpy import load_file, save_file

    model, tokenizer = torch_base
    root = tmp_path_factory.mktemp("made")
    out = {}
    for name, kwargs in (("peft", {}), ("rslora", {"use_rslora": True}),
                         ("zero", {"zero_b": True})):
        peft = _peft_folder(model, root / name, **kwargs)
        if name != "zero":
            out[f"{name}_delta"] = [_delta(peft, tokenizer, q) for q in PROMPTS]
        peft.unload()  # the base back as it was, for the next adapter
    state = load_file(str(root / "peft" / "adapter_model.safetensors"))
    mlx = root / "mlx"
    mlx.mkdir()
    save_file({k.replace("base_model.model.", "").replace(".lora_A.weight", ".lora_a")
               .replace(".lora_B.weight", ".lora_b"): np.ascontiguousarray(v.T)
               for k, v in state.items()}, str(mlx / "adapters.safetensors"))
    (mlx / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": "lora", "num_layers": 30,
        "lora_parameters": {"rank": RANK, "scale": ALPHA / RANK, "dropout": 0.0}}))
    return out | {"root": root}


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text(ROWS, encoding="utf-8")
    db_path = tmp_path / "s.db"
    cci("ingest", str(path), db=db_path)
    return db_path


def _gguf(path):
    import gguf

    from cci_local.train.gguf_lora import gguf_value

    reader = gguf.GGUFReader(str(path))
    return ({t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors},
            gguf_value(reader, "adapter.lora.alpha"))


def _rows(db_path):
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT * FROM adapters ORDER BY id").fetchall()


@pytest.mark.slow
def test_a_peft_folder_is_checked_converted_used_and_removed(made, store, tmp_path):
    result = cci("adapters", "add", str(made["root"] / "peft"), "--community", "r/keto",
                 db=store)
    assert result.exit_code == 0, result.output
    assert "r/keto: added adapter 1 (peft, rank 4" in result.output
    assert "llama.cpp loads it" in result.output
    assert "no record of its training data" in result.output
    db = open_store(store)
    row = db.execute("SELECT trainer, gguf, settings, path FROM adapters").fetchone()
    assert row[0] == "import:peft"
    provenance = json.loads(row[2])["imported"]
    assert provenance["config"]["r"] == RANK and len(provenance["sha256"]) == 64
    assert provenance["checked"]["blocks"] == list(range(30))

    # llama.cpp runs the GGUF adapter as PEFT runs the folder: the logit changes agree
    # (up to the Q4_1 base llama.cpp runs against torch's dequantized weights).
    base = LlamaCppBackend(embedded_model_path(), n_ctx=512)
    adapted = base.with_adapter(row[1])
    for question, torch_delta in zip(PROMPTS, made["peft_delta"], strict=True):
        messages = [{"role": "user", "content": question}]
        cpp = adapted.last_logits(messages) - base.last_logits(messages)
        assert np.abs(torch_delta).max() > 3  # well above the Q4_1 base's ~0.2 noise
        assert np.corrcoef(cpp, torch_delta)[0, 1] >= 0.98

    # every stage finds it as the community's adapter; status counts it as imported
    from cci_local.respondents import newest_adapter
    from cci_local.train import resolve_base

    assert newest_adapter(db, "keto", resolve_base("embedded"))["gguf"] == row[1]
    status = json.loads(cci("status", "--json", db=store).output)["communities"]
    assert {r["community"]: r["imported adapters"] for r in status} == {"keto": 1,
                                                                        "nutrition": 0}
    again = cci("adapters", "add", str(made["root"] / "peft"), "--community", "keto", db=store)
    assert "already in the store (adapter 1)" in again.output and len(_rows(store)) == 1

    # the audit cannot know what it trained on, and says so
    audit = cci("audit", "keto", db=store)
    assert audit.exit_code != 0 and "no record of what it trained on" in audit.output

    listed = cci("adapters", "list", "--json", db=store)
    [entry] = json.loads(listed.output)
    assert (entry["id"], entry["trainer"], entry["audit"]) == (1, "import:peft", None)
    gone = cci("adapters", "remove", "1", db=store)
    assert gone.exit_code == 0 and "adapter 1 removed" in gone.output
    assert _rows(store) == [] and not Path(row[3]).exists()
    missing = cci("adapters", "remove", "1", db=store)
    assert missing.exit_code != 0 and "no adapter 1 in the store" in missing.output


@pytest.mark.slow
def test_mlx_and_rslora_adapters_convert_to_what_llama_cpp_needs(made, store):
    assert cci("adapters", "add", str(made["root"] / "peft"), "--community", "keto",
               db=store).exit_code == 0
    result = cci("adapters", "add", str(made["root"] / "mlx" / "adapters.safetensors"),
                 "--community", "nutrition", db=store)
    assert result.exit_code == 0, result.output
    assert "(mlx, rank 4" in result.output
    ggufs = [g for (g,) in open_store(store).execute("SELECT gguf FROM adapters ORDER BY id")]
    (peft, peft_alpha), (mlx, mlx_alpha) = _gguf(ggufs[0]), _gguf(ggufs[1])
    assert peft_alpha == mlx_alpha == ALPHA and peft.keys() == mlx.keys()
    for name in peft:  # mlx's transposed matrices and scale come back to the same adapter
        np.testing.assert_allclose(mlx[name], peft[name], rtol=0, atol=1e-7)

    # rsLoRA scales by alpha / sqrt(r), which llama.cpp's alpha / r cannot say: the
    # scale goes into lora_b and alpha is 0 (llama.cpp then scales by 1)
    result = cci("adapters", "add", str(made["root"] / "rslora"), "--community", "keto",
                 db=store)
    assert result.exit_code == 0, result.output
    gguf_path = open_store(store).execute("SELECT gguf FROM adapters ORDER BY id DESC"
                                          ).fetchone()[0]
    assert _gguf(gguf_path)[1] == 0
    base = LlamaCppBackend(embedded_model_path(), n_ctx=512)
    adapted = base.with_adapter(gguf_path)
    for question, torch_delta in zip(PROMPTS, made["rslora_delta"], strict=True):
        messages = [{"role": "user", "content": question}]
        cpp = adapted.last_logits(messages) - base.last_logits(messages)
        assert np.corrcoef(cpp, torch_delta)[0, 1] >= 0.98


def _written(folder, *, zero_b=False, config=None, tensors=None):
    """A LoRA folder in PEFT's names and layout (as axolotl and unsloth save it),
    written with numpy in the base's shapes: random matrices, or lora_B zero."""
    from safetensors.numpy import save_file

    from cci_local.adapters_import import base_shapes
    from cci_local.train import resolve_base

    rng = np.random.default_rng(0)
    state = {}
    for (layer, module), (n_out, n_in) in base_shapes(resolve_base("embedded"))[2].items():
        stem = f"base_model.model.model.layers.{layer}.{module}"
        state[f"{stem}.lora_A.weight"] = rng.normal(0, 0.02, (RANK, n_in)).astype(np.float32)
        state[f"{stem}.lora_B.weight"] = (np.zeros((n_out, RANK), np.float32) if zero_b else
                                          rng.normal(0, 0.02, (n_out, RANK)).astype(np.float32))
    folder.mkdir(parents=True)
    save_file(tensors(state) if tensors else state, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj"]} | (config or {})))
    return folder


def test_bad_adapters_get_one_clear_error_and_change_nothing(store, tmp_path):
    good = cci("adapters", "add", str(_written(tmp_path / "good")), "--community", "keto",
               db=store)
    assert good.exit_code == 0, good.output
    before, files = _rows(store), sorted((tmp_path / "adapters").rglob("*"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not an adapter")
    (tmp_path / "half").mkdir()
    shutil.copy(tmp_path / "good" / "adapter_config.json", tmp_path / "half")

    def wider(state):
        k = next(k for k in state if "layers.0.self_attn.q_proj.lora_A" in k)
        return state | {k: np.zeros((RANK, 100), np.float32)}

    def deeper(state):
        return {k.replace("layers.29.", "layers.40."): v for k, v in state.items()}

    def embeddings(state):
        return state | {"base_model.model.model.embed_tokens.lora_A.weight":
                        np.zeros((RANK, 49152), np.float32)}

    cases = {
        tmp_path / "nowhere": "no such folder",
        tmp_path / "notes": "is not an adapter folder: expected adapter_config.json",
        tmp_path / "half": "adapter_config.json but no adapter_model.safetensors",
        _written(tmp_path / "zero", zero_b=True): "moves no next-token log-probability",
        _written(tmp_path / "shapes", tensors=wider):
            "takes 576 in and gives 576 out (in side differs): the adapter was trained on "
            "another base",
        _written(tmp_path / "blocks", tensors=deeper):
            "LoRA on block 40, but embedded has 30 blocks",
        _written(tmp_path / "embed", tensors=embeddings): "is not LoRA on a transformer block",
        _written(tmp_path / "dora", config={"use_dora": True}): "a DoRA adapter",
        _written(tmp_path / "ia3", config={"peft_type": "IA3"}): "a IA3 adapter",
        _written(tmp_path / "heads", config={"modules_to_save": ["lm_head"]}):
            "modules_to_save",
    }
    for path, expected in cases.items():
        result = cci("adapters", "add", str(path), "--community", "keto", db=store)
        assert result.exit_code != 0, (path, result.output)
        assert expected in result.output, (path, result.output)
        assert result.output.count("error:") == 1
    wrong = cci("adapters", "add", str(tmp_path / "good"), "--community", "r/nothere",
                db=store)
    assert wrong.exit_code != 0 and "no community 'r/nothere' in the store" in wrong.output
    assert _rows(store) == before
    assert sorted((tmp_path / "adapters").rglob("*")) == files  # no file left behind


@pytest.mark.slow
def test_a_llamafactory_export_comes_back_with_its_training_record(made, tmp_path):
    """The export writes what train would train on; an adapter saved where the YAML
    puts it (saves/<community>) is added with that record, so the audit can find its
    training texts."""
    import yaml

    from cci_local.evaluate.audit import training_texts
    from cci_local.generate import template_pairs
    from cci_local.train.data import training_pairs

    path = tmp_path / "corpus.csv"
    path.write_text(ROWS, encoding="utf-8")
    db_path = tmp_path / "s.db"
    cci("ingest", str(path), db=db_path)
    db = open_store(db_path)
    template_pairs(db)
    out = tmp_path / "lf"
    result = cci("export", "keto", "nutrition", "--format", "llamafactory", "--kind", "template",
                 "--steps", "4", "-o", str(out), db=db_path)
    assert result.exit_code == 0, result.output
    assert "keto: " in result.output and "llamafactory-cli train" in result.output
    pairs = training_pairs(db, "keto", ("template",), dedup="near")
    records = json.loads((out / "keto.json").read_text())
    assert [(r["conversations"][0]["value"], r["conversations"][1]["value"]) for r in records] \
        == pairs
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["cci_keto"] == {"file_name": "keto.json", "formatting": "sharegpt",
                                "columns": {"messages": "conversations"}}
    config = yaml.safe_load((out / "keto.yaml").read_text())
    assert config["model_name_or_path"] == str((out / "base").resolve())
    assert (config["finetuning_type"], config["lora_rank"], config["lora_alpha"]) == \
        ("lora", 16, 32)
    assert config["lora_target"].split(",") == ["q_proj", "k_proj", "v_proj", "o_proj",
                                                "gate_proj", "up_proj", "down_proj"]
    assert config["per_device_train_batch_size"] * config["gradient_accumulation_steps"] == 16
    assert (config["max_steps"], config["learning_rate"], config["dataset"]) == \
        (4, 2e-4, "cci_keto")
    assert config["output_dir"] == str((out / "saves" / "keto").resolve())
    assert "template" not in config and config["bf16"] is False

    # the Hugging Face form holds the GGUF's weights and the chat template train uses
    from transformers import AutoTokenizer

    gguf = embedded_model_path()
    ours = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    theirs = AutoTokenizer.from_pretrained(str(out / "base"))
    messages = [{"role": "user", "content": pairs[0][0]},
                {"role": "assistant", "content": pairs[0][1]}]
    assert theirs.apply_chat_template(messages, tokenize=True, return_dict=False) == \
        ours.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert config["cutoff_len"] >= max(len(ours.apply_chat_template(
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        tokenize=True, return_dict=False)) for q, a in pairs)

    saved = out / "saves" / "keto"
    shutil.copytree(made["root"] / "peft", saved)
    added = cci("adapters", "add", str(saved), "--community", "keto", db=db_path)
    assert added.exit_code == 0, added.output
    assert f"trained on {len(pairs):,} of r/keto's pairs" in added.output
    row = dict(zip(("id", "community", "settings", "examples", "data_hash"), db.execute(
        "SELECT id, community, settings, examples, data_hash FROM adapters").fetchone(),
        strict=True))
    assert [(r["question"], r["answer"]) for r in training_texts(db, row)] == pairs


def test_a_big_gguf_base_is_named_by_its_hub_id(monkeypatch, tmp_path):
    import cci_local.export_llamafactory as lf

    monkeypatch.setattr(lf, "DEQUANTIZE_LIMIT", 1.0)
    db = open_store(tmp_path / "s.db")
    assert lf.hf_base(db, "embedded", tmp_path, None) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", "the registry's hub id for embedded")
    assert lf.hf_base(db, "embedded", tmp_path, "org/model") == ("org/model", "--hf-base")
    assert not (tmp_path / "base").exists()  # nothing dequantized
    with pytest.raises(lf.ExportError, match="name its hub id or folder with --hf-base"):
        lf.hf_base(db, f"gguf:{embedded_model_path()}", tmp_path, None)
