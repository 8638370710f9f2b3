"""Every example of the seed page, run verbatim against a real `launch_server` on the default model."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

import sglang as sgl
from sglang.lang.choices import mean_logprob

SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "frontend-language.zh.md"

# ---------------------------------------------------------------- the seed's code, verbatim

MULTI_TURN_LOCAL = r"""from sglang import function, system, user, assistant, gen, set_default_backend, RuntimeEndpoint

@function
def multi_turn_question(s, question_1, question_2):
    s += system("You are a helpful assistant.")
    s += user(question_1)
    s += assistant(gen("answer_1", max_tokens=256))
    s += user(question_2)
    s += assistant(gen("answer_2", max_tokens=256))

set_default_backend(RuntimeEndpoint("http://localhost:30000"))

state = multi_turn_question.run(
    question_1="What is the capital of the United States?",
    question_2="List two local attractions.",
)

for m in state.messages():
    print(m["role"], ":", m["content"])

print(state["answer_1"])
"""

MULTI_TURN_OPENAI = r"""from sglang import function, system, user, assistant, gen, set_default_backend, OpenAI

@function
def multi_turn_question(s, question_1, question_2):
    s += system("You are a helpful assistant.")
    s += user(question_1)
    s += assistant(gen("answer_1", max_tokens=256))
    s += user(question_2)
    s += assistant(gen("answer_2", max_tokens=256))

set_default_backend(OpenAI("gpt-3.5-turbo"))

state = multi_turn_question.run(
    question_1="What is the capital of the United States?",
    question_2="List two local attractions.",
)

for m in state.messages():
    print(m["role"], ":", m["content"])

print(state["answer_1"])
"""

TOOL_USE = r"""@sgl.function
def tool_use(s, question):
    s += "To answer this question: " + question + ". "
    s += "I need to use a " + sgl.gen("tool", choices=["calculator", "search engine"]) + ". "

    if s["tool"] == "calculator":
        s += "The math expression is" + sgl.gen("expression")
    elif s["tool"] == "search engine":
        s += "The key word to search is" + sgl.gen("word")
"""

TIP_SUGGESTION = r"""@sgl.function
def tip_suggestion(s):
    s += (
        "Here are two tips for staying healthy: "
        "1. Balanced Diet. 2. Regular Exercise.\n\n"
    )

    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += f"Now, expand tip {i+1} into a paragraph:\n"
        f += sgl.gen(f"detailed_tip", max_tokens=256, stop="\n\n")

    s += "Tip 1:" + forks[0]["detailed_tip"] + "\n"
    s += "Tip 2:" + forks[1]["detailed_tip"] + "\n"
    s += "In summary" + sgl.gen("summary")
"""

REGULAR_EXPRESSION_GEN = r"""@sgl.function
def regular_expression_gen(s):
    s += "Q: What is the IP address of the Google DNS servers?\n"
    s += "A: " + sgl.gen(
        "answer",
        temperature=0,
        regex=r"((25[0-5]|2[0-4]\d|[01]?\d\d?).){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)",
    )
"""

CHARACTER_GEN = r'''character_regex = (
    r"""\{\n"""
    + r"""    "name": "[\w\d\s]{1,16}",\n"""
    + r"""    "house": "(Gryffindor|Slytherin|Ravenclaw|Hufflepuff)",\n"""
    + r"""    "blood status": "(Pure-blood|Half-blood|Muggle-born)",\n"""
    + r"""    "occupation": "(student|teacher|auror|ministry of magic|death eater|order of the phoenix)",\n"""
    + r"""    "wand": \{\n"""
    + r"""        "wood": "[\w\d\s]{1,16}",\n"""
    + r"""        "core": "[\w\d\s]{1,16}",\n"""
    + r"""        "length": [0-9]{1,2}\.[0-9]{0,2}\n"""
    + r"""    \},\n"""
    + r"""    "alive": "(Alive|Deceased)",\n"""
    + r"""    "patronus": "[\w\d\s]{1,16}",\n"""
    + r"""    "bogart": "[\w\d\s]{1,16}"\n"""
    + r"""\}"""
)

@sgl.function
def character_gen(s, name):
    s += name + " is a character in Harry Potter. Please fill in the following information about this character.\n"
    s += sgl.gen("json_output", max_tokens=256, regex=character_regex)
'''

TEXT_QA_BATCH = r"""@sgl.function
def text_qa(s, question):
    s += "Q: " + question + "\n"
    s += "A:" + sgl.gen("answer", stop="\n")

