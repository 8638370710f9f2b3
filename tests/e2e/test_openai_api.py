"""End-to-end tests of the OpenAI-compatible API with the official `openai` client, and --api-key."""

from __future__ import annotations

import json
import math
from typing import Any, Iterator

import openai
import pytest
import requests

PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "Name three colors."}]
API_KEY = "test-secret-key"


@pytest.fixture(scope="module")
def client(server_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0)


def native(server_url: str, **body: Any) -> dict[str, Any]:
    res = requests.post(server_url + "/generate", json=body, timeout=300)
    assert res.status_code == 200, res.text
    return res.json()


def test_models_lists_the_served_model(client: openai.OpenAI, model_info: dict[str, Any]) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [model_info["served_model_name"]]


# ------------------------------------------------------------------ completions


def test_completion_matches_native_generate(client: openai.OpenAI, server_url: str) -> None:
    res = client.completions.create(model="m", prompt=PROMPT, max_tokens=8, temperature=0)
    ref = native(server_url, text=PROMPT, sampling_params={"max_new_tokens": 8, "temperature": 0})
    choice = res.choices[0]
    assert res.object == "text_completion" and res.id.startswith("cmpl-")
    assert choice.text == ref["text"]
    assert choice.finish_reason == (
        "length" if ref["meta_info"]["finish_reason"]["type"] == "length" else "stop"
    )
    assert res.usage.prompt_tokens == ref["meta_info"]["prompt_tokens"]
    assert res.usage.completion_tokens == ref["meta_info"]["completion_tokens"]
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens


def test_completion_default_max_tokens_is_16(client: openai.OpenAI) -> None:
    res = client.completions.create(model="m", prompt=PROMPT, extra_body={"ignore_eos": True})
    assert res.usage.completion_tokens == 16


def test_completion_batch_and_n(client: openai.OpenAI) -> None:
    res = client.completions.create(
        model="m", prompt=["Hi", "A longer second prompt"], n=2, max_tokens=3, seed=7
    )
    assert [c.index for c in res.choices] == [0, 1, 2, 3]
    assert all(c.text is not None for c in res.choices)


def test_completion_token_prompt(client: openai.OpenAI, tokenizer: Any) -> None:
    ids = tokenizer.encode(PROMPT)
    by_ids = client.completions.create(model="m", prompt=ids, max_tokens=5, temperature=0)
    by_text = client.completions.create(model="m", prompt=PROMPT, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)


