"""LoRA training on the embedded model (PEFT, CPU) and the GGUF adapter in llama.cpp.

One adapter is trained once for the module, on real keto posts (template pairs:
they need no teacher, so the test stays minutes long), with a learning rate high
enough that the adapter clearly moves the model: a weak adapter's logit changes
are mostly quantization noise and no agreement test could tell a right export
from a wrong one.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import CORPUS_2022, cci

from cci_local.generate import template_pairs
from cci_local.ingest import ingest
from cci_local.llm.llama_cpp import LlamaCppBackend, embedded_model_path
from cci_local.store import open_store
from cci_local.train.gguf_lora import from_mlx, gguf_tensors, permute_rows, write_gguf_lora

TRAIN_ARGS = ("train", "keto", "--kind", "template", "--max-examples", "32", "--steps", "12",
              "--lr", "2e-3", "--batch-size", "8", "--micro-batch", "4", "--max-len", "128",
              "--rank", "8", "--alpha", "16", "--checkpoint-every", "4")
PROMPTS = ["What would you post on r/keto?", "Tell me about your breakfast.",
           "How do you lose weight?", "What do you think about sugar?"]


def _copy_store(src, dst):
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    db_path = folder / "t.db"
    db = open_store(db_path)
    ingest(db, [str(CORPUS_2022)])
    template_pairs(db)
    db.conn.close()
    twin = tmp_path_factory.mktemp("twin") / "t.db"
    _copy_store(db_path, twin)  # the same data, for the resume test
    result = cci(*TRAIN_ARGS, db=db_path)
    db = open_store(db_path)
    row = db.execute("SELECT id, path, gguf, modelfile, steps, final_loss, status FROM adapters"
                     ).fetchone()
    return {"db": db, "db_path": db_path, "twin": twin, "output": result, "id": row[0],
            "path": row[1], "gguf": row[2], "modelfile": row[3], "steps": row[4],
            "final_loss": row[5], "status": row[6]}


@pytest.fixture(scope="module")
def torch_model(trained):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    model = PeftModel.from_pretrained(model, f"{trained['path']}/peft")
    model.eval()
    return model, tokenizer


def _torch_delta(model, tokenizer, question):
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        adapted = model(input_ids=ids).logits[0, -1].double().numpy()
        with model.disable_adapter():
            base = model(input_ids=ids).logits[0, -1].double().numpy()
    return adapted - base, adapted


@pytest.mark.slow
def test_gguf_adapter_agrees_with_torch(trained, torch_model, tmp_path):
    model, tokenizer = torch_model
    base = LlamaCppBackend(embedded_model_path(), n_ctx=2048)
    adapted = LlamaCppBackend(embedded_model_path(), n_ctx=2048, lora_path=trained["gguf"])
    # The same adapter without the q/k row permutation: what a naive export writes.
    from peft import get_peft_model_state_dict

    state = {k: v.float().numpy()
             for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()}
    naive_path = write_gguf_lora(tmp_path / "naive.gguf", gguf_tensors(
        state, arch="no-permutation", n_head=9, n_head_kv=3), arch="llama", alpha=16)
    naive = LlamaCppBackend(embedded_model_path(), n_ctx=2048, lora_path=naive_path)
    right, wrong = [], []
    for question in PROMPTS:
        messages = [{"role": "user", "content": question}]
        torch_delta, torch_adapted = _torch_delta(model, tokenizer, question)
        assert np.abs(torch_delta).max() > 3  # the adapter clearly moves the model
        base_logits = base.last_logits(messages)
        cpp_adapted = adapted.last_logits(messages)
        right.append(np.corrcoef(cpp_adapted - base_logits, torch_delta)[0, 1])
        wrong.append(np.corrcoef(naive.last_logits(messages) - base_logits, torch_delta)[0, 1])
        # The same top token, up to a near-tie: llama.cpp runs the Q4_1 base, torch the
        # dequantized weights, so logits differ by ~0.1-0.2 and two tokens within that
        # can swap places (seen once in CI: logits 22.18 vs 22.37 at the top).
        assert cpp_adapted[np.argmax(torch_adapted)] >= cpp_adapted.max() - 0.5
    print(f"logit-delta Pearson, permuted: {np.round(right, 4)}; unpermuted: {np.round(wrong, 4)}")
    assert min(right) >= 0.98
    assert np.mean(wrong) < np.mean(right)


@pytest.mark.slow
def test_adapter_moves_the_model_toward_the_community(trained):
    db = trained["db"]
    held_out = db.execute(
        "SELECT i.question, a.answer FROM instructions i JOIN community_answers a"
        " ON a.instruction_id = i.id WHERE a.community = 'keto' AND i.split = 'test'"
        " ORDER BY i.id LIMIT 16").fetchall()
    base = LlamaCppBackend(embedded_model_path(), n_ctx=2048)
    adapted = LlamaCppBackend(embedded_model_path(), n_ctx=2048, lora_path=trained["gguf"])
    scores = {"base": [0.0, 0], "adapted": [0.0, 0]}
    for question, answer in held_out:
        answer = " ".join(answer.split()[:40])
        messages = [{"role": "user", "content": question}]
        for name, backend in (("base", base), ("adapted", adapted)):
            logprob, n = backend.answer_logprob(messages, answer)
            scores[name][0] += logprob
            scores[name][1] += n
    per_token = {k: s / n for k, (s, n) in scores.items()}
    print(f"held-out keto posts, mean log-likelihood per token: {per_token}")
    assert per_token["adapted"] > per_token["base"] + 0.05


@pytest.mark.slow
def test_adapter_is_registered_with_its_curve_and_exported_with_a_modelfile(trained):
    import gguf

    db = trained["db"]
    assert trained["status"] == "done" and trained["steps"] == 12
    curve = db.execute("SELECT step, loss, tokens_per_s FROM training_curve WHERE adapter_id = ?"
                       " ORDER BY step", [trained["id"]]).fetchall()
    assert [s for s, _, _ in curve] == list(range(1, 13))
    assert curve[-1][1] == pytest.approx(trained["final_loss"])
    assert np.mean([x for _, x, _ in curve[-4:]]) < np.mean([x for _, x, _ in curve[:4]])
    assert all(t > 0 for _, _, t in curve)
    reader = gguf.GGUFReader(trained["gguf"])

    def field(key):
        f = reader.fields[key]
        part = f.parts[f.data[0]]
        return bytes(part).decode() if f.types[0] == gguf.GGUFValueType.STRING else part[0]

    assert field("general.type") == "adapter" and field("adapter.type") == "lora"
    assert field("adapter.lora.alpha") == 16
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.29.ffn_down.weight.lora_b" in names
    assert len(names) == 30 * 7 * 2
    # the Modelfile is written past the privacy gate only (no audit ran: it says so)
    assert trained["modelfile"] is None
    shared = trained["db_path"].parent / "shared"
    exported = cci("adapters", "export", "keto", "-o", str(shared), db=trained["db_path"])
    assert "no privacy audit has run" in exported.stdout
    lines = (shared / "keto" / "Modelfile").read_text().splitlines()
    assert lines == [f"FROM {embedded_model_path().resolve()}",
                     f"ADAPTER {shared / 'keto' / 'adapter.gguf'}"]
    assert (shared / "keto" / "adapter.gguf").read_bytes() == open(trained["gguf"], "rb").read()
    assert (shared / "keto" / "peft" / "adapter_config.json").is_file()
    assert "r/keto: trained on 32 examples, 12 steps" in trained["output"].stdout
    listed = cci("models", db=trained["db_path"]).stdout
    assert "adapters in" in listed and "12/12" in listed
    again = cci(*TRAIN_ARGS, db=trained["db_path"])  # same data and settings: reused
    assert "already trained" in again.stdout


@pytest.mark.slow
def test_training_errors_say_what_to_do(trained):
    no_pairs = cci("train", "keto", db=trained["db_path"], check=False)
    assert no_pairs.returncode == 2
    assert "run `cci-local generate r/keto` first" in no_pairs.stderr
    assert "--kind template" in no_pairs.stderr
    remote = cci("train", "keto", "--kind", "template", "--base", "ollama:llama3.1:8b",
                 db=trained["db_path"], check=False)
    assert remote.returncode == 2 and "training needs the weights on this machine" in \
        remote.stderr


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_adapter(trained):
    from safetensors.numpy import load_file

    twin = trained["twin"]
    proc = subprocess.Popen([sys.executable, "-m", "cci_local", "--db", str(twin), *TRAIN_ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        with sqlite3.connect(twin) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            steps = conn.execute("SELECT max(steps) FROM adapters").fetchone()[0] \
                if "adapters" in tables else None
        if steps and steps >= 4:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # kill -9 after the step-4 checkpoint
    proc.wait()
    with sqlite3.connect(twin) as conn:
        status, steps = conn.execute("SELECT status, steps FROM adapters").fetchone()
    assert status == "training" and 4 <= steps < 12
    resumed = cci(*TRAIN_ARGS, db=twin)
    assert "trained on 32 examples, 12 steps" in resumed.stdout
    with sqlite3.connect(twin) as conn:
        path, curve = conn.execute("SELECT path, (SELECT count(*) FROM training_curve)"
                                   " FROM adapters").fetchone()
    assert curve == 12
    ours = load_file(f"{path}/checkpoint/adapter.safetensors")
    reference = load_file(f"{trained['path']}/checkpoint/adapter.safetensors")
    assert ours.keys() == reference.keys()
    for name in reference:
        np.testing.assert_allclose(ours[name], reference[name], rtol=1e-4, atol=1e-6)


def test_permutation_is_what_llama_cpp_converter_does():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rows = np.arange(576 * 3, dtype=np.float32).reshape(576, 3)
    for n_head in (9, 3):
        permuted = permute_rows(rows, n_head)
        assert not np.array_equal(permuted, rows)
        # transformers undoes the converter's permutation when it reads a GGUF
        restored = LlamaTensorProcessor()._reverse_permute_weights(permuted, n_head, n_head)
        np.testing.assert_array_equal(restored, rows)


def test_mlx_adapter_names_and_layout():
    a = np.random.default_rng(0).normal(size=(576, 8)).astype(np.float32)  # mlx: in x rank
    b = np.random.default_rng(1).normal(size=(8, 192)).astype(np.float32)  # mlx: rank x out
    peft = from_mlx({"model.layers.3.self_attn.k_proj.lora_a": a,
                     "model.layers.3.self_attn.k_proj.lora_b": b})
    tensors = gguf_tensors(peft, arch="llama", n_head=9, n_head_kv=3)
    assert tensors["blk.3.attn_k.weight.lora_a"].shape == (8, 576)
    np.testing.assert_array_equal(tensors["blk.3.attn_k.weight.lora_b"], permute_rows(b.T, 3))
    with pytest.raises(ValueError, match="lm_head"):
        gguf_tensors({"base_model.model.lm_head.lora_A.weight": a}, arch="llama", n_head=9,
                     n_head_kv=3)
    assert json.dumps(sorted(tensors))  # names are plain strings


@pytest.mark.slow
def test_mlx_trainer_smoke_run_exports_a_loadable_adapter(trained):
    """mlx-lm's tuner on Linux CPU (mlx[cpu]) is ~30x slower than PEFT: a tiny run."""
    import gguf

    result = cci("train", "keto", "--trainer", "mlx", "--kind", "template", "--max-examples",
                 "4", "--steps", "2", "--batch-size", "2", "--micro-batch", "2", "--max-len",
                 "64", "--rank", "4", "--alpha", "8", "--lr", "1e-3", db=trained["db_path"])
    assert "trained on 4 examples, 2 steps" in result.stdout
    row = trained["db"].execute("SELECT gguf, trainer, status FROM adapters WHERE trainer = 'mlx'"
                                ).fetchone()
    assert row[1:] == ("mlx", "done")
    names = {t.name: t.shape.tolist() for t in gguf.GGUFReader(row[0]).tensors}
    assert len(names) == 30 * 7 * 2
    assert names["blk.0.attn_q.weight.lora_a"] == [576, 4]  # ggml order: in, rank
    assert names["blk.0.attn_k.weight.lora_b"] == [4, 192]  # rank, out (3 kv heads x 64)
    messages = [{"role": "user", "content": PROMPTS[0]}]
    base = LlamaCppBackend(embedded_model_path(), n_ctx=2048).last_logits(messages)
    adapted = LlamaCppBackend(embedded_model_path(), n_ctx=2048,
                              lora_path=row[0]).last_logits(messages)
    assert np.abs(adapted - base).max() > 1e-3  # llama.cpp applies it

    # its mlx/ folder (mlx-lm's adapters.safetensors and adapter_config.json) comes back
    # through `adapters add` as the same GGUF adapter
    path = trained["db"].execute("SELECT path FROM adapters WHERE trainer = 'mlx'").fetchone()[0]
    added = cci("adapters", "add", f"{path}/mlx", "--community", "keto", db=trained["db_path"])
    assert "(mlx, rank 4" in added.stdout and "trained on 4 of r/keto's pairs" in added.stdout
    imported = trained["db"].execute("SELECT gguf FROM adapters WHERE trainer = 'import:mlx'"
                                     ).fetchone()[0]
    _same_gguf(row[0], imported)
    trained["db"].execute("DELETE FROM adapters WHERE trainer = 'import:mlx'")
    trained["db"].conn.commit()


