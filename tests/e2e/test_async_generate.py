"""Engine.async_generate and Runtime.async_generate / get_tokenizer against the real runtime."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Iterator

import pytest
import requests

import sglang as sgl
from sglang.srt.entrypoints.engine import Engine

GREEDY = {"temperature": 0.0, "max_new_tokens": 6}
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine(model_path=os.environ.get("SGLANG_TEST_MODEL_PATH"))
    try:
        yield eng
    finally:
        eng.shutdown()


def test_engine_async_generate_equals_generate(engine: Engine) -> None:
    async def both() -> tuple[Any, list[dict]]:
        whole = await engine.async_generate(PROMPT, GREEDY)
        chunks = [c async for c in await engine.async_generate(PROMPT, GREEDY, stream=True)]
        return whole, chunks

    whole, chunks = asyncio.run(both())
    assert whole["text"] == engine.generate(PROMPT, GREEDY)["text"]
    assert chunks and chunks[-1]["text"] == whole["text"]


def test_runtime_async_generate_streams_the_text(server_url: str) -> None:
    runtime = sgl.Runtime.__new__(sgl.Runtime)  # attach to the running server, start none
    runtime.endpoint = sgl.RuntimeEndpoint(server_url)

    async def collect() -> list[str]:
        return [piece async for piece in runtime.async_generate(PROMPT, GREEDY)]

    pieces = asyncio.run(collect())
    body = {"text": PROMPT, "sampling_params": GREEDY}
    reference = requests.post(server_url + "/generate", json=body, timeout=300).json()["text"]
    assert "".join(pieces) == reference
    tokenizer = runtime.get_tokenizer()
    assert tokenizer.decode(tokenizer.encode("Paris", add_special_tokens=False)) == "Paris"
