"""Fuzzing the HTTP API against a real server: no input gets a 5xx or brings the server down.

Two sources of input: schemathesis, from the request schemas of /openapi.json (valid and
invalid bodies, query strings and paths for every operation), and hypothesis-made malformed
bodies for /generate and /v1/chat/completions (random JSON, one field of a valid body replaced
by anything, deep nesting, lone surrogates, invalid UTF-8, huge numbers, wrong types).

Generation lengths are capped (`bounded`) so that a run takes seconds: a long generation is
slow, not an error path. SGLANG_FUZZ_EXAMPLES sets the examples per operation (default 8;
scripts/fuzz_api.sh runs a longer fuzz).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sglang.srt.entrypoints.http_server import create_app
from sglang.srt.entrypoints.openai_api import ChatCompletionRequest
from sglang.srt.managers.io_struct import GenerateReqInput
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402

EXAMPLES = int(os.environ.get("SGLANG_FUZZ_EXAMPLES", "8"))
TIMEOUT_S = 300.0
# Fields whose value is a number of tokens (or of samples) to generate, and their cap.
_LENGTH_FIELDS = {
    "max_new_tokens", "min_new_tokens", "max_tokens", "max_completion_tokens", "min_tokens", "n",
    "best_of",
}  # fmt: skip
_LENGTH_CAP = 3
_SERVER_ERROR_EVENT = re.compile(rb'"code": 5\d\d')

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    # the CI run tries the same examples every time; a longer fuzz sets SGLANG_FUZZ_RANDOM=1
    derandomize=os.environ.get("SGLANG_FUZZ_RANDOM") != "1",
    print_blob=True,
)


def bounded(path: str, body: Any) -> Any:
    """`body` with every generation length capped, in place: values above the cap lowered,
    and where a length is left out (a default of 128 tokens, or the whole context) set."""
    _cap_lengths(body)
    if not isinstance(body, dict):
        return body
    if path == "/generate":
        params = body.get("sampling_params")
        for p in params if isinstance(params, list) else [params]:
            if isinstance(p, dict) and p.get("max_new_tokens") is None:
                p["max_new_tokens"] = _LENGTH_CAP
        if params is None:
            body["sampling_params"] = {"max_new_tokens": _LENGTH_CAP}
    elif path in ("/v1/completions", "/v1/chat/completions") and body.get("max_tokens") is None:
        body["max_tokens"] = _LENGTH_CAP
    return body


def _cap_lengths(body: Any) -> None:
    if isinstance(body, list):
        for item in body:
            _cap_lengths(item)
    elif isinstance(body, dict):
        for key, value in body.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key in _LENGTH_FIELDS and number and value > _LENGTH_CAP:
                body[key] = _LENGTH_CAP
            else:
                _cap_lengths(value)


def assert_not_a_server_error(response: requests.Response) -> None:
    """Below 500, and a stream that started holds no 5xx error event."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert not _SERVER_ERROR_EVENT.search(response.content), response.text[-500:]


# -------------------------------------------------------------------- the OpenAPI document


@pytest.fixture(scope="module")
def openapi_doc() -> dict[str, Any]:
    """The document of the real app; no route runs, so a stand-in tokenizer manager will do."""
    tm = SimpleNamespace(server_args=ServerArgs())
    return create_app(tm).openapi()  # type: ignore[arg-type]


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    name = schema["$ref"].rsplit("/", 1)[1]
    return doc["components"]["schemas"][name]


def test_every_route_with_a_body_publishes_its_schema(openapi_doc: dict[str, Any]) -> None:
    checked = 0
    for path, operations in openapi_doc["paths"].items():
        for method in set(operations) & {"post", "put", "patch"}:
            if path == "/flush_cache":
                continue  # takes no body
            body = operations[method].get("requestBody")
            assert body, f"{method.upper()} {path} publishes no request body"
            schema = _resolve(openapi_doc, body["content"]["application/json"]["schema"])
            assert schema["properties"], (method, path)
            assert schema["additionalProperties"] is False, (method, path)  # unknown -> 400
            checked += 1
    assert checked >= 13  # /generate, /encode, OpenAI, Anthropic, tokenize, abort


