"""docs/api-compatibility.md names every request field the routes accept (fails on drift)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from sglang.srt.entrypoints.embeddings_api import EmbeddingRequest
from sglang.srt.entrypoints.field_compat import (
    CHAT_DEFAULT_ONLY,
    COMPLETION_DEFAULT_ONLY,
    EMBEDDINGS_DEFAULT_ONLY,
    ENCODE_DEFAULT_ONLY,
    GENERATE_DEFAULT_ONLY,
)
from sglang.srt.entrypoints.openai_api import ChatCompletionRequest, CompletionRequest
from sglang.srt.managers.io_struct import EmbeddingReqInput, GenerateReqInput
from sglang.srt.sampling.sampling_params import SamplingParams

DOC = Path(__file__).resolve().parents[2] / "docs" / "api-compatibility.md"


def _section(title: str) -> set[str]:
    """Backticked names in the first column of the tables under a `## title` heading."""
    text = DOC.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    names: set[str] = set()
    for line in text[start : end if end > 0 else None].splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    return names


def test_generate_fields_are_documented() -> None:
    fields = {f.name for f in dataclasses.fields(GenerateReqInput)} | GENERATE_DEFAULT_ONLY
    assert fields == _section("`POST /generate`")


def test_sampling_fields_are_documented() -> None:
    fields = {f.name for f in dataclasses.fields(SamplingParams)} - {"stop_strs", "stop_regexes"}
    assert fields | {"sampling_seed"} == _section("`sampling_params`")


def test_openai_fields_are_documented() -> None:
    completion = set(CompletionRequest.model_fields) | COMPLETION_DEFAULT_ONLY
    assert completion == _section("`POST /v1/completions`")
    chat_only = (set(ChatCompletionRequest.model_fields) | CHAT_DEFAULT_ONLY) - completion
    assert chat_only <= _section("`POST /v1/chat/completions`")


def test_embedding_fields_are_documented() -> None:
    encode = {f.name for f in dataclasses.fields(EmbeddingReqInput)} | ENCODE_DEFAULT_ONLY
    assert encode == _section("`POST /encode`")
    openai = set(EmbeddingRequest.model_fields) | EMBEDDINGS_DEFAULT_ONLY
    assert openai == _section("`POST /v1/embeddings`")
