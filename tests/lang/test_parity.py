"""SGLang 0.5 frontend API parity on the scripted backend: names, forks, copy, batches, streams."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from scripted_backend import ScriptedBackend

import sglang as sgl
from sglang.lang.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR
from sglang.lang.reasoning import split_reasoning


def test_regex_constants_accept_what_python_reads() -> None:
    for text in ["0", "-12", "+7", "1_000"]:
        assert re.fullmatch(REGEX_INT, text) and int(text) is not None
    for text in ["1.5", "-2", "1e5", ".5", "1.", "inf", "NaN", "+3.0E-2"]:
        assert re.fullmatch(REGEX_FLOAT, text)
        float(text)
    for text in ["1.2.3", "e5", "--1", "1__0"]:
        assert not re.fullmatch(REGEX_FLOAT, text)
    assert re.fullmatch(REGEX_BOOL, "True") and not re.fullmatch(REGEX_BOOL, "true")


@pytest.mark.parametrize("text", ['""', '"a b"', r'"a\"b"', r'"C:\\dir"', r'"\u00e9\n"', '"é"'])
def test_regex_str_is_a_json_string_literal(text: str) -> None:
    assert re.fullmatch(REGEX_STR, text)
    json.loads(text)


@pytest.mark.parametrize("text", ['"a\\q"', '"a\nb"', '"tab\there"', '"open', '"a"b"'])
def test_regex_str_rejects_what_json_rejects(text: str) -> None:
    assert not re.fullmatch(REGEX_STR, text)
    with pytest.raises(ValueError):
        json.loads(text)


def test_forks_take_one_list_item_each() -> None:
    @sgl.function
    def prog(s):
        s += "Q:"
        forks = s.fork(2, position_ids_offset=[0, 0])
        forks += [" first", " second"]
        forks += sgl.gen("g", max_tokens=2)
        forks.join()

    backend = ScriptedBackend(reply=lambda prompt, params: prompt[-6:])
    state = prog.run(backend=backend)
    assert state["g"] == [" first", "second"]
    with pytest.raises(ValueError, match="2 forks"):
        prog2 = sgl.function(lambda s: s.fork(2).__iadd__(["only one"]))
        prog2.run(backend=backend)


def test_copy_as_a_context_manager_joins_into_the_source() -> None:
    @sgl.function
    def prog(s):
        s += "Hello"
        with s.copy() as c:
            c += " there" + sgl.gen("x", max_tokens=2)
        s += "!"

    state = prog.run(backend=ScriptedBackend())
    assert state["x"] == ["gen"]
    assert state.text() == "Hello!"


def test_copy_alone_is_an_independent_state() -> None:
    @sgl.function
    def prog(s):
        s += "A"
        c = s.copy()
        c += "B"
        s += "C"
        return c.text()

    state = prog.run(backend=ScriptedBackend())
    assert (state.ret_value, state.text()) == ("AB", "AC")


def test_run_batch_takes_argument_lists() -> None:
    @sgl.function
    def prog(s, a, b="-"):
        s += a + b

    backend = ScriptedBackend()
    states = prog.run_batch([["x", "y"], ("z",), {"a": "k", "b": "v"}], backend=backend)
    assert [st.text() for st in states] == ["xy", "z-", "kv"]
    with pytest.raises(ValueError, match="takes 1 to 2"):
        prog.run_batch([["a", "b", "c"]], backend=backend)


def test_cache_sends_the_traced_prefix() -> None:
    @sgl.function
    def prog(s, q):
        s += "You are terse. " * 3
        s += q + sgl.gen("a")

    backend = ScriptedBackend()
    assert prog.cache(backend=backend) == "You are terse. " * 3
    assert backend.cached == ["You are terse. " * 3]


def test_text_async_iter_with_meta_data() -> None:
    @sgl.function
    def prog(s):
        s += "Count:" + sgl.gen("c")

    backend = ScriptedBackend(reply=lambda p, params: "one two")
    state = prog.run(backend=backend, stream=True)

    async def collect() -> list:
        return [item async for item in state.text_async_iter("c", return_meta_data=True)]

    pieces = asyncio.run(collect())
    assert "".join(chunk for chunk, _ in pieces) == "one two"
    assert all(isinstance(meta, dict) and "completion_tokens" in meta for _, meta in pieces)
    assert pieces[-1][1] == state.get_meta_info("c")


@pytest.mark.parametrize(
    "model_type,text,expected",
    [
        ("deepseek-r1", "think hard</think>\n\nParis", ("think hard", "Paris")),
        ("deepseek-r1", "<think>x</think>y", ("x", "y")),
        ("deepseek-r1", "still thinking", ("still thinking", "")),
        ("qwen3", "<think>a</think> b", ("a", "b")),
        ("qwen3", "no reasoning", ("", "no reasoning")),
    ],
)
def test_split_reasoning(model_type: str, text: str, expected: tuple) -> None:
    assert split_reasoning(text, model_type) == expected


def test_separate_reasoning_splits_the_variable_and_the_text() -> None:
    @sgl.function
    def prog(s):
        s += sgl.user("Capital of France?")
        s += sgl.assistant(
            sgl.separate_reasoning(sgl.gen("a", max_tokens=20), model_type="deepseek-r1")
        )

    backend = ScriptedBackend(reply=lambda p, params: "It is Paris.</think>Paris.")
    state = prog.run(backend=backend)
    assert state["a"] == "Paris."
    assert state["a_reasoning_content"] == "It is Paris."
    assert state.messages()[-1]["content"] == "Paris."
    assert "</think>" not in state.text()
    with pytest.raises(ValueError, match="model_type"):
        sgl.separate_reasoning(sgl.gen("a"), model_type="nope")


def test_gen_stop_regex_is_checked_and_sent() -> None:
    with pytest.raises(ValueError, match="stop_regex"):
        sgl.gen("x", stop_regex="(")
    params = sgl.gen("x", stop_regex=[r"\d+\."]).resolve(sgl.lang.ir.SglSamplingParams())
    assert params.to_srt_kwargs()["stop_regex"] == [r"\d+\."]


def test_utils_helpers_exist_with_sglangs_names() -> None:
    from sglang import utils

    for name in ("launch_server_cmd", "wait_for_server", "terminate_process", "print_highlight"):
        assert callable(getattr(utils, name))
    utils.print_highlight("hello")
