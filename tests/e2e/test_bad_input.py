"""Bad input gets HTTP 400 naming the problem, and the server keeps serving; disconnects are cleaned up."""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
import requests

GOOD = {
    "text": "The capital of France is",
    "sampling_params": {"max_new_tokens": 4, "temperature": 0},
}


def post_raw(url: str, path: str, data: bytes) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    return requests.post(url + path, data=data, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def reference(server_url: str) -> dict[str, Any]:
    res = requests.post(server_url + "/generate", json=GOOD, timeout=300)
    assert res.status_code == 200, res.text
    return res.json()


def assert_still_serving(url: str, reference: dict[str, Any]) -> None:
    res = requests.post(url + "/generate", json=GOOD, timeout=300)
    assert res.status_code == 200, res.text
    assert res.json()["output_ids"] == reference["output_ids"]


def _long_ids(model_info: dict[str, Any]) -> list[int]:
    return [42] * (model_info["context_length"] + 5)


NATIVE_CASES = [
    ("malformed JSON", b'{"text": "hi", ', "malformed JSON"),
    ("body not an object", b"[1, 2]", "object"),
    ("unknown field", {"text": "hi", "temprature": 0.5}, "temprature"),
    ("unknown sampling field", {"text": "hi", "sampling_params": {"max_tokens": 3}}, "max_tokens"),
    ("negative temperature", {"text": "hi", "sampling_params": {"temperature": -1}}, "temperature"),
    ("top_p out of range", {"text": "hi", "sampling_params": {"top_p": 1.5}}, "top_p"),
    ("wrong type", {"text": "hi", "sampling_params": {"max_new_tokens": "ten"}}, "max_new_tokens"),
    (
        "negative max tokens",
        {"text": "hi", "sampling_params": {"max_new_tokens": -1}},
        "max_new_tokens",
    ),
    ("empty prompt", {"text": ""}, "empty"),
    ("empty input_ids", {"input_ids": []}, "input_ids"),
    ("no prompt", {"sampling_params": {}}, "text"),
    ("both prompts", {"text": "hi", "input_ids": [1, 2]}, "exactly one"),
    ("token out of vocab", {"input_ids": [1, 10**9]}, "input_ids"),
    ("invalid regex", {"text": "hi", "sampling_params": {"regex": "(ab"}}, "regex"),
    ("empty regex", {"text": "hi", "sampling_params": {"regex": ""}}, "regex"),
    (
        "invalid json_schema",
        {"text": "hi", "sampling_params": {"json_schema": "{oops"}},
        "json_schema",
    ),
    ("invalid ebnf", {"text": "hi", "sampling_params": {"ebnf": "root ::= ("}}, "ebnf"),
    (
        "two grammars",
        {"text": "hi", "sampling_params": {"regex": "a+", "json_schema": {"type": "object"}}},
        "at most one",
    ),
    (
        "bad logprob_start_len",
        {"text": "hi", "return_logprob": True, "logprob_start_len": 50},
        "logprob_start_len",
    ),
    (
        "bad top_logprobs_num",
        {"text": "hi", "return_logprob": True, "top_logprobs_num": -2},
        "top_logprobs_num",
    ),
    (
        "sampling_params list of the wrong length",
        {"text": ["a", "b"], "sampling_params": [{"max_new_tokens": 1}]},
        "sampling_params",
    ),
    ("n out of range", {"text": "hi", "sampling_params": {"n": 0}}, "n must"),
]


@pytest.mark.parametrize("name,body,expected", NATIVE_CASES, ids=[c[0] for c in NATIVE_CASES])
def test_native_bad_input_gets_400_between_good_requests(
    server_url: str, reference: dict[str, Any], name: str, body: Any, expected: str
) -> None:
    if isinstance(body, bytes):
        res = post_raw(server_url, "/generate", body)
    else:
        res = requests.post(server_url + "/generate", json=body, timeout=120)
    assert res.status_code == 400, (name, res.text)
    message = res.json()["error"]["message"]
    assert expected.lower() in message.lower(), message
    assert_still_serving(server_url, reference)


def test_too_long_prompt_names_the_numbers(
    server_url: str, reference: dict[str, Any], model_info: dict[str, Any]
) -> None:
    ids = _long_ids(model_info)
    res = requests.post(server_url + "/generate", json={"input_ids": ids}, timeout=120)
    assert res.status_code == 400
    message = res.json()["error"]["message"]
    assert str(len(ids)) in message and str(model_info["context_length"]) in message
    assert_still_serving(server_url, reference)


def test_stream_request_with_bad_input_is_a_plain_400(
    server_url: str, reference: dict[str, Any]
) -> None:
    body = {"text": "hi", "stream": True, "sampling_params": {"temperature": -3}}
    res = requests.post(server_url + "/generate", json=body, timeout=120)
    assert res.status_code == 400 and "temperature" in res.json()["error"]["message"]
    assert_still_serving(server_url, reference)


OPENAI_CASES = [
    ("/v1/completions", b'{"prompt": ', "malformed JSON"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -5}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "frobnicate": True}, "frobnicate"),
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema"},
        },
        "schema",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "regex": "(("},
        "regex",
    ),
]


