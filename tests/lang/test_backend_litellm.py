"""The LiteLLM backend: the real litellm.completion against a fake OpenAI-format server."""

from __future__ import annotations

import base64
import os
import sys

import pytest
from fake_provider_servers import PNG_1PX, FakeOpenAIServer, image_qa, multi_turn_question, one_turn

import sglang as sgl
from sglang.lang.backend.litellm import LiteLLM

# NOTE: without this litellm fetches its model price list from the internet on import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm")


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def backend(fake):
    fake.requests.clear()
    fake.replies.clear()
    fake.fail_next.clear()
    return LiteLLM(
        "openai/fake-model", api_base=fake.url + "/v1", api_key="k", retry_base_delay=0.0
    )


def test_seed_program(fake, backend):
    fake.replies = ["Washington, D.C.", "The Mall."]
    state = multi_turn_question.run(question_1="Capital?", question_2="Sights?", backend=backend)
    assert (state["answer_1"], state["answer_2"]) == ("Washington, D.C.", "The Mall.")
    first, second = fake.bodies("/chat/completions")
    assert first["model"] == "fake-model"
    assert first["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Capital?"},
    ]
    assert first["max_tokens"] == 256
    assert second["messages"][2] == {"role": "assistant", "content": "Washington, D.C."}
    assert backend.token_usage.num_calls == 2 and backend.token_usage.completion_tokens == 4


def test_parameters_and_stop(fake, backend):
    fake.replies = ["alpha beta\ngamma"]

    prog = one_turn("Go", max_tokens=5, stop="\n", temperature=0.1, top_p=0.7, presence_penalty=0.2)

    state = prog.run(backend=backend)
    assert state["x"] == "alpha beta"
    body = fake.bodies()[-1]
    picked = {
        k: body[k] for k in ("max_tokens", "stop", "temperature", "top_p", "presence_penalty")
    }
    assert picked == {
        "max_tokens": 5,
        "stop": ["\n"],
        "temperature": 0.1,
        "top_p": 0.7,
        "presence_penalty": 0.2,
    }


def test_streaming(fake, backend):
    fake.replies = ["one two three four five"]

    prog = one_turn("count", max_tokens=4)

    state = prog.run(backend=backend, stream=True)
    assert "".join(state.text_iter("x")) == "one two three four "
    assert fake.bodies()[-1]["stream"] is True
    meta = state.get_meta_info("x")
    assert meta["finish_reason"] == {"type": "length"}
    assert meta["completion_tokens"] == 4


def test_image_passes_as_image_url(fake, backend, tmp_path):
    path = tmp_path / "dot.png"
    path.write_bytes(PNG_1PX)

    image_qa.run(image_file=str(path), question="Color?", backend=backend).sync()
    content = fake.bodies()[-1]["messages"][0]["content"]
    url = next(p["image_url"]["url"] for p in content if p["type"] == "image_url")
    assert base64.b64decode(url.split(",", 1)[1]) == PNG_1PX
    assert {"type": "text", "text": "Color?"} in content


def test_rate_limit_is_retried(fake, backend):
    fake.fail_next = [(429, "Rate limit reached")]
    fake.replies = ["ok", "ok too"]
    state = multi_turn_question.run(question_1="a", question_2="b", backend=backend)
    assert (state["answer_1"], state["answer_2"]) == ("ok", "ok too")
    assert len(fake.requests) == 3


def test_api_error_surfaces(fake, backend):
    fake.fail_next = [(400, "Unsupported value: 'temperature'")]
    state = multi_turn_question.run(question_1="a", question_2="b", backend=backend)
    with pytest.raises(litellm.BadRequestError, match="Unsupported value"):
        state["answer_1"]


def test_unsupported_params_are_rejected(fake, backend):
    prog = one_turn("Hi", regex="[0-9]+")

    error = prog.run(backend=backend).error()
    assert isinstance(error, ValueError) and "regex" in str(error)
    assert fake.requests == []


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        LiteLLM("anthropic/claude-3-5-haiku-latest")


def test_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "litellm", None)
    with pytest.raises(ImportError, match=r'pip install "sglang\[litellm\]"'):
        LiteLLM("openai/x", api_key="k")


def test_select_asks_for_an_enum_schema(fake, backend):
    @sgl.function
    def prog(s):
        s += sgl.user("Pick")
        s += sgl.assistant(sgl.select("x", choices=["yes", "no"]))

    fake.replies = ['{"choice": "no"}']
    state = prog.run(backend=backend)
    assert state["x"] == "no"
    assert state.get_meta_info("x")["select_method"] == "json_schema_enum"
    schema = fake.bodies("/chat/completions")[-1]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["choice"]["enum"] == ["yes", "no"]
