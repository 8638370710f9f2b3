"""The OpenAI backend (real openai SDK): on a fake OpenAI server, and on our server's /v1."""

from __future__ import annotations

import base64
import json
import sys

import pytest
from fake_provider_servers import PNG_1PX, FakeOpenAIServer, image_qa, multi_turn_question, one_turn

import sglang as sgl
from sglang.lang.backend.openai import OpenAI, is_completion_model, is_reasoning_model

openai = pytest.importorskip("openai")


@sgl.function(num_api_spec_tokens=64)
def gen_character_spec(s):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user("Construct a character within the following format:")
    s += sgl.assistant("Name: Steve Jobs.\nBirthday: February 24, 1955.\nJob: Apple CEO.\n")
    s += sgl.user("Please generate new Name, Birthday and Job.\n")
    s += sgl.assistant(
        "Name:"
        + sgl.gen("name", stop="\n")
        + "\nBirthday:"
        + sgl.gen("birthday", stop="\n")
        + "\nJob:"
        + sgl.gen("job", stop="\n")
    )


@sgl.function(num_api_spec_tokens=32)
def gen_character_spec_completion(s):
    s += "Construct a character.\n"
    s += "Name: Steve Jobs.\nBirthday: February 24, 1955.\nJob: Apple CEO.\n\n"
    s += "Name:" + sgl.gen("name", stop="\n") + "\nBirthday:" + sgl.gen("birthday", stop="\n")
    s += "\nJob:" + sgl.gen("job", stop="\n")


@sgl.function
def text_qa(s, question):
    s += "Q: " + question + "\n"
    s += "A:" + sgl.gen("answer", stop="\n")


@pytest.fixture
def fake():
    with FakeOpenAIServer() as server:
        yield server


def chat_backend(fake, model="gpt-4o-mini", **kwargs):
    return OpenAI(model, base_url=fake.url + "/v1", api_key="k", retry_base_delay=0.0, **kwargs)


# ------------------------------------------------------------------------- on a fake server


def test_model_kinds():
    assert is_completion_model("gpt-3.5-turbo-instruct") and is_completion_model("davinci-002")
    assert not is_completion_model("gpt-4o") and not is_completion_model("SmolLM2-135M-Instruct")
    assert all(is_reasoning_model(m) for m in ("o1-mini", "o3", "o4-mini", "gpt-5-nano"))
    assert not is_reasoning_model("gpt-4o")


def test_chat_model_gets_messages(fake):
    fake.replies = ["Washington, D.C.", "The Mall."]
    backend = chat_backend(fake)
    state = multi_turn_question.run(question_1="Capital?", question_2="Sights?", backend=backend)
    assert (state["answer_1"], state["answer_2"]) == ("Washington, D.C.", "The Mall.")
    first, second = fake.bodies("/chat/completions")
    assert first["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Capital?"},
    ]
    assert first["max_tokens"] == 256 and first["temperature"] == 1.0
    assert "top_p" not in first and "n" not in first and "stop" not in first
    assert second["messages"][2] == {"role": "assistant", "content": "Washington, D.C."}
    assert [m["role"] for m in state.messages()] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]


def test_parameters_are_mapped(fake):
    backend = chat_backend(fake)

    prog = one_turn(
        "Hi",
        max_tokens=7,
        stop=["\n", "END"],
        temperature=0.2,
        top_p=0.5,
        frequency_penalty=0.3,
        presence_penalty=0.4,
    )

    prog.run(backend=backend).sync()
    body = fake.bodies()[-1]
    expected = {"max_tokens": 7, "stop": ["\n", "END"], "temperature": 0.2, "top_p": 0.5}
    expected.update(frequency_penalty=0.3, presence_penalty=0.4)
    assert {k: body[k] for k in expected} == expected


def test_reasoning_model_takes_max_completion_tokens(fake):
    backend = chat_backend(fake, model="o3-mini")
    state = multi_turn_question.run(question_1="a", question_2="b", backend=backend)
    state.sync()
    body = fake.bodies()[0]
    assert body["max_completion_tokens"] == 256
    assert "max_tokens" not in body and "temperature" not in body


def test_n_returns_a_list(fake):
    fake.replies = ["first", "second"]
    backend = chat_backend(fake)

    prog = one_turn("Hi", n=2, max_tokens=4)

    state = prog.run(backend=backend)
    assert state["x"] == ["first", "second"]
    assert fake.bodies()[-1]["n"] == 2


