"""The Anthropic backend (real anthropic SDK) and our POST /v1/messages route."""

from __future__ import annotations

import base64
import json
import sys
from typing import Any, AsyncIterator, Optional

import pytest
import requests
from fake_provider_servers import (
    PNG_1PX,
    FakeAnthropicServer,
    ServedApp,
    apply_limits,
    image_qa,
    multi_turn_question,
    one_turn,
)

import sglang as sgl
from sglang.lang.backend.anthropic import Anthropic

anthropic = pytest.importorskip("anthropic")


# ------------------------------------------------------------- the backend, on a fake Anthropic


@pytest.fixture
def fake():
    with FakeAnthropicServer() as server:
        yield server


@pytest.fixture
def backend(fake):
    return Anthropic("claude-test", base_url=fake.url, api_key="k", retry_base_delay=0.0)


def test_multi_turn_maps_system_roles_and_params(fake, backend):
    fake.replies = ["Washington, D.C.", "The Mall."]
    state = multi_turn_question.run(
        question_1="Capital?", question_2="Sights?", backend=backend, temperature=0.5
    )
    assert state["answer_1"] == "Washington, D.C."
    assert state["answer_2"] == "The Mall."
    first, second = fake.bodies("/v1/messages")
    assert first["system"] == "You are a helpful assistant."
    assert first["messages"] == [{"role": "user", "content": "Capital?"}]
    assert first["max_tokens"] == 256 and first["temperature"] == 0.5
    assert "top_p" not in first and "top_k" not in first
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1]["content"] == "Washington, D.C."


def test_stop_sequences_top_p_top_k(fake, backend):
    fake.replies = ["alpha beta\ngamma"]

    prog = one_turn("Go", max_tokens=8, stop="\n", top_p=0.9, top_k=7)

    state = prog.run(backend=backend)
    assert state["x"] == "alpha beta"
    assert state.get_meta_info("x")["finish_reason"] == {"type": "stop", "matched": "\n"}
    body = fake.bodies()[-1]
    assert body["stop_sequences"] == ["\n"]
    assert (body["top_p"], body["top_k"]) == (0.9, 7)


def test_image_becomes_base64_block(fake, backend, tmp_path):
    path = tmp_path / "dot.png"
    path.write_bytes(PNG_1PX)
    state = image_qa.run(image_file=str(path), question="What color?", backend=backend)
    assert state.error() is None
    content = fake.bodies()[-1]["messages"][0]["content"]
    image = next(b for b in content if b["type"] == "image")
    assert image["source"]["media_type"] == "image/png"
    assert base64.b64decode(image["source"]["data"]) == PNG_1PX
    assert {"type": "text", "text": "What color?"} in content


def test_text_before_gen_is_a_prefill(fake, backend):
    fake.replies = [" 42."]

    @sgl.function
    def prog(s):
        s += sgl.user("What is six times seven?")
        s += sgl.assistant("The answer is " + sgl.gen("x", max_tokens=8))

    state = prog.run(backend=backend)
    assert state["x"] == "42."  # the space the prefill already holds is not repeated
    last = fake.bodies()[-1]["messages"][-1]
    assert last == {"role": "assistant", "content": "The answer is"}  # no trailing space


def test_streaming(fake, backend):
    fake.replies = ["one two three four five"]

    prog = one_turn("Count", max_tokens=3)

    state = prog.run(backend=backend, stream=True)
    assert "".join(state.text_iter("x")) == "one two three "
    assert fake.bodies()[-1]["stream"] is True
    meta = state.get_meta_info("x")
    assert meta["finish_reason"] == {"type": "length"}
    assert meta["completion_tokens"] == 3


def test_token_usage_and_retries(fake, backend):
    fake.fail_next = [(429, "rate limited"), (429, "rate limited")]
    fake.replies = ["a b c"]

    prog = one_turn("one two", max_tokens=8)

    state = prog.run(backend=backend)
    assert state["x"] == "a b c"
    assert len(fake.requests) == 3
    assert (backend.token_usage.prompt_tokens, backend.token_usage.completion_tokens) == (2, 3)
    assert backend.token_usage.num_calls == 1


def test_api_error_surfaces_with_provider_message(fake, backend):
    fake.fail_next = [(400, "prompt is too long: 999 tokens")]
    state = multi_turn_question.run(question_1="a", question_2="b", backend=backend)
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        state["answer_1"]
    assert isinstance(state.error(), anthropic.BadRequestError)
    assert len(fake.requests) == 1  # a 400 is not retried


def test_unsupported_params_are_rejected(fake, backend):
    for kwargs, name in (
        ({"regex": "[0-9]+"}, "regex"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"n": 2}, "n"),
    ):
        error = one_turn(**kwargs).run(backend=backend).error()
        assert isinstance(error, ValueError) and name in str(error)
    assert fake.requests == []


