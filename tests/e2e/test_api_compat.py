"""SGLang and OpenAI server API compatibility on the real server: the fields SGLang's clients send,
every sampling field, tool calling, reasoning, metrics and the utility routes."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 16}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# Forces the hermes format, so the parser of tool_choice auto is exercised on the default model.
HERMES_CALL = (
    r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "[A-Z][a-z]{2,8}"\}\}\n'
    r"</tool_call>"
)
THINKING = r"<think>[a-z ]{3,16}</think>\n\n[A-Z][a-z ]{3,16}\."


def post(url: str, path: str, body: Any) -> requests.Response:
    return requests.post(url + path, json=body, timeout=300)


def ok(url: str, path: str, body: Any) -> Any:
    res = post(url, path, body)
    assert res.status_code == 200, res.text
    return res.json()


def refused(url: str, path: str, body: Any, *names: str) -> str:
    res = post(url, path, body)
    assert res.status_code == 400, res.text
    message = res.json()["error"]["message"]
    for name in names:
        assert name in message, message
    return message


@pytest.fixture(scope="module")
def api(api_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=api_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def plain(server_url: str) -> openai.OpenAI:
    """The default server: no parsers, no metrics."""
    return openai.OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0)


# ------------------------------------------------------------------ the field compatibility rule

ROUTER_GENERATE_FIELDS = {
    "model": "default",
    "background": False,
    "no_logs": False,
    "return_bytes": False,
    "return_entropy": False,
    "log_metrics": True,
    "return_hidden_states": False,
    "lora_path": None,
    "session_params": None,
}
ROUTER_CHAT_FIELDS = {
    "continue_final_message": False,
    "separate_reasoning": True,
    "stream_reasoning": True,
    "return_hidden_states": False,
    "lora_path": None,
    "rid": None,
}


def test_generate_accepts_sglang_fields_at_their_defaults(server_url: str) -> None:
    body = {"text": "Hi", "sampling_params": {"max_new_tokens": 2}, **ROUTER_GENERATE_FIELDS}
    assert ok(server_url, "/generate", body)["meta_info"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    "field, value",
    [("background", True), ("return_entropy", True), ("lora_path", "adapter"), ("priority", 3)],
)
def test_generate_refuses_an_unimplemented_field_set_otherwise(
    server_url: str, field: str, value: Any
) -> None:
    refused(server_url, "/generate", {"text": "Hi", field: value}, field)


def test_neither_defines_the_field_so_it_is_refused(server_url: str) -> None:
    refused(server_url, "/generate", {"text": "Hi", "temprature": 0.5}, "temprature")
    body = {"model": "m", "messages": ASK, "max_tokens": 1, "not_a_field": 1}
    refused(server_url, "/v1/chat/completions", body, "not_a_field")


def test_chat_accepts_router_fields_at_defaults_and_refuses_them_set(server_url: str) -> None:
    body = {"model": "m", "messages": ASK, "max_tokens": 2, **ROUTER_CHAT_FIELDS}
    assert ok(server_url, "/v1/chat/completions", body)["usage"]["completion_tokens"] == 2
    body["continue_final_message"] = True
    refused(server_url, "/v1/chat/completions", body, "continue_final_message")


def test_completions_openai_fields(plain: openai.OpenAI, server_url: str) -> None:
    res = plain.completions.create(
        model="m", prompt="Hi", max_tokens=2, user="someone", best_of=1, echo=False
    )
    assert res.usage.completion_tokens == 2
    body = {"model": "m", "prompt": "Hi", "max_tokens": 2}
    refused(server_url, "/v1/completions", {**body, "suffix": "end"}, "suffix")
    refused(server_url, "/v1/completions", {**body, "best_of": 3}, "best_of")
    fmt = {"type": "json_object"}
    out = plain.completions.create(
        model="m", prompt="A JSON object:", max_tokens=40, temperature=0,
        extra_body={"response_format": fmt},
    )  # fmt: skip
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out.choices[0].text), dict)
    else:
        assert out.choices[0].text.lstrip().startswith("{")


# ------------------------------------------------------------------ sampling fields


def _greedy(server_url: str, **params: Any) -> dict[str, Any]:
    sampling = {"max_new_tokens": 4, "temperature": 0, **params}
    return ok(
        server_url, "/generate", {"text": "The capital of France is", "sampling_params": sampling}
    )


def test_logit_bias_bans_and_forces_tokens(server_url: str, plain: openai.OpenAI) -> None:
    first = _greedy(server_url)["output_ids"][0]
    banned = _greedy(server_url, logit_bias={str(first): -100})
    assert banned["output_ids"][0] != first
    forced = plain.completions.create(
        model="m", prompt="The capital of France is", max_tokens=3, temperature=0,
        logit_bias={"42": 100},
    )  # fmt: skip
    native = _greedy(server_url, max_new_tokens=3, logit_bias={"42": 100})
    assert native["output_ids"] == [42] * 3 and forced.choices[0].text == native["text"]


def test_bad_logit_bias_is_named(server_url: str) -> None:
    body = {"text": "Hi", "sampling_params": {"logit_bias": {"x": 1}}}
    refused(server_url, "/generate", body, "logit_bias", "'x'")
    body["sampling_params"]["logit_bias"] = {"10000000": 1}
    refused(server_url, "/generate", body, "logit_bias")
    body["sampling_params"]["logit_bias"] = {"5": 500}
    refused(server_url, "/generate", body, "logit_bias", "[-100, 100]")


def test_sampling_seed_is_an_alias_of_seed(server_url: str) -> None:
    params = {"max_new_tokens": 8, "temperature": 1.0, "ignore_eos": True}
    by_seed = _greedy(server_url, **params, seed=11)["output_ids"]
    by_alias = _greedy(server_url, **params, sampling_seed=11)["output_ids"]
    assert by_seed == by_alias
    body = {"text": "Hi", "sampling_params": {"seed": 1, "sampling_seed": 2}}
    refused(server_url, "/generate", body, "sampling_seed")


def test_custom_params_accepted_bad_structural_tag_refused(server_url: str) -> None:
    assert _greedy(server_url, custom_params={"k": 1})["meta_info"]["completion_tokens"] >= 1
    body = {"text": "Hi", "sampling_params": {"structural_tag": "{}"}}
    refused(server_url, "/generate", body, "structural_tag")


# The examples call get_weather with "city"; the structure demands "location" instead.
WEATHER_CALL = {
    "begin": "<function=get_weather>",
    "schema": {
        "type": "object",
        "properties": {"location": {"type": "string", "maxLength": 20}},
        "required": ["location"],
        "additionalProperties": False,
    },
    "end": "</function>",
}
TOOL_PROMPT = (
    "".join(
        f'Q: weather in {c}?\nA: <function=get_weather>{{"city": "{c}"}}</function>\n'
        for c in ("Paris", "Tokyo", "Lima", "Oslo")
    )
    + "Q: weather in Rome?\nA:"
)


def _calls(text: str) -> list[dict[str, Any]]:
    """The arguments of each complete get_weather call in text."""
    calls = []
    for call in text.split("<function=")[1:]:
        if "</function>" in call:
            assert call.startswith("get_weather>"), text
            calls.append(json.loads(call.removeprefix("get_weather>").split("</function>")[0]))
    return calls


def test_structural_tag_binds_the_tagged_call_on_both_routes(server_url: str) -> None:
    """Free text until the trigger, then a call of the structure's schema: the model, which
    follows its examples' "city" key when unconstrained, must write "location"."""
    tag = {"type": "structural_tag", "structures": [WEATHER_CALL], "triggers": ["<function="]}
    params = {"max_new_tokens": 30, "temperature": 0, "structural_tag": json.dumps(tag)}
    native = requests.post(
        server_url + "/generate",
        json={"text": TOOL_PROMPT, "sampling_params": params},
        timeout=300,
    ).json()
    client = openai.OpenAI(base_url=server_url + "/v1", api_key="none")
    completion = client.completions.create(
        model="default",
        prompt=TOOL_PROMPT,
        max_tokens=30,
        temperature=0,
        extra_body={"response_format": {**tag, "type": "structural_tag"}},
    )
    for text in (native["text"], completion.choices[0].text):
        calls = _calls(text)
        assert calls and all(set(c) == {"location"} for c in calls), text


