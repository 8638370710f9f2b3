"""--enable-deterministic-inference on the real server and the default model: a prompt's
greedy text and logprobs are the same alone and in a crowded batch with a cached prefix."""

from __future__ import annotations

import concurrent.futures
from typing import Any, Iterator

import pytest
import requests

SYSTEM = "You are a helpful assistant. Answer in one short sentence. "
QUESTIONS = [
    "What is the capital of France?",
    "Name a large animal.",
    "What colour is the sky?",
    "Give me a fruit.",
    "What do bees make?",
    "Which planet is red?",
    "What is two plus two?",
    "Name a musical instrument.",
    "Where do penguins live?",
    "What is ice made of?",
    "Name a month of the year.",
    "What do cows drink?",
]


@pytest.fixture(scope="module")
def url(launch_server_variant: Any) -> Iterator[str]:
    args = ("--enable-deterministic-inference", "--chunked-prefill-size", "16")
    with launch_server_variant(*args) as server:
        yield server.url


def _ask(url: str, text: str) -> tuple[str, list[float]]:
    body = {
        "text": text,
        "sampling_params": {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True},
        "return_logprob": True,
    }
    out = requests.post(url + "/generate", json=body, timeout=300).json()
    return out["text"], [lp[0] for lp in out["meta_info"]["output_token_logprobs"]]


def test_a_prompt_gives_the_same_bits_alone_and_in_a_crowd(url: str) -> None:
    target = SYSTEM + "Which city is the capital of Italy?"
    requests.post(url + "/flush_cache", timeout=30)
    alone = _ask(url, target)
    with concurrent.futures.ThreadPoolExecutor(len(QUESTIONS) + 1) as pool:
        others = [pool.submit(_ask, url, SYSTEM + q) for q in QUESTIONS]
        crowded = pool.submit(_ask, url, target)
        crowded_result = crowded.result()
        [f.result() for f in others]
    again = _ask(url, target)  # its whole prompt cached now
    assert alone[0]
    assert crowded_result == alone
    assert again == alone