def test_select_is_a_forced_tool_call_with_an_enum(fake, backend):
    @sgl.function
    def prog(s):
        s += sgl.user("Pick")
        s += sgl.assistant("Answer: " + sgl.select("x", choices=["red", "blue"]))

    fake.replies = ['{"choice": "blue"}']
    state = prog.run(backend=backend, temperature=0)
    assert state["x"] == "blue" and state.text().endswith("Answer: blue")
    meta = state.get_meta_info("x")
    assert meta["select_method"] == "tool_use_enum" and meta["raw_reply"] == {"choice": "blue"}
    body = fake.bodies("/v1/messages")[-1]
    assert body["tool_choice"] == {"type": "tool", "name": "answer"}
    enum = body["tools"][0]["input_schema"]["properties"]["choice"]["enum"]
    assert enum == ["red", "blue"]
    assert body["messages"][-1] == {"role": "user", "content": "Pick"}
    fake.replies = ['{"choice": "green"}']
    error = prog.run(backend=backend).error()
    assert isinstance(error, RuntimeError) and "none of the choices" in str(error)


def test_missing_key_names_the_variable(monkeypatch):
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        Anthropic("claude-test")


def test_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "anthropic", None)
    with pytest.raises(ImportError, match=r'pip install "sglang\[anthropic\]"'):
        Anthropic("claude-test", api_key="k")


def test_speculative_turn_uses_one_call(fake, backend):
    fake.replies = [" Ada\nJob: Countess\n"]  # the reply continues the prefill "Name:"

    @sgl.function(num_api_spec_tokens=32)
    def prog(s):
        s += sgl.user("Make a character.")
        s += sgl.assistant(
            "Name:" + sgl.gen("name", stop="\n") + "\nJob:" + sgl.gen("job", stop="\n")
        )

    state = prog.run(backend=backend)
    assert (state["name"], state["job"]) == (" Ada", " Countess")
    assert len(fake.requests) == 1
    body = fake.bodies()[0]
    assert body["max_tokens"] == 32 and "stop_sequences" not in body
    assert body["messages"][-1] == {"role": "assistant", "content": "Name:"}


# ------------------------------------------------- our /v1/messages route, on a fake runtime


class FakeTokenizerManager:
    """The slice of TokenizerManager the route uses; answers scripted text like the runtime."""

    served_model_name = "fake-model"
    tool_parser = None

    def __init__(self) -> None:
        self.reply = "Hello there. How are you?"
        self.received: list[Any] = []
        self.reject: Optional[str] = None

    def apply_chat_template(self, messages: list[dict], tools: Any = None) -> str:
        from sglang.srt.managers.chat_messages import normalize_messages

        # as the real one does for a vision-language model: image parts become its image token
        plain = normalize_messages(messages, image_token="<image>")
        rendered = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in plain)
        return rendered + "<assistant>"

    async def generate_request(self, obj: Any, request: Any = None) -> AsyncIterator[Any]:
        from sglang.srt.managers.io_struct import FinishReason, GenerateOutput

        self.received.append(obj)
        if self.reject:
            raise ValueError(self.reject)
        params = obj.sampling_params
        gen = apply_limits(self.reply, params["max_new_tokens"], params.get("stop"))
        if gen.finish == "length":
            finish = FinishReason.for_length(params["max_new_tokens"])
        else:
            finish = FinishReason.stop(gen.matched)
        words = gen.text.split(" ")
        steps = [" ".join(words[: i + 1]) for i in range(len(words))] if obj.stream else [gen.text]
        for i, text in enumerate(steps):
            done = i == len(steps) - 1
            yield GenerateOutput(
                rid=obj.rid,
                text=text,
                output_ids=[],
                prompt_tokens=len(obj.text.split()),
                completion_tokens=len(text.split()),
                cached_tokens=0,
                finish_reason=finish if done else None,
            )


@pytest.fixture(scope="module")
def route():
    from fastapi import FastAPI

    from sglang.srt.entrypoints.anthropic_api import add_anthropic_routes

    tm = FakeTokenizerManager()
    app = FastAPI()
    add_anthropic_routes(app, lambda: tm)
    with ServedApp(app) as served:
        yield served, tm


@pytest.fixture
def client(route):
    served, tm = route
    tm.reply, tm.reject = "Hello there. How are you?", None
    return anthropic.Anthropic(base_url=served.url, api_key="k", max_retries=0)


def test_route_message(route, client):
    _, tm = route
    msg = client.messages.create(
        model="fake-model",
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        max_tokens=50,
        stop_sequences=["How"],
        extra_body={"temperature": 0.0, "top_k": 5},
    )
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert [b.text for b in msg.content] == ["Hello there. "]
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "How")
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens == 2
    obj = tm.received[-1]
    assert obj.text == "<system>Be brief.</system><user>Hi</user><assistant>"
    assert obj.sampling_params == {
        "max_new_tokens": 50,
        "temperature": 0.0,
        "stop": ["How"],
        "top_k": 5,
    }