def test_json_schema_becomes_response_format(fake):
    fake.replies = ['{"name": "Ada"}']
    backend = chat_backend(fake)
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}

    prog = one_turn("A name as JSON", max_tokens=16, json_schema=schema)

    state = prog.run(backend=backend)
    assert json.loads(state["x"]) == {"name": "Ada"}
    fmt = fake.bodies()[-1]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == schema


def test_regex_and_other_local_features_are_rejected(fake):
    backend = chat_backend(fake)

    for kwargs, name in (
        ({"regex": r"\d+"}, "regex"),
        ({"top_k": 5}, "top_k"),
        ({"min_p": 0.1}, "min_p"),
        ({"stop_token_ids": [2]}, "stop_token_ids"),
    ):
        error = one_turn(**kwargs).run(backend=backend).error()
        assert isinstance(error, ValueError) and name in str(error), (name, error)
    assert fake.requests == []


def test_completion_model_gets_the_text(fake):
    fake.replies = [" Paris\nQ: next"]
    backend = chat_backend(fake, model="gpt-3.5-turbo-instruct")
    state = text_qa.run(question="Capital of France?", backend=backend)
    assert state["answer"] == " Paris"
    body = fake.bodies("/completions")[-1]
    assert body["prompt"] == "Q: Capital of France?\nA:"
    assert body["stop"] == ["\n"]


def test_chat_model_sends_plain_text_as_one_user_message(fake):
    backend = chat_backend(fake)
    text_qa.run(question="Capital of France?", backend=backend).sync()
    assert fake.bodies()[-1]["messages"] == [
        {"role": "user", "content": "Q: Capital of France?\nA:"}
    ]


def test_chat_model_cannot_continue_a_half_written_turn(fake):
    backend = chat_backend(fake)

    @sgl.function
    def prog(s):
        s += sgl.user("Hi")
        s += sgl.assistant("Answer: " + sgl.gen("x"))

    error = prog.run(backend=backend).error()
    assert isinstance(error, RuntimeError) and "num_api_spec_tokens" in str(error)


def test_streaming_and_usage(fake):
    fake.replies = ["one two three four"]
    backend = chat_backend(fake)

    prog = one_turn("count please", max_tokens=10)

    state = prog.run(backend=backend, stream=True)
    assert "".join(state.text_iter("x")) == "one two three four"
    body = fake.bodies()[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    meta = state.get_meta_info("x")
    assert meta["finish_reason"] == {"type": "stop", "matched": None}
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (2, 4)
    assert backend.token_usage.prompt_tokens == 2 and backend.token_usage.completion_tokens == 4


def test_completion_model_streams(fake):
    fake.replies = [" Paris is nice"]
    backend = chat_backend(fake, model="gpt-3.5-turbo-instruct")
    state = text_qa.run(question="Capital?", backend=backend, stream=True)
    assert "".join(state.text_iter("answer")) == " Paris is nice"
    assert fake.bodies()[-1]["stream"] is True


def test_token_usage_sums_calls(fake):
    fake.replies = ["a b", "c d e"]
    backend = chat_backend(fake)
    multi_turn_question.run(question_1="x y z", question_2="w", backend=backend).sync()
    usage = backend.token_usage
    # prompts: 5 + 3 = 8 fake tokens, then 5 + 3 + 2 + 1 = 11; replies 2 and 3 tokens
    assert (usage.prompt_tokens, usage.completion_tokens, usage.num_calls) == (19, 5, 2)
    usage.reset()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.num_calls) == (0, 0, 0)


def test_rate_limits_and_connection_errors_are_retried(fake):
    fake.fail_next = [(429, "Rate limit reached"), (429, "Rate limit reached")]
    fake.replies = ["ok"]
    backend = chat_backend(fake, max_retries=2)
    state = text_qa.run(question="q", backend=backend)
    assert state["answer"] == "ok"
    assert len(fake.requests) == 3

    fake.fail_next = [(429, "Rate limit reached")] * 3
    state = text_qa.run(question="q", backend=backend)
    assert isinstance(state.error(), openai.RateLimitError)

    dead = OpenAI("gpt-4o", base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=1)
    dead.retry = type(dead.retry)(max_retries=1, base_delay=0.0)
    assert isinstance(text_qa.run(question="q", backend=dead).error(), openai.APIConnectionError)