def _same_gguf(a, b):
    import gguf

    ours, theirs = gguf.GGUFReader(a), gguf.GGUFReader(b)
    assert ours.fields["adapter.lora.alpha"].parts[-1].tolist() == \
        theirs.fields["adapter.lora.alpha"].parts[-1].tolist()
    ours = {t.name: np.array(t.data) for t in ours.tensors}
    theirs = {t.name: np.array(t.data) for t in theirs.tensors}
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        np.testing.assert_allclose(theirs[name], value, rtol=0, atol=1e-7)


@pytest.mark.slow
def test_an_adapter_trained_here_comes_back_on_another_machine(trained, tmp_path):
    """train's peft/ folder, copied to another store with the same data, is added as the
    same GGUF adapter, and the audit finds the texts it trained on (cci_training.json)."""
    import shutil

    from cci_local.evaluate.audit import training_texts

    folder = tmp_path / "copied"
    shutil.copytree(f"{trained['path']}/peft", folder)
    assert json.loads((folder / "cci_training.json").read_text())["examples"] == 32
    elsewhere = tmp_path / "elsewhere.db"
    _copy_store(trained["twin"], elsewhere)
    result = cci("adapters", "add", str(folder), "--community", "keto", db=elsewhere)
    assert "(peft, rank 8" in result.stdout and "trained on 32 of r/keto's pairs" in result.stdout
    db = open_store(elsewhere)
    cur = db.execute("SELECT * FROM adapters WHERE trainer = 'import:peft'")
    row = dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))
    _same_gguf(trained["gguf"], row["gguf"])
    assert row["steps"] == 12 and row["final_loss"] == pytest.approx(trained["final_loss"])
    assert len(training_texts(db, row)) == 32


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_trains_nothing(trained):
    before = trained["db"].execute("SELECT count(*) FROM adapters").fetchone()[0]
    result = cci("train", "keto", "--kind", "template", "--max-examples", "32", "--batch-size",
                 "8", "--max-len", "128", "--dry-run", db=trained["db_path"])
    out = result.stdout
    assert "training plan (nothing trained)" in out and "0.13B parameters" in out
    assert "32 examples" in out and "12 optimizer steps of 8 examples (2 micro-batches" in out
    total = float(re.search(r"peak \(estimate\)\s+([\d.]+) GiB", out).group(1))
    assert 1.0 < total < 8.0  # measured peak RSS for this run: ~3.6 GiB on CPU
    assert trained["db"].execute("SELECT count(*) FROM adapters").fetchone()[0] == before


