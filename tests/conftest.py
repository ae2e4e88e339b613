"""Shared fixtures.  The real corpora are read from ../shared/data/reddit/ (beside the clone)."""

from __future__ import annotations

import csv
import io
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
import zstandard

from cci_local.llm import Backend, Completion
from cci_local.store import open_store

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CCI_LOCAL_SHARED", ROOT.parent / "shared"))
REDDIT = SHARED / "data" / "reddit"
CORPUS_2022 = REDDIT / "keto_nutrition_2022"
CORPUS_POSTS = REDDIT / "keto_nutrition_posts_comments"


# Names that reach the shared corpora; a test needs them if its code, its fixtures' code,
# or a module-level name they use mentions one (found from the source, transitively).
_SHARED_NAMES = {"SHARED", "REDDIT", "CORPUS_2022", "CORPUS_POSTS", "real_comments",
                 "read_csv_rows", "shared_rows"}


def _needs_shared(item, cache: dict) -> bool:
    import ast
    import inspect
    import textwrap

    module = item.module
    if module not in cache:  # module-level names bound from the shared data
        tree = ast.parse(inspect.getsource(module))
        bound: dict[str, set[str]] = {}
        for node in tree.body:
            names = []
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
            used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            for name in names:  # a name bound twice depends on both definitions
                bound[name] = bound.get(name, set()) | used
        tainted = set(_SHARED_NAMES)
        for node in tree.body:  # names from a test helper module that reads the corpora
            if isinstance(node, ast.ImportFrom) and node.module and node.module != "conftest":
                helper = Path(__file__).parent / f"{node.module}.py"
                if helper.is_file() and re.search(r"\b(" + "|".join(_SHARED_NAMES) + r")\b",
                                                  helper.read_text(encoding="utf-8")):
                    tainted |= {a.asname or a.name for a in node.names}
        while True:
            more = {n for n, used in bound.items() if n not in tainted and used & tainted}
            if not more:
                break
            tainted |= more
        cache[module] = tainted
    tainted = cache[module]
    functions = [item.function]
    for name in item.fixturenames:
        functions += [d.func for d in item._fixtureinfo.name2fixturedefs.get(name, ())]
    for function in functions:
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        except (OSError, TypeError, SyntaxError):
            continue
        if {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} & tainted:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    """Without ../shared (the real corpora), the tests that read it are skipped, each
    with the reason; the others run."""
    if REDDIT.is_dir():
        return
    skip = pytest.mark.skip(reason=f"the shared corpora are missing: expected {REDDIT} "
                            "(or set $CCI_LOCAL_SHARED)")
    cache: dict = {}
    for item in items:
        if _needs_shared(item, cache):
            item.add_marker(skip)


def shared_rows(path: Path) -> list[dict]:
    """read_csv_rows, or [] when the shared corpora are missing (for module-level data
    of test modules, whose tests are then skipped)."""
    return read_csv_rows(path) if path.is_file() else []


def cci(*args, db, env: dict | None = None, input: str | None = None, check: bool = True,
        timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `cci-local --db DB ARGS...` as a user does, in a subprocess (wide tables)."""
    result = subprocess.run([sys.executable, "-m", "cci_local", "--db", str(db), *args],
                            capture_output=True, text=True, timeout=timeout, input=input,
                            env={**os.environ, "COLUMNS": "200", **(env or {})})
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], url: str, log: Path) -> subprocess.Popen:
    """Start an OpenAI-compatible server (a command line) and wait until ``url``/models
    answers.  It logs a lot: to ``log``, not a pipe nobody reads (it would block)."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/models", timeout=2).read()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{' '.join(args[:4])} did not start: "
                                   + log.read_text(errors="replace")[-2000:]) from None
            time.sleep(0.3)


@pytest.fixture
def db(tmp_path):
    return open_store(tmp_path / "store.db")