def test_backoff_is_exponential():
    policy = OpenAI("gpt-4o", base_url="http://127.0.0.1:9/v1", retry_base_delay=0.5).retry
    assert [policy.delay(i) for i in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert policy.delay(20) == policy.max_delay


def test_api_error_carries_the_provider_message(fake):
    fake.fail_next = [(400, "This model's maximum context length is 8 tokens")]
    state = text_qa.run(question="q", backend=chat_backend(fake))
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        state["answer"]
    assert len(fake.requests) == 1


def test_image_reaches_the_api_as_image_url(fake, tmp_path):
    path = tmp_path / "dot.png"
    path.write_bytes(PNG_1PX)

    image_qa.run(image_file=str(path), question="Color?", backend=chat_backend(fake)).sync()
    content = fake.bodies()[-1]["messages"][0]["content"]
    url = next(p["image_url"]["url"] for p in content if p["type"] == "image_url")
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == PNG_1PX
    assert {"type": "text", "text": "Color?"} in content


def test_logprobs_are_returned(fake):
    fake.replies = ["yes no"]
    fake.token_logprob = lambda token: -0.5 if token.startswith("yes") else -1.5
    backend = chat_backend(fake)

    prog = one_turn("?", max_tokens=4, return_logprob=True, top_logprobs_num=1)

    state = prog.run(backend=backend)
    meta = state.get_meta_info("x")
    assert meta["output_token_logprobs"] == [[-0.5, None, "yes "], [-1.5, None, "no"]]
    assert fake.bodies()[-1]["top_logprobs"] == 1


def test_select_on_completion_model_scores_with_echo(fake):
    fake.token_logprob = lambda token: -0.1 if token.strip() in ("search", "engine") else -3.0
    backend = chat_backend(fake, model="gpt-3.5-turbo-instruct")

    @sgl.function
    def tool_use(s, question):
        s += "To answer this question: " + question + ". "
        s += "I need to use a " + sgl.gen("tool", choices=["calculator", "search engine"]) + ". "

    state = tool_use.run(question="Who won?", backend=backend)
    assert state["tool"] == "search engine"
    meta = state.get_meta_info("tool")
    assert meta["normalized_prompt_logprobs"] == pytest.approx([-3.0, -0.1])
    body = fake.bodies("/completions")[-1]
    assert body["echo"] is True and body["logprobs"] == 1
    prefix = "To answer this question: Who won?. I need to use a "
    assert body["prompt"] == [prefix + "calculator", prefix + "search engine"]


def test_select_on_chat_model_asks_for_an_enum_schema(fake):
    @sgl.function
    def prog(s):
        s += sgl.user("Pick")
        s += sgl.assistant(sgl.select("x", choices=["a", "b"]))

    fake.replies = ['{"choice": "b"}']
    state = prog.run(backend=chat_backend(fake))
    assert state["x"] == "b"
    assert state.get_meta_info("x")["select_method"] == "json_schema_enum"
    body = fake.bodies("/chat/completions")[-1]
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["choice"]["enum"] == ["a", "b"]
    assert body["temperature"] == 0.0


def test_speculative_chat_turn_is_one_call(fake):
    fake.replies = ["Name: Ada Lovelace\nBirthday: December 10, 1815\nJob: Mathematician\n"]
    backend = chat_backend(fake)
    state = gen_character_spec.run(backend=backend)
    assert state["name"] == " Ada Lovelace"
    assert state["birthday"] == " December 10, 1815"
    assert state["job"] == " Mathematician"
    assert backend.token_usage.num_calls == 1 and len(fake.requests) == 1
    body = fake.bodies()[0]
    assert body["max_tokens"] == 64 and "stop" not in body
    assert body["messages"][-1]["role"] == "user"  # the turn being filled is not sent
    assert "Name: Ada Lovelace\nBirthday: December 10, 1815\nJob: Mathematician" in state.text()


def test_speculative_chat_reply_preamble_is_skipped(fake):
    fake.replies = ["Sure! Here it is:\n\nName: Bo\nBirthday: May 1\nJob: Cook"]
    state = gen_character_spec.run(backend=chat_backend(fake))
    assert (state["name"], state["birthday"], state["job"]) == (" Bo", " May 1", " Cook")
    assert len(fake.requests) == 1


def test_speculative_chat_mismatch_is_an_error(fake):
    fake.replies = ["I cannot do that."]
    error = gen_character_spec.run(backend=chat_backend(fake), temperature=0).error()
    assert isinstance(error, RuntimeError) and "speculative execution failed" in str(error)
    assert len(fake.requests) == 1  # greedy decoding would only repeat itself


def test_speculative_chat_mismatch_is_resampled(fake):
    fake.replies = ["I cannot do that.", "Name: Bo\nBirthday: May 1\nJob: Cook\n"]
    backend = chat_backend(fake)
    state = gen_character_spec.run(backend=backend, temperature=0.7)
    assert (state["name"], state["birthday"], state["job"]) == (" Bo", " May 1", " Cook")
    assert backend.token_usage.num_calls == 2


def test_speculative_completion_recalls_when_the_text_diverges(fake):
    # The first completion ends after the birthday: the job needs a second call.
    fake.replies = [" Ada\nBirthday: 1815", " Countess\n"]
    backend = chat_backend(fake, model="gpt-3.5-turbo-instruct")
    state = gen_character_spec_completion.run(backend=backend)
    assert (state["name"], state["birthday"], state["job"]) == (" Ada", " 1815", " Countess")
    first, second = fake.bodies("/completions")
    assert first["prompt"].endswith("\n\nName:") and second["prompt"].endswith(" 1815\nJob:")
    assert all("stop" not in b and b["max_tokens"] == 32 for b in (first, second))
    assert backend.token_usage.num_calls == 2


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAI("gpt-4o")


def test_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ImportError, match=r'pip install "sglang\[openai\]"'):
        OpenAI("gpt-4o", api_key="k")