def test_route_max_tokens_and_end_turn(route, client):
    msg = client.messages.create(
        model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert msg.stop_reason == "max_tokens" and msg.content[0].text == "Hello there. "
    msg = client.messages.create(
        model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=100
    )
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None


def test_route_stream_events(route, client):
    stream = client.messages.create(
        model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "Hello there. How "
    delta = events[-2]
    assert delta.delta.stop_reason == "max_tokens" and delta.usage.output_tokens == 3


def test_route_raw_sse_sequence(route):
    served, _ = route
    body = {
        "model": "m",
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    resp = requests.post(served.url + "/v1/messages", json=body, timeout=30)
    names = [
        line[len("event: ") :] for line in resp.text.splitlines() if line.startswith("event: ")
    ]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_route_prefill_and_images(route, client):
    _, tm = route
    data = base64.b64encode(PNG_1PX).decode()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    msg = client.messages.create(
        model="m",
        messages=[
            {"role": "user", "content": [image, {"type": "text", "text": "Color?"}]},
            {"role": "assistant", "content": "It is"},
        ],
        max_tokens=3,
    )
    obj = tm.received[-1]
    assert obj.text == "<user><image>Color?</user><assistant>It is"  # the image where it stands
    assert obj.image_data == [f"data:image/png;base64,{data}"]
    assert msg.content[0].text == "Hello there. How "


def _body(**overrides: Any) -> dict[str, Any]:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


_NO_DATA_IMAGE = {"type": "image", "source": {"type": "base64"}}


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"temperature": 3}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"tools": []}, "tools"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "user"),
        ({"messages": [{"role": "user", "content": [_NO_DATA_IMAGE]}]}, "media_type"),
    ],
)
def test_route_rejects_bad_requests(route, overrides, fragment):
    served, _ = route
    resp = requests.post(served.url + "/v1/messages", json=_body(**overrides), timeout=30)
    assert resp.status_code == 400
    err = resp.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert fragment in err["error"]["message"]


def test_route_malformed_json_and_runtime_rejection(route, client):
    served, tm = route
    resp = requests.post(
        served.url + "/v1/messages", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400 and "JSON" in resp.json()["error"]["message"]
    resp = requests.post(served.url + "/v1/messages", data=b"\xff\xfe{", timeout=30)
    assert resp.status_code == 400 and "JSON" in resp.json()["error"]["message"]
    tm.reject = "the prompt (9000 tokens) is longer than the context (2048)"
    with pytest.raises(anthropic.BadRequestError, match="longer than the context"):
        client.messages.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=5)
    tm.reject = None
    msg = client.messages.create(
        model="m", messages=[{"role": "user", "content": "x"}], max_tokens=5
    )
    assert msg.content[0].text  # still serving


def test_backend_on_route(route):
    served, tm = route
    tm.reply, tm.reject = "Paris is the capital.", None
    backend = Anthropic("fake-model", base_url=served.url)
    state = multi_turn_question.run(
        question_1="Capital of France?", question_2="And?", backend=backend
    )
    assert state["answer_1"] == "Paris is the capital."
    assert tm.received[-1].text.startswith("<system>You are a helpful assistant.</system>")
    assert json.dumps(state.messages())  # plain data


# ------------------------------------------------------------------ our real server (e2e)


@sgl.function
def short_two_turns(s, question_1, question_2):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=16))
    s += sgl.user(question_2)
    s += sgl.assistant(sgl.gen("answer_2", max_tokens=16))


def test_backend_on_our_server(server_url):
    backend = Anthropic("default", base_url=server_url)
    state = short_two_turns.run(
        question_1="What is the capital of France?",
        question_2="Name one museum there.",
        backend=backend,
        temperature=0,
    )
    assert state.error() is None
    assert state["answer_1"].strip() and state["answer_2"].strip()
    assert [m["role"] for m in state.messages()] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert backend.token_usage.num_calls == 2
    assert backend.token_usage.prompt_tokens > 10 and backend.token_usage.completion_tokens > 0


def test_backend_streams_on_our_server(server_url):
    backend = Anthropic("default", base_url=server_url)

    prog = one_turn("Count from one to ten.", max_tokens=8)

    state = prog.run(backend=backend, stream=True, temperature=0)
    streamed = "".join(state.text_iter("x"))
    assert streamed == state["x"] and streamed.strip()
    again = prog.run(backend=backend, temperature=0)
    assert again["x"] == streamed  # greedy: the same text with and without streaming
    assert state.get_meta_info("x")["completion_tokens"] > 0


def test_raw_client_on_our_server(server_url):
    client = anthropic.Anthropic(base_url=server_url, api_key="k", max_retries=0)
    msg = client.messages.create(
        model="default",
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=4,
        extra_body={"temperature": 0},
    )
    assert msg.stop_reason in ("max_tokens", "end_turn")
    assert msg.usage.output_tokens <= 4 and msg.usage.input_tokens > 0
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="default", messages=[], max_tokens=4)
