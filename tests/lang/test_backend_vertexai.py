"""The VertexAI (Gemini) backend: the real google-genai SDK against a fake Gemini server."""

from __future__ import annotations

import base64
import json
import sys

import pytest
from fake_provider_servers import PNG_1PX, FakeGeminiServer, image_qa, multi_turn_question, one_turn

import sglang as sgl
from sglang.lang.backend.vertexai import VertexAI

genai_types = pytest.importorskip("google.genai.types")
genai_errors = pytest.importorskip("google.genai.errors")

_ENV = ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in (*_ENV, "GOOGLE_GENAI_USE_VERTEXAI"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake():
    with FakeGeminiServer() as server:
        yield server


def gemini(fake, **kwargs):
    options = genai_types.HttpOptions(base_url=fake.url)
    return VertexAI("gemini-test", http_options=options, retry_base_delay=0.0, **kwargs)


def test_roles_and_system_instruction(fake, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "key-1")
    fake.replies = ["Washington, D.C.", "The Mall."]
    state = multi_turn_question.run(
        question_1="Capital?", question_2="Sights?", backend=gemini(fake)
    )
    assert (state["answer_1"], state["answer_2"]) == ("Washington, D.C.", "The Mall.")
    first, second = fake.requests
    assert first.path.endswith("/models/gemini-test:generateContent")
    assert first.headers["x-goog-api-key"] == "key-1"
    assert first.body["systemInstruction"]["parts"] == [{"text": "You are a helpful assistant."}]
    assert first.body["contents"] == [{"role": "user", "parts": [{"text": "Capital?"}]}]
    assert [c["role"] for c in second.body["contents"]] == ["user", "model", "user"]
    assert second.body["contents"][1]["parts"] == [{"text": "Washington, D.C."}]


def test_generation_config(fake, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    fake.replies = ["alpha beta\ngamma", "second"]

    prog = one_turn("Go", max_tokens=9, stop="\n", temperature=0.3, top_p=0.8, top_k=4, n=2)

    state = prog.run(backend=gemini(fake))
    assert state["x"] == ["alpha beta", "second"]
    config = fake.requests[-1].body["generationConfig"]
    assert config == {
        "maxOutputTokens": 9,
        "temperature": 0.3,
        "topP": 0.8,
        "topK": 4,
        "stopSequences": ["\n"],
        "candidateCount": 2,
    }


def test_finish_reasons_and_usage(fake, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    fake.replies = ["one two three four"]
    backend = gemini(fake)

    prog = one_turn("count with me", max_tokens=2)

    state = prog.run(backend=backend)
    assert state["x"] == "one two "
    meta = state.get_meta_info("x")
    assert meta["finish_reason"] == {"type": "length"}
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (3, 2)
    assert (backend.token_usage.prompt_tokens, backend.token_usage.completion_tokens) == (3, 2)


def test_streaming_uses_sse(fake, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    fake.replies = ["one two three four five"]
    backend = gemini(fake)

    prog = one_turn("count", max_tokens=50)

    state = prog.run(backend=backend, stream=True)
    assert "".join(state.text_iter("x")) == "one two three four five"
    req = fake.requests[-1]
    assert req.path.endswith(":streamGenerateContent") and req.query["alt"] == ["sse"]
    meta = state.get_meta_info("x")
    assert meta["finish_reason"] == {"type": "stop", "matched": None}
    assert meta["completion_tokens"] == 5 and backend.token_usage.num_calls == 1


def test_image_is_an_inline_data_part(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    path = tmp_path / "dot.png"
    path.write_bytes(PNG_1PX)

    image_qa.run(image_file=str(path), question="Color?", backend=gemini(fake)).sync()
    parts = fake.requests[-1].body["contents"][0]["parts"]
    inline = next(p["inlineData"] for p in parts if "inlineData" in p)
    assert inline["mime_type"] == "image/png"
    assert base64.urlsafe_b64decode(inline["data"]) == PNG_1PX
    assert {"text": "Color?"} in parts


def test_json_schema(fake, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    fake.replies = ['{"n": 3}']
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}

    prog = one_turn("A number as JSON", max_tokens=8, json_schema=schema)

    state = prog.run(backend=gemini(fake))
    assert json.loads(state["x"]) == {"n": 3}
    config = fake.requests[-1].body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema


def test_vertex_mode_from_environment(fake, monkeypatch):
    from google.oauth2.credentials import Credentials

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj-1")
    monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", "europe-west4")
    backend = gemini(fake, credentials=Credentials(token="tok"))
    multi_turn_question.run(question_1="a", question_2="b", backend=backend).sync()
    req = fake.requests[0]
    expected = "/projects/proj-1/locations/europe-west4/publishers/google/models/gemini-test"
    assert req.path.endswith(expected + ":generateContent")
    assert req.headers["authorization"] == "Bearer tok"


def test_rate_limit_is_retried_and_errors_surface(fake, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    fake.fail_next = [(429, "Resource has been exhausted")]
    fake.replies = ["fine", "also fine"]
    backend = gemini(fake)
    state = multi_turn_question.run(question_1="a", question_2="b", backend=backend)
    assert state["answer_1"] == "fine" and state["answer_2"] == "also fine"
    assert len(fake.requests) == 3 and backend.token_usage.num_calls == 2

    fake.fail_next = [(400, "Invalid value at 'generation_config.top_k'")]
    state = multi_turn_question.run(question_1="a", question_2="b", backend=backend)
    with pytest.raises(genai_errors.ClientError, match="generation_config.top_k"):
        state["answer_1"]


def test_connection_errors_are_retryable(monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    options = genai_types.HttpOptions(base_url="http://127.0.0.1:9")
    backend = VertexAI("gemini-test", http_options=options, max_retries=0)
    with pytest.raises(Exception) as info:
        backend.client.models.generate_content(model="gemini-test", contents="hi")
    assert backend.is_retryable(info.value)
    assert not backend.is_retryable(ValueError("not a network problem"))


def test_unsupported_params_are_rejected(fake, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "k")

    prog = one_turn("Hi", regex="[a-z]+")

    error = prog.run(backend=gemini(fake)).error()
    assert isinstance(error, ValueError) and "regex" in str(error)
    assert fake.requests == []


def test_missing_credentials_name_the_variables():
    with pytest.raises(ValueError, match="GOOGLE_API_KEY") as info:
        VertexAI("gemini-test")
    assert "GOOGLE_CLOUD_PROJECT" in str(info.value)


def test_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.genai", None)
    with pytest.raises(ImportError, match=r'pip install "sglang\[vertexai\]"'):
        VertexAI("gemini-test", api_key="k")


def test_select_asks_for_an_enum_response_schema(fake, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "k")

    @sgl.function
    def prog(s):
        s += sgl.user("Pick a color")
        s += sgl.assistant(sgl.select("x", choices=["red", "blue"]))

    fake.replies = ['{"choice": "red"}']
    state = prog.run(backend=gemini(fake))
    assert state["x"] == "red"
    assert state.get_meta_info("x")["select_method"] == "json_schema_enum"
    config = fake.requests[-1].body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"]["properties"]["choice"]["enum"] == ["red", "blue"]
