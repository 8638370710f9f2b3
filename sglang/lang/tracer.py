"""Tracing: run a program's body on placeholders to record its nodes and find its constant prefix."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union

from sglang.lang.backend.base import BaseBackend
from sglang.lang.interpreter import StateOps, StreamExecutor
from sglang.lang.ir import (
    SglArgument,
    SglConstantText,
    SglExpr,
    SglExprList,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglVariable,
    TracingError,
)

if TYPE_CHECKING:
    from sglang.lang.chat_template import ChatTemplate
    from sglang.lang.function import SglFunction

# Nodes whose text does not depend on arguments or on generation
_CONSTANT_NODES = (SglConstantText, SglRoleBegin, SglRoleEnd)


class SglFork(SglExpr):
    """Marks where a traced state forked; `states` are the traced forks."""

    def __init__(self, states: list["TracerProgramState"]) -> None:
        super().__init__()
        self.states = states


class TracerProgramState(StateOps):
    """A program state that records what is appended instead of running it."""

    def __init__(self) -> None:
        self.nodes: list[SglExpr] = []

    def _submit(self, expr: SglExpr) -> None:
        self.nodes.extend(expr.expr_list if isinstance(expr, SglExprList) else [expr])

    def __getitem__(self, name: str) -> SglVariable:
        return SglVariable(name)

    def get_var(self, name: str) -> SglVariable:
        return SglVariable(name)

    def set_var(self, name: str, value: Any) -> None:
        pass

    def __setitem__(self, name: str, value: Any) -> None:
        pass

    def get_meta_info(self, name: str) -> dict[str, Any]:
        return {}

    def fork(self, size: int = 1) -> "TracerStateGroup":
        states = [TracerProgramState() for _ in range(size)]
        self.nodes.append(SglFork(states))
        return TracerStateGroup(states)

    def copy(self) -> "TracerProgramState":
        return self.fork(1)[0]

    def text(self) -> str:
        raise TracingError("text() has no value while tracing")

    def messages(self) -> list[dict[str, Any]]:
        raise TracingError("messages() has no value while tracing")


@dataclass
class TracerStateGroup:
    states: list[TracerProgramState]

    def join(self, mode: str = "gather_variable") -> None:
        pass

    def __getitem__(self, i: int) -> TracerProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: TracerProgramState) -> None:
        pass

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[TracerProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Union[str, SglExpr, Callable[[int], Any]]) -> "TracerStateGroup":
        for i, state in enumerate(self.states):
            state += other(i) if callable(other) and not isinstance(other, SglExpr) else other
        return self


@dataclass
class TracedProgram:
    """The nodes a program appended to its root state, in order.

    `complete` is False when the body did something tracing cannot follow (used an argument as
    text, branched on a generated value it needed as text, ...); `stopped_by` says what.
    """

    nodes: list[SglExpr]
    complete: bool
    stopped_by: Optional[BaseException] = field(default=None, repr=False)

    def constant_prefix_nodes(self) -> list[SglExpr]:
        return list(itertools.takewhile(lambda n: isinstance(n, _CONSTANT_NODES), self.nodes))


def trace_program(
    program: "SglFunction", kwargs: dict[str, Any], backend: Optional[BaseBackend] = None
) -> TracedProgram:
    """Run `program`'s body on a recording state; arguments not given are placeholders."""
    arguments: dict[str, Any] = {name: SglArgument(name) for name in program.arg_names}
    arguments.update(program.bind_arguments)
    arguments.update(kwargs)
    state = TracerProgramState()
    try:
        program.func(state, **arguments)
    except Exception as e:  # the body went where placeholders cannot follow
        return TracedProgram(state.nodes, False, e)
    return TracedProgram(state.nodes, True)


class _TemplateOnlyBackend(BaseBackend):
    def __init__(self, chat_template: "ChatTemplate") -> None:
        super().__init__()
        self.chat_template = chat_template


def render_nodes(nodes: list[SglExpr], chat_template: "ChatTemplate") -> str:
    """The text constant nodes produce, formatted exactly as a real run formats it."""
    executor = StreamExecutor(
        _TemplateOnlyBackend(chat_template),
        {},
        SglSamplingParams(),
        chat_template,
        use_thread=False,
    )
    for node in nodes:
        executor.submit(node)
    return executor.text_


def extract_prefix_by_tracing(program: "SglFunction", backend: BaseBackend) -> str:
    """The text every run of `program` starts with, whatever its arguments ("" if none)."""
    traced = trace_program(program, {}, backend)
    try:
        return render_nodes(traced.constant_prefix_nodes(), backend.get_chat_template())
    except ValueError:  # unbalanced roles in the prefix: no usable prefix
        return ""