def _stream(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    res = requests.post(url + "/generate", json={**body, "stream": True}, stream=True, timeout=300)
    assert res.status_code == 200, res.text
    chunks = []
    for line in res.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            chunks.append(json.loads(line[6:]))
    return chunks


def test_per_request_stream_interval(server_url: str) -> None:
    params = {"max_new_tokens": 9, "ignore_eos": True, "temperature": 0}
    every = _stream(server_url, {"text": "Hi", "sampling_params": params})
    sparse = _stream(
        server_url, {"text": "Hi", "sampling_params": {**params, "stream_interval": 4}}
    )
    # a chunk after the first token, then every 4 (two may reach the client as one)
    counts = [c["meta_info"]["completion_tokens"] for c in sparse]
    assert set(counts) <= {1, 5, 9} and counts[-1] == 9
    assert sparse[-1]["text"] == every[-1]["text"]


def test_streamed_meta_info_is_cumulative_by_default(server_url: str) -> None:
    params = {"max_new_tokens": 5, "ignore_eos": True}
    body = {"text": "Hi", "sampling_params": params, "return_logprob": True}
    chunks = _stream(server_url, body)
    assert len(chunks) > 1
    for chunk in chunks:
        meta = chunk["meta_info"]
        k = meta["completion_tokens"]
        assert k == meta["output_token_logprobs_length"] == len(meta["output_token_logprobs"])
        assert len(chunk["output_ids"]) == k and chunk["output_ids"] == [
            e[1] for e in meta["output_token_logprobs"]
        ]
        assert meta["prompt_tokens"] > 0 and "cached_tokens" in meta
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"


def test_incremental_streaming_output_sends_only_what_is_new(api_url: str) -> None:
    params = {"max_new_tokens": 6, "ignore_eos": True, "temperature": 0}
    body = {"text": "Hi", "sampling_params": params, "return_logprob": True}
    chunks = _stream(api_url, body)
    whole = ok(api_url, "/generate", body)
    assert "".join(c["text"] for c in chunks) == whole["text"]
    assert sum((c["output_ids"] for c in chunks), []) == whole["output_ids"]
    ids = [e[1] for c in chunks for e in c["meta_info"]["output_token_logprobs"]]
    assert ids == whole["output_ids"]
    lengths = [c["meta_info"]["output_token_logprobs_length"] for c in chunks]
    assert len(chunks) > 1 and lengths == sorted(set(lengths)) and lengths[-1] == 6


# ------------------------------------------------------------------ tool calling


def _call_of(message: Any) -> tuple[str, dict[str, Any]]:
    assert message.tool_calls and len(message.tool_calls) == 1, message
    call = message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    return call.function.name, json.loads(call.function.arguments)


def test_required_tool_choice_always_gives_a_valid_call(api: openai.OpenAI) -> None:
    res = api.chat.completions.create(
        model="m", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
        parallel_tool_calls=False, max_tokens=60, temperature=0,
    )  # fmt: skip
    choice = res.choices[0]
    name, args = _call_of(choice.message)
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert (name == "get_weather" and isinstance(args["city"], str)) or (
        name == "get_time" and args["zone"] in ("UTC", "CET")
    )


def test_required_tool_choice_works_without_a_parser(plain: openai.OpenAI) -> None:
    res = plain.chat.completions.create(
        model="m", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=60,
        temperature=0.8, seed=3,
    )  # fmt: skip
    assert all(c.function.name == "get_weather" for c in res.choices[0].message.tool_calls)


def test_named_tool_choice_streamed_as_openai_does(api: openai.OpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    stream = api.chat.completions.create(
        model="m", messages=ASK, tools=[WEATHER, TIME], tool_choice=choice, max_tokens=40,
        temperature=0, stream=True,
    )  # fmt: skip
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0] and calls[0]["name"] == "get_time"
    assert json.loads(calls[0]["arguments"])["zone"] in ("UTC", "CET")


def test_auto_tool_choice_parses_the_models_calls(api: openai.OpenAI) -> None:
    kwargs = dict(
        model="m", messages=ASK, tools=[WEATHER], max_tokens=60, temperature=0,
        extra_body={"regex": HERMES_CALL},
    )  # fmt: skip
    res = api.chat.completions.create(**kwargs)
    name, args = _call_of(res.choices[0].message)
    assert name == "get_weather" and res.choices[0].finish_reason == "tool_calls"
    streamed: list[Any] = []
    content = ""
    for chunk in api.chat.completions.create(**kwargs, stream=True):
        streamed += chunk.choices[0].delta.tool_calls or []
        content += chunk.choices[0].delta.content or ""
    assert content == ""  # the call's text never leaks as content
    assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed] == [(name, args)]


