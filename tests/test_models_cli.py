"""`cci-local prompt`, `models` and `doctor`, run as a user runs them."""

from __future__ import annotations

import json

from conftest import cci as cli


def test_prompt_prints_only_the_reply(tmp_path):
    db = tmp_path / "p.db"
    out = cli("prompt", "embedded", "What is the capital of France? Answer in one word.",
              "--max-tokens", "8", db=db)
    assert "Paris" in out.stdout and out.stdout.count("\n") <= 2 and out.stderr == ""
    again = cli("prompt", "embedded", "What is the capital of France? Answer in one word.",
                "--max-tokens", "8", db=db)
    assert again.stdout == out.stdout


def test_prompt_with_schema_prints_json(tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {
        "capital": {"type": "string"}}, "required": ["capital"]}))
    out = cli("prompt", "embedded", "-", "--schema", str(schema), "--max-tokens", "32",
              db=tmp_path / "p.db", input="The capital of France, as JSON.")
    assert isinstance(json.loads(out.stdout)["capital"], str)


def test_prompt_usage_errors(tmp_path):
    bad = cli("prompt", "llama-7000", "hi", db=tmp_path / "p.db", check=False)
    assert bad.returncode == 2 and "unknown model 'llama-7000'" in bad.stderr
    (tmp_path / "bad.json").write_text('{"type": 12}')
    bad = cli("prompt", "embedded", "hi", "--schema", str(tmp_path / "bad.json"),
              db=tmp_path / "p.db", check=False)
    assert bad.returncode == 2 and "not a valid JSON schema" in bad.stderr
    gone = cli("prompt", "ollama:llama3.1:8b", "hi", db=tmp_path / "p.db", check=False,
               env={"OLLAMA_HOST": "http://127.0.0.1:9"})
    assert gone.returncode == 1 and "ollama serve" in gone.stderr


def test_models_lists_registry_and_stage_choices(tmp_path):
    env = {"OLLAMA_HOST": "http://127.0.0.1:9", "OPENAI_API_KEY": ""}
    data = json.loads(cli("models", "--json", db=tmp_path / "m.db", env=env).stdout)
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["embedded"]["available"] is True
    assert by_name["llama3.1-8b"]["available"] is False
    assert "ollama serve" in by_name["llama3.1-8b"]["detail"]
    assert by_name["gpt-4o"]["available"] is False and "OPENAI_API_KEY" in by_name["gpt-4o"][
        "detail"]
    assert [(s["role"], s["model"], s["available"]) for s in data["stages"]] == [
        ("teacher", "embedded", True), ("base", "embedded", True), ("judge", "embedded", True)]
    env["CCI_LOCAL_TEACHER"] = "llama3.1-8b"
    table = cli("models", db=tmp_path / "m.db", env=env).stdout
    assert "teacher   llama3.1-8b   $CCI_LOCAL_TEACHER   no" in table


def test_own_registry_file(tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text('[defaults]\nbase = "tiny"\n[models.tiny]\nmodel = "embedded"\n'
                    'roles = ["base"]\nn_ctx = 1024\n')
    data = json.loads(cli("models", "--json", db=tmp_path / "m.db",
                          env={"CCI_LOCAL_REGISTRY": str(mine)}).stdout)
    assert {"role": "base", "model": "tiny", "from": "registry default", "available": True} \
        .items() <= next(s for s in data["stages"] if s["role"] == "base").items()
    out = cli("prompt", "tiny", "Name the capital city of France.", "--max-tokens", "8",
              db=tmp_path / "m.db", env={"CCI_LOCAL_REGISTRY": str(mine)})
    assert "Paris" in out.stdout


def test_doctor(tmp_path):
    out = cli("doctor", db=tmp_path / "d.db", env={"OLLAMA_HOST": "http://127.0.0.1:9"}).stdout
    for check in ("python", "store", "disk", "memory", "llama-cpp-python", "embedded model",
                  "ollama", "openai key", "training"):
        assert check in out
    assert "answered" in out and "Paris" in out
    # The test environment installs the train extra (torch on the CPU).
    training = out[out.index("training"):]
    assert "torch 2." in training and "peft" in training and "CPU only" in training
