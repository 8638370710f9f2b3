"""End-to-end tests of the in-process Engine (here with the radix cache disabled)."""

from __future__ import annotations

import os
from typing import Any, Iterator

import pytest
import requests

from sglang.srt.entrypoints.engine import Engine

PROMPTS = ["The capital of France is", "List three fruits:", "def add(a, b):"]
GREEDY = {"temperature": 0.0, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine(model_path=os.environ.get("SGLANG_TEST_MODEL_PATH"), disable_radix_cache=True)
    try:
        yield eng
    finally:
        process = eng._subprocesses.process if eng._subprocesses else None
        eng.shutdown()
        assert process is None or not process.is_alive()


def test_batch_greedy_equals_the_server(engine: Engine, server_url: str) -> None:
    outs = engine.generate(PROMPTS, GREEDY)
    assert isinstance(outs, list) and len(outs) == len(PROMPTS)
    # the same batch through the server: the default model's int4 kernels may round a row
    # differently in passes of other sizes, so both sides get the same passes
    # from an empty cache, as the engine's: cached prefixes change how a prompt is split
    requests.post(server_url + "/flush_cache", timeout=60).raise_for_status()
    body = {"text": PROMPTS, "sampling_params": GREEDY}
    refs = requests.post(server_url + "/generate", json=body, timeout=300).json()
    for prompt, out, ref in zip(PROMPTS, outs, refs):
        assert out["output_ids"] == ref["output_ids"], prompt
        assert out["text"] == ref["text"]


def test_single_prompt_returns_a_dict(engine: Engine) -> None:
    out = engine.generate(PROMPTS[0], {"max_new_tokens": 3, "ignore_eos": True})
    assert isinstance(out, dict)
    assert out["meta_info"]["completion_tokens"] == 3 == len(out["output_ids"])


def test_stream_yields_cumulative_text(engine: Engine) -> None:
    full = engine.generate(PROMPTS[1], GREEDY)
    chunks = list(engine.generate(PROMPTS[1], GREEDY, stream=True))
    assert len(chunks) >= 2
    for prev, cur in zip(chunks, chunks[1:]):
        assert cur["text"].startswith(prev["text"])
    assert chunks[-1]["text"] == full["text"]
    assert chunks[-1]["meta_info"]["finish_reason"] is not None


def test_input_ids_and_logprobs(engine: Engine, tokenizer: Any) -> None:
    ids = tokenizer.encode(PROMPTS[0])
    out = engine.generate(
        input_ids=ids,
        sampling_params=GREEDY,
        return_logprob=True,
        logprob_start_len=0,
        top_logprobs_num=2,
    )
    meta = out["meta_info"]
    assert [e[1] for e in meta["input_token_logprobs"]] == ids
    assert [e[1] for e in meta["output_token_logprobs"]] == out["output_ids"]
    for entry, top in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]):
        assert abs(entry[0] - top[0][0]) < 1e-4 and entry[1] in [t[1] for t in top]


def test_no_prefix_reuse_without_the_radix_cache(engine: Engine) -> None:
    prompt = "A prompt repeated twice to check that nothing is reused from the cache."
    for _ in range(2):
        out = engine.generate(prompt, {"max_new_tokens": 1})
        assert out["meta_info"]["cached_tokens"] == 0


def test_bad_input_raises_value_error_and_engine_keeps_working(engine: Engine) -> None:
    with pytest.raises(ValueError, match="temperature"):
        engine.generate("hi", {"temperature": -1})
    with pytest.raises(ValueError, match="empty"):
        engine.generate("")
    assert engine.generate("hi", {"max_new_tokens": 1})["meta_info"]["completion_tokens"] == 1


def test_server_info_and_flush(engine: Engine) -> None:
    info = engine.get_server_info()
    assert info["disable_radix_cache"] is True
    assert info["num_running_reqs"] == 0 and info["max_total_tokens"] > 0
    assert engine.flush_cache() is True