def test_tool_choice_none_leaves_text_alone(api: openai.OpenAI) -> None:
    res = api.chat.completions.create(
        model="m", messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=60,
        temperature=0, extra_body={"regex": HERMES_CALL},
    )  # fmt: skip
    assert res.choices[0].message.tool_calls is None
    assert res.choices[0].message.content.startswith("<tool_call>")


def test_tool_history_is_rendered_into_the_prompt(api: openai.OpenAI) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny and 24 degrees"},
    ]
    short = api.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], max_tokens=1)
    full = api.chat.completions.create(model="m", messages=history, tools=[WEATHER], max_tokens=1)
    no_tools = api.chat.completions.create(model="m", messages=ASK, max_tokens=1)
    # the tools are described, and the call and its result are in the prompt
    assert short.usage.prompt_tokens > no_tools.usage.prompt_tokens + 20
    assert full.usage.prompt_tokens > short.usage.prompt_tokens + 15


def test_bad_tool_requests_get_400(server_url: str) -> None:
    body = {"model": "m", "messages": ASK, "max_tokens": 4, "tools": [WEATHER]}
    refused(server_url, "/v1/chat/completions", body, "tool_choice", "--tool-call-parser")
    named = {"type": "function", "function": {"name": "nope"}}
    refused(server_url, "/v1/chat/completions", {**body, "tool_choice": named}, "nope")
    bad = {**body, "tools": [{"type": "function", "function": {}}], "tool_choice": "required"}
    refused(server_url, "/v1/chat/completions", bad, "tools[0].function.name")
    mixed = {**body, "tool_choice": "required", "regex": "a+"}
    refused(server_url, "/v1/chat/completions", mixed, "tool_choice")