states = text_qa.run_batch(
    [
        {"question": "What is the capital of the United Kingdom?"},
        {"question": "What is the capital of France?"},
        {"question": "What is the capital of Japan?"},
    ],
    progress_bar=True
)
"""

TEXT_QA_STREAM = r"""@sgl.function
def text_qa(s, question):
    s += "Q: " + question + "\n"
    s += "A:" + sgl.gen("answer", stop="\n")

state = text_qa.run(
    question="What is the capital of France?",
    temperature=0.1,
    stream=True
)

for out in state.text_iter():
    print(out, end="", flush=True)
"""

CHAT_EXAMPLE = r"""@sgl.function
def chat_example(s):
    s += sgl.system("You are a helpful assistant.")
    # Same as: s += s.system("You are a helpful assistant.")

    with s.user():
        s += "Question: What is the capital of France?"

    s += sgl.assistant_begin()
    s += "Answer: " + sgl.gen(max_tokens=100, stop="\n")
    s += sgl.assistant_end()
"""

SNIPPETS = {
    "multi_turn_local": MULTI_TURN_LOCAL,
    "multi_turn_openai": MULTI_TURN_OPENAI,
    "tool_use": TOOL_USE,
    "tip_suggestion": TIP_SUGGESTION,
    "regular_expression_gen": REGULAR_EXPRESSION_GEN,
    "character_gen": CHARACTER_GEN,
    "text_qa_batch": TEXT_QA_BATCH,
    "text_qa_stream": TEXT_QA_STREAM,
    "chat_example": CHAT_EXAMPLE,
}


def _squash(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_snippet_is_verbatim_from_the_seed(name: str) -> None:
    if not SEED.exists():
        pytest.skip(f"the seed page is not at {SEED}")
    assert _squash(SNIPPETS[name]) in _squash(SEED.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- running them


@pytest.fixture(scope="module")
def backend(server_url: str) -> Iterator[Any]:
    previous = sgl.global_config.default_backend
    endpoint = sgl.RuntimeEndpoint(server_url)
    sgl.set_default_backend(endpoint)
    yield endpoint
    sgl.global_config.default_backend = previous


def run_snippet(code: str, **names: Any) -> tuple[dict[str, Any], str]:
    """exec the snippet with `sgl` imported as the seed says; returns its namespace and stdout."""
    namespace: dict[str, Any] = {"sgl": sgl, "__name__": "seed_example", **names}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<seed example>", "exec"), namespace)
    return namespace, out.getvalue()


@pytest.mark.timeout(1800)
def test_multi_turn_question_on_the_local_server(backend: Any, server_url: str) -> None:
    previous = sgl.global_config.default_backend
    try:
        ns, printed = run_snippet(MULTI_TURN_LOCAL.replace("http://localhost:30000", server_url))
    finally:
        sgl.global_config.default_backend = previous
    state = ns["state"]
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == "What is the capital of the United States?"
    assert messages[2]["content"] == state["answer_1"]
    assert isinstance(state["answer_2"], str) and state["answer_2"]
    assert printed.endswith(state["answer_1"] + "\n")
    assert "<|im_start|>assistant\n" + state["answer_1"] in state.text()


def test_multi_turn_question_through_the_openai_backend_on_our_server(
    backend: Any, server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openai")
    monkeypatch.setenv("OPENAI_BASE_URL", server_url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    previous = sgl.global_config.default_backend
    try:
        ns, _ = run_snippet(MULTI_TURN_OPENAI)
    finally:
        sgl.global_config.default_backend = previous
    state = ns["state"]
    assert [m["role"] for m in state.messages()] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert state["answer_1"] and state["answer_2"]


def check_select_agrees_with_logprobs(state: Any, name: str, choices: list[str]) -> None:
    chosen = state[name]
    assert chosen in choices
    meta = state.get_meta_info(name)
    scores = meta["normalized_prompt_logprobs"]
    assert len(scores) == len(choices)
    for score, entries in zip(scores, meta["input_token_logprobs"]):
        assert entries, "every choice is scored on at least one token"
        assert score == pytest.approx(mean_logprob(entries))
    assert choices[scores.index(max(scores))] == chosen


@pytest.mark.parametrize("question", ["What is 25 * 4?", "Who won the 2010 football world cup?"])
def test_tool_use_selects_a_tool_and_follows_the_branch(backend: Any, question: str) -> None:
    ns, _ = run_snippet(TOOL_USE)
    state = ns["tool_use"].run(question=question, temperature=0, max_new_tokens=16)
    check_select_agrees_with_logprobs(state, "tool", ["calculator", "search engine"])
    branch_var = "expression" if state["tool"] == "calculator" else "word"
    assert isinstance(state[branch_var], str)
    other = "word" if branch_var == "expression" else "expression"
    with pytest.raises(KeyError):
        state[other]
    assert state.text().startswith(
        f"To answer this question: {question}. I need to use a {state['tool']}. "
    )


def test_tip_suggestion_forks_and_joins_texts(backend: Any) -> None:
    ns, _ = run_snippet(TIP_SUGGESTION)
    state = ns["tip_suggestion"].run(max_new_tokens=48, temperature=0)
    text = state.text()
    assert text.startswith(
        "Here are two tips for staying healthy: 1. Balanced Diet. 2. Regular Exercise.\n\n"
    )
    assert "Now, expand tip" not in text  # the forks' prompts stay in the forks
    tip1 = text.split("Tip 1:")[1].split("\nTip 2:")[0]
    assert "\n\n" not in tip1  # stop="\n\n" ends each fork
    assert isinstance(state["summary"], str)
    assert text.endswith("In summary" + state["summary"])


def test_regular_expression_gen_matches_the_ip_regex(backend: Any) -> None:
    ns, _ = run_snippet(REGULAR_EXPRESSION_GEN)
    state = ns["regular_expression_gen"].run()
    regex = r"((25[0-5]|2[0-4]\d|[01]?\d\d?).){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"
    assert re.fullmatch(regex, state["answer"]), state["answer"]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_character_gen_returns_json_matching_the_regex(backend: Any, temperature: float) -> None:
    ns, _ = run_snippet(CHARACTER_GEN)
    state = ns["character_gen"].run(name="Hermione Granger", temperature=temperature)
    out = state["json_output"]
    assert re.fullmatch(ns["character_regex"], out), out
    data = json.loads(out)
    assert set(data) == {
        "name",
        "house",
        "blood status",
        "occupation",
        "wand",
        "alive",
        "patronus",
        "bogart",
    }
    assert data["house"] in {"Gryffindor", "Slytherin", "Ravenclaw", "Hufflepuff"}
    assert set(data["wand"]) == {"wood", "core", "length"}


def test_text_qa_run_batch_returns_one_state_per_question_in_order(
    backend: Any, capsys: Any
) -> None:
    ns, _ = run_snippet(TEXT_QA_BATCH)
    states = ns["states"]
    questions = [
        "What is the capital of the United Kingdom?",
        "What is the capital of France?",
        "What is the capital of Japan?",
    ]
    assert len(states) == 3
    for state, q in zip(states, questions):
        assert state.text().startswith(f"Q: {q}\nA:")
        assert "\n" not in state["answer"]
    assert "3/3" in capsys.readouterr().err  # the progress bar ran


def test_streaming_prints_the_whole_text(backend: Any) -> None:
    ns, printed = run_snippet(TEXT_QA_STREAM)
    state = ns["state"]
    assert printed == state.text()
    assert printed.startswith("Q: What is the capital of France?\nA:")


def test_streaming_at_temperature_zero_equals_a_plain_run(backend: Any) -> None:
    ns, _ = run_snippet(TEXT_QA_STREAM.split("state = text_qa.run(")[0])
    text_qa = ns["text_qa"]
    streamed = text_qa.run(question="What is the capital of France?", temperature=0, stream=True)
    pieces = list(streamed.text_iter())
    plain = text_qa.run(question="What is the capital of France?", temperature=0)
    assert "".join(pieces) == plain.text()
    assert "Paris" in plain["answer"]


def test_chat_example_has_the_roles(backend: Any) -> None:
    ns, _ = run_snippet(CHAT_EXAMPLE)
    state = ns["chat_example"].run()
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "Question: What is the capital of France?"
    assert messages[2]["content"].startswith("Answer: ")
    assert "\n" not in messages[2]["content"]


def test_image_qa() -> None:
    pytest.skip("needs a multimodal model (the default model reads text only)")