def test_completion_stop(client: openai.OpenAI) -> None:
    full = (
        client.completions.create(
            model="m", prompt=PROMPT, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
    )
    stop = [w for w in full[3:].split() if len(w) >= 3][0]
    res = client.completions.create(
        model="m",
        prompt=PROMPT,
        max_tokens=24,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert res.choices[0].text == full[: full.index(stop)]
    assert res.choices[0].finish_reason == "stop"


def test_completion_logprobs_shape(client: openai.OpenAI) -> None:
    res = client.completions.create(
        model="m", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2
    )
    lp = res.choices[0].logprobs
    n = res.usage.completion_tokens
    assert (
        len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    )
    assert "".join(lp.tokens) == res.choices[0].text
    for logprob, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and 1 <= len(top) <= 2
        assert math.isclose(max(top.values()), logprob, abs_tol=1e-4)
    assert lp.text_offset[0] == len(PROMPT)


def test_completion_echo_scores_the_prompt(client: openai.OpenAI, tokenizer: Any) -> None:
    res = client.completions.create(model="m", prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    choice = res.choices[0]
    assert choice.text == PROMPT
    assert len(choice.logprobs.tokens) == len(tokenizer.encode(PROMPT))
    assert choice.logprobs.token_logprobs[0] is None
    assert all(x <= 0 for x in choice.logprobs.token_logprobs[1:])


def test_completion_streaming_with_usage(client: openai.OpenAI) -> None:
    full = client.completions.create(model="m", prompt=PROMPT, max_tokens=8, temperature=0)
    chunks = list(
        client.completions.create(
            model="m",
            prompt=PROMPT,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert (
        chunks[-1].choices == []
        and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    )
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason is not None


# ------------------------------------------------------------------ chat completions


def test_chat_uses_the_chat_template(
    client: openai.OpenAI, server_url: str, tokenizer: Any
) -> None:
    # both requests from an empty cache (earlier modules' chats share the system prompt): a
    # cached prefix would run the last token through the small-batch kernels, whose rounding
    # may flip a greedy choice
    requests.post(server_url + "/flush_cache", timeout=60).raise_for_status()
    res = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=10, temperature=0)
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    requests.post(server_url + "/flush_cache", timeout=60).raise_for_status()
    ref = native(server_url, text=prompt, sampling_params={"max_new_tokens": 10, "temperature": 0})
    msg = res.choices[0].message
    assert res.object == "chat.completion" and msg.role == "assistant"
    assert msg.content == ref["text"]
    assert res.usage.prompt_tokens == ref["meta_info"]["prompt_tokens"]


def test_chat_streaming_role_first_then_content(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=10, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == full.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_chat_n_and_max_completion_tokens(client: openai.OpenAI) -> None:
    res = client.chat.completions.create(
        model="m", messages=MESSAGES, n=2, max_completion_tokens=4, temperature=0.9
    )
    assert [c.index for c in res.choices] == [0, 1]
    assert res.usage.completion_tokens <= 8


def test_chat_stop(client: openai.OpenAI) -> None:
    full = (
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=20, temperature=0)
        .choices[0]
        .message.content
    )
    stop = [w for w in full[3:].split() if len(w) >= 3][0]
    res = client.chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=20, temperature=0, stop=stop
    )
    assert res.choices[0].message.content == full[: full.index(stop)]
    assert res.choices[0].finish_reason == "stop"


def test_chat_logprobs(client: openai.OpenAI) -> None:
    res = client.chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = res.choices[0].logprobs.content
    assert len(content) == res.usage.completion_tokens
    assert "".join(t.token for t in content) == res.choices[0].message.content
    for tok in content:
        best = tok.top_logprobs[0].logprob
        assert len(tok.top_logprobs) == 2
        # greedy: the chosen token is a most likely one (the quantized model has exact ties)
        assert math.isclose(best, tok.logprob, abs_tol=1e-4)
        assert tok.token in [
            t.token for t in tok.top_logprobs if math.isclose(t.logprob, best, abs_tol=1e-4)
        ]
        assert bytes(tok.bytes).decode() == tok.token


def test_chat_json_schema_response_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "enum": ["yes", "no"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 9},
        },
        "required": ["answer", "count"],
        "additionalProperties": False,
    }
    res = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Is the sky blue? Answer in JSON."}],
        max_tokens=48,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    data = json.loads(res.choices[0].message.content)
    assert data["answer"] in ("yes", "no") and 0 <= data["count"] <= 9
    assert set(data) == {"answer", "count"}


def test_chat_regex_extra(client: openai.OpenAI) -> None:
    res = client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        max_tokens=16,
        temperature=0.7,
        extra_body={"regex": "(red|green|blue), (red|green|blue)"},
    )
    parts = res.choices[0].message.content.split(", ")
    assert len(parts) == 2 and set(parts) <= {"red", "green", "blue"}


def test_bad_requests_name_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="m", prompt=PROMPT, max_tokens=-1)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="m", messages=MESSAGES, temperature=-0.5)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="m", messages=[])
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=MESSAGES, extra_body={"bogus": 1})
    assert "bogus" in str(err.value) and err.value.body["type"] == "invalid_request_error"


# ------------------------------------------------------------------ --api-key


@pytest.fixture(scope="module")
def secured_url(launch_server_variant: Any) -> Iterator[str]:
    with launch_server_variant("--api-key", API_KEY) as server:
        yield server.url


def test_api_key_is_required_except_for_health(secured_url: str) -> None:
    body = {"text": "Hi", "sampling_params": {"max_new_tokens": 1}}
    assert requests.get(secured_url + "/health", timeout=30).status_code == 200
    assert requests.post(secured_url + "/generate", json=body, timeout=60).status_code == 401
    assert requests.get(secured_url + "/get_model_info", timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.get(secured_url + "/v1/models", headers=wrong, timeout=30).status_code == 401
    good = {"Authorization": f"Bearer {API_KEY}"}
    res = requests.post(secured_url + "/generate", json=body, headers=good, timeout=120)
    assert res.status_code == 200 and res.json()["meta_info"]["completion_tokens"] == 1


def test_api_key_with_the_openai_client(secured_url: str) -> None:
    bad = openai.OpenAI(base_url=secured_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    good = openai.OpenAI(base_url=secured_url + "/v1", api_key=API_KEY, max_retries=0)
    res = good.completions.create(model="m", prompt="Hi", max_tokens=2)
    assert res.usage.completion_tokens >= 1
