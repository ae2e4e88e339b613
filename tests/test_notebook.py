"""docs/notebooks/analysis.ipynb runs, cell by cell, against a store made here, and
fails the suite when a cell fails (nbclient raises on the first error).

The store is real: the sample corpora ingested, topics fitted, the survey asked of
the embedded model (base and two personas) and a fidelity run on its answers.  Only
the teacher is the scripted one of test_generate_cross.py (the embedded teacher
needs ~40 s a row; what the notebook reads does not depend on who wrote the
questions)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import CORPUS_2022
from test_generate_cross import good_reply

import cci_local
from cci_local.evaluate.fidelity import JudgeOptions

NOTEBOOK = Path(__file__).parents[1] / "docs" / "notebooks" / "analysis.ipynb"


@pytest.fixture
def study_store(tmp_path, scripted):
    def script(n, messages, schema):
        props = schema["properties"]
        communities = props["open_ended"]["items"]["properties"]["answers"]["required"]
        letters = {c: "ABCD"[(n + i) % 4] for i, c in enumerate(communities)}
        return good_reply(communities, f"call{n}", letters=letters)

    study = cci_local.open(tmp_path / "study.db")
    study.ingest(CORPUS_2022)
    study.topics(embedder="tfidf", reducer="pca", n_topics=12)
    study.generate(teacher=scripted(script), max_rows=40)
    study.survey(scoring="text")
    study.fidelity("r/keto", samples=5, real=30, judges=JudgeOptions(enabled=False))
    study.close()
    return study.path


def test_the_analysis_notebook_runs_on_a_store(study_store, monkeypatch):
    import nbclient
    import nbformat

    monkeypatch.setenv("CCI_STUDY", str(study_store))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    start = time.monotonic()
    nbclient.NotebookClient(notebook, timeout=600, startup_timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    seconds = time.monotonic() - start
    print(f"notebook ran in {seconds:.1f} s")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    text = "".join(o.get("text", "") for o in outputs)
    assert "communities: r/keto, r/nutrition" in text
    assert "1 matrices" in text  # persona: no adapters in this store
    assert "showing 0.10 at a discordant share of 0.5 needs 391 questions" in text
    assert len(images) >= 4  # accuracy, matrix, power curve, fidelity profile
    tables = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "persona:keto" in tables and "min_detectable" in tables