# ------------------------------------------------------------------ our server's /v1 (e2e)


def test_seed_program_on_our_server(server_url):
    backend = OpenAI("default", base_url=server_url + "/v1")
    state = multi_turn_question.run(
        question_1="What is the capital of the United States?",
        question_2="List two local attractions.",
        backend=backend,
        temperature=0,
    )
    assert state.error() is None
    assert state["answer_1"].strip() and state["answer_2"].strip()
    usage = backend.token_usage
    assert usage.num_calls == 2 and usage.prompt_tokens > 20 and usage.completion_tokens > 0


def test_chat_streaming_matches_on_our_server(server_url):
    backend = OpenAI("default", base_url=server_url + "/v1")

    prog = one_turn("Count from one to five.", max_tokens=8)

    streamed = prog.run(backend=backend, stream=True, temperature=0)
    text = "".join(streamed.text_iter("x"))
    plain = prog.run(backend=backend, temperature=0)
    assert text == plain["x"] and text.strip()
    assert (
        streamed.get_meta_info("x")["completion_tokens"]
        == plain.get_meta_info("x")["completion_tokens"]
    )


def test_completion_model_on_our_server(server_url):
    backend = OpenAI("default", is_chat_model=False, base_url=server_url + "/v1")
    state = text_qa.run(question="What is 2 + 2?", backend=backend, temperature=0, max_new_tokens=8)
    assert state.error() is None and "\n" not in state["answer"]
    meta = state.get_meta_info("answer")
    assert meta["completion_tokens"] <= 8


def test_select_on_our_server(server_url):
    backend = OpenAI("default", is_chat_model=False, base_url=server_url + "/v1")

    @sgl.function
    def prog(s):
        s += "The capital of France is" + sgl.select("x", choices=[" Paris", " banana split"])

    state = prog.run(backend=backend)
    assert state["x"] in (" Paris", " banana split")
    scores = state.get_meta_info("x")["normalized_prompt_logprobs"]
    assert len(scores) == 2 and all(v < 0 for v in scores)
    assert state["x"] == [" Paris", " banana split"][scores.index(max(scores))]


def test_speculative_execution_on_our_server(server_url):
    backend = OpenAI("default", is_chat_model=False, base_url=server_url + "/v1")
    state = gen_character_spec_completion.run(backend=backend, temperature=0)
    assert state.error() is None
    values = [state[k] for k in ("name", "birthday", "job")]
    assert all("\n" not in v for v in values)
    # one call per field at most; fewer whenever the model keeps the format
    assert 1 <= backend.token_usage.num_calls <= 3
    assert f"Name:{values[0]}\nBirthday:{values[1]}\nJob:{values[2]}" in state.text()