def read_csv_rows(path: Path) -> list[dict]:
    csv.field_size_limit(2**31 - 1)
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def real_comments(n: int) -> list[dict]:
    """n Pushshift-shaped comment records built from the shared keto/nutrition comments."""
    rows = (shared_rows(CORPUS_POSTS / "keto_comments.csv")
            + shared_rows(CORPUS_POSTS / "nutrition_comment.csv"))
    if not rows:
        return []  # no shared corpora: the tests using these are skipped
    out = []
    for i in range(n):
        row = rows[i % len(rows)]
        out.append({"id": f"c{i:07d}", "subreddit": row["subreddit"], "body": row["body"],
                    "author": f"member_{i % 997}", "created_utc": 1640995200 + i * 7,
                    "score": i % 50, "link_id": f"t3_p{i // 20:05d}",
                    "parent_id": f"t3_p{i // 20:05d}"})
    return out


def ndjson(records) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def zstd_long(data: bytes, window_log: int = 31) -> bytes:
    """Compress like Arctic Shift's dumps (zstd --long=31, streamed: no content size)."""
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=window_log, enable_ldm=True)
    buf = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(
            buf, closefd=False) as writer:
        writer.write(data)
    return buf.getvalue()


def all_text(db_path: Path) -> str:
    """Every value of every table of a store, as one string."""
    conn = sqlite3.connect(db_path)
    parts = []
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        for row in conn.execute(f"SELECT * FROM [{table}]"):
            parts.extend(str(v) for v in row if v is not None)
    return "\n".join(parts)


def tokens(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z0-9_-]+", text))


TOXIC = ["you are an idiot", "shut up you stupid moron", "what a worthless loser you are",
         "idiot moron stupid", "nobody wants you here you pathetic idiot"]
CLEAN = ["i had eggs and bacon for breakfast", "keto helped me lose ten pounds",
         "how many carbs are in an apple", "thanks for the helpful advice",
         "protein keeps me full until lunch"]


@pytest.fixture(scope="session")
def detoxify_checkpoint(tmp_path_factory):
    """A real Detoxify checkpoint (its training config + state dict, as Detoxify's
    releases are) of a tiny BERT trained here to flag insults, with its config and
    tokenizer in a folder: Detoxify's own loader reads it offline.  The released
    checkpoints are not on PyPI, so none can be fetched here."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("detoxify")
    words = sorted({w for t in TOXIC + CLEAN for w in t.split()})
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    config = BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=6,
                        max_position_embeddings=128)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    inputs = tokenizer(TOXIC + CLEAN, return_tensors="pt", padding=True)
    labels = torch.tensor([[1.0] * 6] * len(TOXIC) + [[0.0] * 6] * len(CLEAN))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(**inputs).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    classes = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    torch.save({"config": {"arch": {"args": {
        "model_type": "bert-base-uncased", "model_name": "BertForSequenceClassification",
        "tokenizer_name": "BertTokenizer", "num_classes": 6}},
        "dataset": {"args": {"classes": classes}}}, "state_dict": model.state_dict()},
        folder / "tiny.ckpt")
    return folder / "tiny.ckpt", folder


class ScriptedBackend(Backend):
    """A fake model for logic tests: its reply to the n-th call is
    ``script(n, messages, schema)`` (a string, or an object sent as JSON).  It keeps
    every request, and how many calls overlapped (``max_active``)."""

    spec = "scripted"
    context_length = 8192

    def __init__(self, script, concurrent=False, delay=0.0):
        import threading

        super().__init__()
        self.script, self.concurrent, self.delay = script, concurrent, delay
        self.requests: list[list[dict]] = []
        self.active = self.max_active = 0
        self._lock = threading.Lock()

    def identity(self, file_hash):
        return f"{self.spec}:v1"

    def chat(self, messages, *, schema=None, sampling=None):
        import json
        import time

        with self._lock:
            n = len(self.requests)
            self.requests.append(messages)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            reply = self.script(n, messages, schema)
            return Completion(reply if isinstance(reply, str) else json.dumps(reply), 100, 50)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def scripted():
    """The ScriptedBackend class: ``scripted(lambda n, messages, schema: ...)``."""
    return ScriptedBackend