@pytest.mark.slow
def test_fidelity_of_the_trained_adapter(trained, detoxify_checkpoint, tmp_path):
    """The fidelity stage end to end on the module's adapter (keto, template pairs):
    every model's answers screened and scored next to the real split half, toxicity
    by Detoxify (a local checkpoint), harm by the embedded model as judge; a re-run
    makes no model call.  (The persona-prompted base is left out to save time: it is
    generated the same way as the base, with a system prompt.)"""
    checkpoint, config = detoxify_checkpoint
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("harmful\n")
    bad = cci("fidelity", "keto", "--harm-rubric", str(rubric), db=trained["db_path"],
              check=False)
    assert bad.returncode == 2 and f"{rubric}: the rubric is empty or too short" in bad.stderr
    args = ("fidelity", "keto", "--samples", "12", "--real", "60", "--max-tokens", "48",
            "--no-persona", "--detoxify", str(checkpoint), "--detoxify-config", str(config))
    out = cci(*args, db=trained["db_path"]).stdout
    print(out)
    assert "screened before scoring (perplexity cap" in out
    assert "fidelity to r/keto's real documents, 95% bootstrap CI" in out
    assert "toxicity: Detoxify tiny.ckpt (" in out
    assert "harm: LLM judge embedded (SmolLM2-135M-Instruct.Q4_1.gguf), fixed rubric" in out
    for row in ("aligned:keto", "base", "real (split half)"):
        assert row in out
    db = open_store(trained["db_path"])
    texts = db.execute("SELECT model, count(*), sum(kept) FROM fidelity_texts GROUP BY model"
                       ).fetchall()
    assert {m: n for m, n, _ in texts} == {"aligned:keto": 12, "base": 12}
    kept = {m: k for m, _, k in texts} | {"real (split half)": 12}
    judged = db.execute("SELECT criterion, model, count(*), count(reason), min(score),"
                        " max(score) FROM fidelity_judgments GROUP BY criterion, model"
                        ).fetchall()
    for criterion, model, n, reasons, low, high in judged:
        assert n == kept[model]  # every kept text and 12 real texts, each scored once
        assert reasons == (n if criterion == "harm" else 0)  # the harm judge says why
        assert 0 <= low <= high <= 1
    assert len(judged) == 2 * len(kept)
    calls = db.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    data = json.loads(cci(*args, "--json", db=trained["db_path"]).stdout)
    assert db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == calls
    metrics = data["metrics"]
    real, base = metrics["real (split half)"], metrics["base"]
    # The ceiling: real texts against real texts are hard to tell apart; the base
    # model's answers are easy to tell from real posts.
    assert real["auc"]["value"] < base["auc"]["value"]
    assert base["auc"]["value"] > 0.7
    assert real["emotion_jsd"]["value"] <= base["emotion_jsd"]["value"]
    for values in metrics.values():
        for name, est in values.items():
            assert est["low"] <= est["high"]
            if name in ("auc", "identifiability_f1"):  # one-sample statistics
                assert est["low"] <= est["value"] + 1e-9 <= est["high"] + 2e-9
    # The adapter moves the model's writing toward r/keto: its embeddings sit closer to
    # the real posts' than the base model's.  (Measured over five seeds and two machines:
    # aligned 0.89-1.39 vs base 1.46-1.54.  The identifiability count is too coarse for
    # a 12-step adapter and 12 texts: 1-8 of 12 classified keto vs the base's 0-1.)
    assert metrics["aligned:keto"]["frechet"]["value"] < base["frechet"]["value"]
    assert set(data["confusion"]["base"]) == {"keto", "nutrition"}
    assert data["scorers"]["toxicity"].startswith("Detoxify tiny.ckpt")
    assert all({"toxicity", "harm"} <= set(v) for v in metrics.values())
    assert len(data["harmful"]) == 3 and all(h["reason"] for h in data["harmful"])
    stored = db.execute("SELECT count(*) FROM fidelity_metrics WHERE run_id = ?",
                        [data["run"]]).fetchone()[0]
    assert stored == sum(len(v) for v in metrics.values())
