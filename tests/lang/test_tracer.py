"""Tracing: the recorded nodes and the constant prefix a program always starts with."""

from __future__ import annotations

from scripted_backend import ScriptedBackend

import sglang as sgl
from sglang.lang.ir import (
    SglArgument,
    SglConstantText,
    SglGen,
    SglRoleBegin,
    SglSelect,
    TracingError,
)
from sglang.lang.tracer import SglFork, extract_prefix_by_tracing


@sgl.function
def tool_use(s, question):
    s += "To answer this question: " + question + ". "
    s += "I need to use a " + sgl.gen("tool", choices=["calculator", "search engine"]) + ". "
    if s["tool"] == "calculator":
        s += "The math expression is" + sgl.gen("expression")


def test_trace_records_nodes_with_argument_placeholders() -> None:
    traced = tool_use.trace()
    assert traced.complete
    kinds = [type(n) for n in traced.nodes]
    assert kinds[:3] == [SglConstantText, SglArgument, SglConstantText]
    assert SglSelect in kinds
    assert traced.nodes[1].name == "question"


def test_trace_with_given_arguments_uses_them() -> None:
    traced = tool_use.trace(question="2+2")
    assert traced.nodes[0].value == "To answer this question: 2+2. "
    assert not any(isinstance(n, SglArgument) for n in traced.nodes)


def test_prefix_stops_at_the_first_argument() -> None:
    assert extract_prefix_by_tracing(tool_use, ScriptedBackend()) == "To answer this question: "


def test_prefix_includes_roles_formatted_by_the_template() -> None:
    @sgl.function
    def chat(s, q):
        s += sgl.system("Be brief.")
        s += sgl.user(q)
        s += sgl.assistant(sgl.gen("a"))

    prefix = extract_prefix_by_tracing(chat, ScriptedBackend(chat_template="chatml"))
    assert prefix == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"


def test_formatting_an_argument_stops_the_trace_and_keeps_the_prefix() -> None:
    @sgl.function
    def fstring(s, name):
        s += "Hello. "
        s += f"My name is {name}." + sgl.gen("x")

    traced = fstring.trace()
    assert not traced.complete
    assert isinstance(traced.stopped_by, TracingError)
    assert extract_prefix_by_tracing(fstring, ScriptedBackend()) == "Hello. "


def test_fork_is_recorded() -> None:
    @sgl.function
    def forking(s):
        s += "p"
        forks = s.fork(2)
        forks += sgl.gen("x")
        forks.join()

    traced = forking.trace()
    assert isinstance(traced.nodes[1], SglFork)
    assert all(isinstance(f.nodes[0], SglGen) for f in traced.nodes[1].states)
    assert isinstance(traced.constant_prefix_nodes()[0], SglConstantText)


def test_prefix_of_a_program_starting_with_a_role_and_default_system() -> None:
    from sglang.lang.chat_template import get_chat_template

    @sgl.function
    def chat(s, q):
        s += sgl.user(q)

    prefix = extract_prefix_by_tracing(
        chat, ScriptedBackend(chat_template=get_chat_template("qwen"))
    )
    assert (
        prefix == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    )
    assert isinstance(chat.trace().nodes[0], SglRoleBegin)