@pytest.mark.parametrize("path,body,expected", OPENAI_CASES)
def test_openai_bad_input_gets_openai_error(
    server_url: str, reference: dict[str, Any], path: str, body: Any, expected: str
) -> None:
    if isinstance(body, bytes):
        res = post_raw(server_url, path, body)
    else:
        res = requests.post(server_url + path, json=body, timeout=120)
    assert res.status_code == 400, res.text
    error = res.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400
    assert expected.lower() in error["message"].lower(), error
    assert_still_serving(server_url, reference)


# ------------------------------------------------------------------ disconnects


def wait_idle(url: str, deadline_s: float = 120.0) -> dict[str, Any]:
    """Poll server_info until no request is running or pending; return the last info."""
    end = time.monotonic() + deadline_s
    while True:
        info = requests.get(url + "/get_server_info", timeout=60).json()
        idle = info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0
        if (idle and info["num_pending_requests"] == 0) or time.monotonic() > end:
            return info
        time.sleep(0.5)


LONG = {
    "text": "Count to one thousand:",
    "sampling_params": {"max_new_tokens": 4000, "ignore_eos": True},
}


def test_client_disconnect_mid_stream_is_aborted(
    server_url: str, reference: dict[str, Any]
) -> None:
    with requests.post(
        server_url + "/generate", json={**LONG, "stream": True}, stream=True, timeout=300
    ) as res:
        lines = res.iter_lines()
        got = [line for line in (next(lines) for _ in range(3)) if line.startswith(b"data:")]
        assert got, "no event before disconnecting"
    info = wait_idle(server_url)
    assert info["num_running_reqs"] == 0 and info["num_pending_requests"] == 0, info
    assert_still_serving(server_url, reference)


def test_client_disconnect_while_waiting_is_aborted(
    server_url: str, reference: dict[str, Any]
) -> None:
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(server_url + "/generate", json=LONG, timeout=(10, 2))
    info = wait_idle(server_url)
    assert info["num_running_reqs"] == 0 and info["num_pending_requests"] == 0, info
    assert_still_serving(server_url, reference)


def test_openai_stream_disconnect_is_aborted(server_url: str, reference: dict[str, Any]) -> None:
    body = {
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 4000,
        "ignore_eos": True,
        "stream": True,
    }
    with requests.post(
        server_url + "/v1/chat/completions", json=body, stream=True, timeout=300
    ) as res:
        assert next(res.iter_lines()).startswith(b"data:")
    info = wait_idle(server_url)
    assert info["num_running_reqs"] == 0 and info["num_pending_requests"] == 0, info
    assert_still_serving(server_url, reference)


# ------------------------------------------------------------------ a tiny KV cache


@pytest.fixture(scope="module")
def tiny_url(launch_server_variant: Any) -> Iterator[str]:
    with launch_server_variant("--max-total-tokens", "160") as server:
        yield server.url


def test_tiny_kv_cache_rejects_what_cannot_fit_and_queues_the_rest(tiny_url: str) -> None:
    res = requests.post(tiny_url + "/generate", json={"input_ids": [42] * 200}, timeout=120)
    assert res.status_code == 400 and "160" in res.json()["error"]["message"]
    prompts = [f"Request number {i} asks for a short answer please" for i in range(4)]
    params = {"max_new_tokens": 40, "ignore_eos": True, "temperature": 0}
    res = requests.post(
        tiny_url + "/generate", json={"text": prompts, "sampling_params": params}, timeout=600
    )
    assert res.status_code == 200, res.text
    assert [o["meta_info"]["completion_tokens"] for o in res.json()] == [40] * 4
