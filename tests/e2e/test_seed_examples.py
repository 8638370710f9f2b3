"""Every example of the seed page, run verbatim against a real `launch_server` on the default model."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

import sglang as sgl
from sglang.lang.choices import mean_logprob

SEED = Path(
    os.environ.get(
        "SGLANG_SEED_PAGE",
        Path(__file__).resolve().parents[3] / "shared" / "seed" / "frontend-language.zh.md",
    )
)


def seed_code_blocks() -> list[str]:
    """The seed page's code, verbatim: its runs of ASCII lines (the prose is Chinese)."""
    if not SEED.exists():
        pytest.skip(f"the seed page is not at {SEED} (set SGLANG_SEED_PAGE)")
    blocks, current = [], []
    for line in SEED.read_text(encoding="utf-8").splitlines() + ["。"]:
        if line.isascii():
            current.append(line)
        elif current:
            blocks.append("\n".join(current).strip("\n") + "\n")
            current = []
    return [b for b in blocks if b.strip()]


def seed_example(marker: str) -> str:
    """The one code block of the seed that contains `marker`."""
    found = [b for b in seed_code_blocks() if marker in b]
    assert len(found) == 1, f"{len(found)} seed code blocks contain {marker!r}"
    return found[0]


@pytest.mark.parametrize(
    "marker",
    [
        'RuntimeEndpoint("http://localhost:30000")',
        'OpenAI("gpt-3.5-turbo")',
        "def tool_use(",
        "def tip_suggestion(",
        "def image_qa(",
        "def regular_expression_gen(",
        "def character_gen(",
        "text_qa.run_batch(",
        "stream=True",
        "def chat_example(",
    ],
)
def test_every_example_is_found_in_the_seed(marker: str) -> None:
    assert seed_example(marker).strip()


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
        ns, printed = run_snippet(
            seed_example('RuntimeEndpoint("http://localhost:30000")').replace(
                "http://localhost:30000", server_url
            )
        )
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
        ns, _ = run_snippet(seed_example('OpenAI("gpt-3.5-turbo")'))
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
    ns, _ = run_snippet(seed_example("def tool_use("))
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
    ns, _ = run_snippet(seed_example("def tip_suggestion("))
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
    code = seed_example("def regular_expression_gen(")
    ns, _ = run_snippet(code)
    state = ns["regular_expression_gen"].run()
    regex = re.search(r'regex=r"(.+)"', code).group(1)
    assert re.fullmatch(regex, state["answer"]), state["answer"]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_character_gen_returns_json_matching_the_regex(backend: Any, temperature: float) -> None:
    ns, _ = run_snippet(seed_example("def character_gen("))
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
    ns, _ = run_snippet(seed_example("text_qa.run_batch("))
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
    ns, printed = run_snippet(seed_example("stream=True"))
    state = ns["state"]
    assert printed == state.text()
    assert printed.startswith("Q: What is the capital of France?\nA:")


def test_streaming_at_temperature_zero_equals_a_plain_run(backend: Any) -> None:
    ns, _ = run_snippet(seed_example("stream=True").split("state = text_qa.run(")[0])
    text_qa = ns["text_qa"]
    streamed = text_qa.run(question="What is the capital of France?", temperature=0, stream=True)
    pieces = list(streamed.text_iter())
    plain = text_qa.run(question="What is the capital of France?", temperature=0)
    assert "".join(pieces) == plain.text()
    assert "Paris" in plain["answer"]


def test_chat_example_has_the_roles(backend: Any) -> None:
    ns, _ = run_snippet(seed_example("def chat_example("))
    state = ns["chat_example"].run()
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "Question: What is the capital of France?"
    assert messages[2]["content"].startswith("Answer: ")
    assert "\n" not in messages[2]["content"]


def test_image_qa_on_a_tiny_llava(vision_server: Any) -> None:
    """The seed's image_qa (its missing ")" closed) on a tiny LLaVA: the image token stands in
    the user turn, the image travels with the request, and the answer is the server's greedy
    continuation of that prompt with that image."""
    code = seed_example("def image_qa(")
    assert code.count("(") == code.count(")") + 1, "the seed's typo was fixed: drop this repair"
    ns, _ = run_snippet(code.rstrip() + ")\n")
    image = vision_server.images["a"]
    backend = sgl.RuntimeEndpoint(vision_server.url)
    state = ns["image_qa"].run(image, "What is this?", temperature=0, backend=backend)
    prompt = "<|im_start|>user\n<image>What is this?<|im_end|>\n<|im_start|>assistant\n"
    assert state.text() == prompt + state["answer"] + "<|im_end|>\n"
    assert state.messages()[0]["content"][0]["type"] == "image_url"
    body = {
        "text": prompt,
        "image_data": image_data_uri(image),
        "sampling_params": {"max_new_tokens": 256, "temperature": 0},
    }
    direct = requests.post(vision_server.url + "/generate", json=body, timeout=120).json()
    assert state["answer"] == direct["text"]


def image_data_uri(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()