def test_the_generate_schema_follows_the_dataclasses(openapi_doc: dict[str, Any]) -> None:
    generate = openapi_doc["components"]["schemas"]["GenerateRequest"]
    assert set(generate["properties"]) == {f.name for f in dataclasses.fields(GenerateReqInput)}
    sampling = openapi_doc["components"]["schemas"]["SamplingParams"]
    fields = {f.name for f in dataclasses.fields(SamplingParams)} - {"stop_strs", "stop_regexes"}
    assert set(sampling["properties"]) == fields


def test_the_chat_schema_is_the_model_the_route_parses_with(openapi_doc: dict[str, Any]) -> None:
    chat = openapi_doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    schema = _resolve(openapi_doc, chat["content"]["application/json"]["schema"])
    assert set(schema["properties"]) == set(ChatCompletionRequest.model_fields)
    assert "messages" in schema["required"]


# -------------------------------------------------------------------- schemathesis


@pytest.fixture(scope="module")
def api_schema(server_url: str) -> Any:
    """The server's OpenAPI document, loaded by schemathesis (requests go to the server)."""
    return schemathesis.openapi.from_url(server_url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_operation_answers_a_server_error(case: Any) -> None:
    if isinstance(case.body, (dict, list)):
        bounded(case.path, case.body)
    response = case.call(timeout=TIMEOUT_S)
    case.validate_response(response, checks=[not_a_server_error])
    assert_not_a_server_error(response)


# -------------------------------------------------------------------- malformed bodies

# Any character, lone surrogates included.
_chars = st.characters(exclude_categories=())
_huge_ints = st.integers(min_value=2**63 - 2, max_value=10**40) | st.integers(
    min_value=-(10**40), max_value=-(2**63) + 2
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | _huge_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(_chars, max_size=20)
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(_chars, max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

GENERATE_BASE = {"text": "Hello", "sampling_params": {"max_new_tokens": 2}}
CHAT_BASE = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}
GENERATE_KEYS = [
    "text", "input_ids", "sampling_params", "return_logprob", "logprob_start_len",
    "top_logprobs_num", "return_text_in_logprobs", "stream", "image_data", "rid", "log_metrics",
    "model", "lora_path", "no_such_field",
]  # fmt: skip
SAMPLING_KEYS = [
    "max_new_tokens", "min_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature",
    "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty",
    "n", "ignore_eos", "regex", "json_schema", "ebnf", "seed", "sampling_seed", "logit_bias",
    "stream_interval", "structural_tag", "no_such_param",
]  # fmt: skip
CHAT_KEYS = [
    "messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
    "stream", "stream_options", "stop", "logprobs", "top_logprobs", "response_format", "tools",
    "tool_choice", "logit_bias", "seed", "regex", "json_schema", "chat_template_kwargs",
    "separate_reasoning", "priority", "no_such_field",
]  # fmt: skip
MESSAGE_KEYS = ["role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content"]


def _dump(value: Any) -> bytes:
    """JSON with lone surrogates escaped and NaN/Infinity as Python writes them."""
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def _replaced_field(
    draw: Any, route: str, base: dict[str, Any], keys: list[str], nested: str
) -> bytes:
    """`base` with one field (top-level, or inside `nested`) set to any JSON value."""
    body = json.loads(json.dumps(base))
    target = body
    if nested == "sampling_params" and draw(st.booleans()):
        target = body["sampling_params"]
        keys = SAMPLING_KEYS
    elif nested == "messages" and draw(st.booleans()):
        target = body["messages"][0]
        keys = MESSAGE_KEYS
    target[draw(st.sampled_from(keys))] = draw(json_values)
    return _dump(bounded(route, body))


@st.composite
def _deeply_nested(draw: Any, base: dict[str, Any], keys: list[str]) -> bytes:
    depth = draw(st.sampled_from([2, 64, 1000, 5000, 100_000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    deep = opener * depth + "1" + closer * depth
    key = draw(st.sampled_from(keys))
    head = _dump({k: v for k, v in base.items() if k != key})[:-1]
    sep = b", " if len(head) > 1 else b""
    return head + sep + json.dumps(key).encode() + b": " + deep.encode() + b"}"


@st.composite
def _lone_surrogate(draw: Any, base: dict[str, Any], field: str) -> bytes:
    """A text field holding a lone surrogate: as a \\uXXXX escape, or as invalid UTF-8 bytes."""
    surrogate = chr(draw(st.integers(0xD800, 0xDFFF)))
    text = draw(st.text(max_size=5)) + surrogate + draw(st.text(max_size=5))
    body = json.loads(json.dumps(base))
    if field == "messages":
        body["messages"][0]["content"] = text
    else:
        body[field] = text
    if draw(st.booleans()):
        return _dump(body)
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def _invalid_utf8(draw: Any, base: dict[str, Any]) -> bytes:
    """Bytes that are not UTF-8 spliced into a valid body."""
    data = _dump(base)
    at = draw(st.integers(0, len(data)))
    junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xf0\x28\x8c\xbc", b"\x80"]))
    return data[:at] + junk + data[at:]


def malformed_bodies(
    route: str, base: dict[str, Any], keys: list[str], nested: str, text: str
) -> Any:
    """Bodies for `route`: `base` (a valid one) broken in each way the module docstring lists."""
    return st.one_of(
        json_values.map(_dump),
        _replaced_field(route, base, keys, nested),
        _deeply_nested(base, keys),
        _lone_surrogate(base, text),
        _invalid_utf8(base),
        st.binary(max_size=64),
    )


def _post(url: str, data: bytes) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    return requests.post(url, data=data, headers=headers, timeout=TIMEOUT_S)


@FUZZ_SETTINGS
@given(data=malformed_bodies("/generate", GENERATE_BASE, GENERATE_KEYS, "sampling_params", "text"))
def test_malformed_generate_bodies(server_url: str, data: bytes) -> None:
    assert_not_a_server_error(_post(server_url + "/generate", data))


@FUZZ_SETTINGS
@given(data=malformed_bodies("/v1/chat/completions", CHAT_BASE, CHAT_KEYS, "messages", "messages"))
def test_malformed_chat_bodies(server_url: str, data: bytes) -> None:
    assert_not_a_server_error(_post(server_url + "/v1/chat/completions", data))


_HI = b'{"role": "user", "content": "hi"}'
KNOWN_BAD = [
    ("/generate", b"[" * 200_000 + b"]" * 200_000),
    ("/generate", b'{"text": "\\ud800"}'),
    ("/generate", b'{"text": "a\xed\xa0\x80"}'),
    ("/generate", b'{"text": "\xff\xfe"}'),
    ("/generate", b'{"text": "hi", "sampling_params": {"max_new_tokens": 1e400}}'),
    ("/generate", b'{"text": "hi", "sampling_params": {"temperature": NaN}}'),
    ("/generate", b'{"input_ids": [99999999999999999999999]}'),
    ("/generate", b""),
    ("/generate", b"null"),
    ("/v1/chat/completions", b"[" * 200_000 + b"]" * 200_000),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}'),
    ("/v1/chat/completions", b'{"messages": [' + _HI + b'], "max_tokens": -1e30}'),
    ("/v1/chat/completions", b'{"messages": [' + _HI + b'], "temperature": Infinity}'),
    ("/v1/chat/completions", b'{"messages": [' + _HI + b'], "n": 99999999999999999999}'),
    ("/v1/chat/completions", b'{"messages": "hi"}'),
    ("/v1/chat/completions", b""),
]


@pytest.mark.parametrize(("route", "data"), KNOWN_BAD, ids=lambda v: repr(v[:40]))
def test_known_bad_bodies_get_400(server_url: str, route: str, data: bytes) -> None:
    response = _post(server_url + route, data)
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert "error" in response.json()


def test_the_server_is_healthy_after_the_fuzz(server_url: str) -> None:
    assert requests.get(server_url + "/health", timeout=30).status_code == 200
    body = {"text": "Hello", "sampling_params": {"max_new_tokens": 2, "temperature": 0}}
    reply = requests.post(server_url + "/generate", json=body, timeout=TIMEOUT_S)
    assert reply.status_code == 200, reply.text
    assert reply.json()["meta_info"]["completion_tokens"] == 2