# ------------------------------------------------------------------ reasoning


def test_reasoning_content_is_separated(api: openai.OpenAI) -> None:
    kwargs = dict(model="m", messages=ASK, max_tokens=40, temperature=0)
    res = api.chat.completions.create(**kwargs, extra_body={"regex": THINKING})
    message = res.choices[0].message
    assert message.reasoning_content and "<think>" not in message.content
    assert message.content[0].isupper() and message.content.endswith(".")
    pieces = {"reasoning_content": "", "content": ""}
    for chunk in api.chat.completions.create(**kwargs, stream=True, extra_body={"regex": THINKING}):
        delta = chunk.choices[0].delta.model_dump()
        for key in pieces:
            pieces[key] += delta.get(key) or ""
    assert pieces == {"reasoning_content": message.reasoning_content, "content": message.content}
    joined = api.chat.completions.create(
        **kwargs, extra_body={"regex": THINKING, "separate_reasoning": False}
    )
    assert joined.choices[0].message.content.startswith("<think>")


def test_stream_reasoning_false_sends_reasoning_in_one_piece(api: openai.OpenAI) -> None:
    body = {"regex": THINKING, "stream_reasoning": False}
    stream = api.chat.completions.create(
        model="m", messages=ASK, max_tokens=40, temperature=0, stream=True, extra_body=body
    )
    reasoning = [c.choices[0].delta.model_dump().get("reasoning_content") for c in stream]
    assert len([r for r in reasoning if r]) == 1


def test_chat_template_kwargs_reach_the_template(api: openai.OpenAI, api_url: str) -> None:
    on = api.chat.completions.create(model="m", messages=ASK, max_tokens=1)
    off = api.chat.completions.create(
        model="m", messages=ASK, max_tokens=1,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )  # fmt: skip
    assert off.usage.prompt_tokens > on.usage.prompt_tokens  # the closed empty think block
    body = {"model": "m", "messages": ASK, "chat_template_kwargs": {"tools": []}}
    refused(api_url, "/v1/chat/completions", body, "chat_template_kwargs", "tools")


# ------------------------------------------------------------------ routes


def test_model_tokenize_detokenize_ready(api_url: str, server_url: str, tokenizer: Any) -> None:
    name = requests.get(api_url + "/v1/models", timeout=30).json()["data"][0]["id"]
    card = requests.get(f"{api_url}/v1/models/{name}", timeout=30)
    assert card.status_code == 200 and card.json()["id"] == name
    assert requests.get(api_url + "/v1/models/other", timeout=30).status_code == 404
    tokens = ok(api_url, "/v1/tokenize", {"prompt": "Hello world"})
    assert tokens["tokens"] == tokenizer.encode("Hello world") and tokens["count"] == 2
    batch = ok(api_url, "/v1/tokenize", {"prompt": ["a b", "c"]})
    assert batch["count"] == [len(t) for t in batch["tokens"]]
    assert ok(api_url, "/v1/detokenize", {"tokens": tokens["tokens"]})["text"] == "Hello world"
    refused(api_url, "/v1/detokenize", {"tokens": [10**9]}, "tokens")
    assert requests.get(api_url + "/ready", timeout=30).json() == {"ready": True}
    assert requests.get(server_url + "/metrics", timeout=30).status_code == 404  # not enabled


def test_metrics_after_traffic(api_url: str) -> None:
    params = {"max_new_tokens": 5, "ignore_eos": True}
    for _ in range(2):
        ok(api_url, "/generate", {"text": "Count to ten:", "sampling_params": params})
    text = requests.get(api_url + "/metrics", timeout=30).text
    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("sglang:prompt_tokens_total", None)] >= 2 * 4
    assert samples[("sglang:generation_tokens_total", None)] >= 10
    assert samples[("sglang:num_requests_total", None)] >= 2
    assert samples[("sglang:time_to_first_token_seconds_count", None)] >= 2
    assert samples[("sglang:inter_token_latency_seconds_count", None)] >= 8
    assert samples[("sglang:e2e_request_latency_seconds_count", None)] >= 2
    assert samples[("sglang:num_running_reqs", None)] == 0
    assert samples[("sglang:num_queue_reqs", None)] == 0
    assert 0 <= samples[("sglang:cache_hit_rate", None)] <= 1


# ------------------------------------------------------------------ Anthropic tools


@pytest.fixture(scope="module")
def claude(api_url: str) -> Any:
    anthropic = pytest.importorskip("anthropic")
    return anthropic.Anthropic(base_url=api_url, api_key="unused", max_retries=0)


ANTHROPIC_WEATHER = {
    "name": "get_weather",
    "description": "The current weather of a city",
    "input_schema": WEATHER["function"]["parameters"],
}


def test_anthropic_forced_tool_use(claude: Any) -> None:
    msg = claude.messages.create(
        model="m", max_tokens=40, messages=ASK, tools=[ANTHROPIC_WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    )  # fmt: skip
    assert msg.stop_reason == "tool_use"
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input["city"], str)
    assert use.id.startswith("toolu_")


def test_anthropic_streamed_tool_use_and_tool_result_history(claude: Any) -> None:
    with claude.messages.stream(
        model="m", max_tokens=40, messages=ASK, tools=[ANTHROPIC_WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ) as stream:  # fmt: skip
        final = stream.get_final_message()
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and isinstance(use.input["city"], str)
    history = ASK + [
        {"role": "assistant", "content": [use.model_dump(include={"type", "id", "name", "input"})]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 24 C"}],
        },
    ]
    reply = claude.messages.create(
        model="m", max_tokens=4, messages=history, tools=[ANTHROPIC_WEATHER],
        tool_choice={"type": "none"},
    )  # fmt: skip
    first = claude.messages.create(
        model="m", max_tokens=4, messages=ASK, tools=[ANTHROPIC_WEATHER],
        tool_choice={"type": "none"},
    )  # fmt: skip
    assert reply.usage.input_tokens > first.usage.input_tokens + 10
