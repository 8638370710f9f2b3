"""The DSL's intermediate representation: sampling parameters and expression nodes."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

if TYPE_CHECKING:
    from sglang.lang.choices import ChoicesSamplingMethod
    from sglang.lang.interpreter import ProgramState

# Regexes of literals, as SGLang's frontend exports them (`from sglang.lang.ir import REGEX_INT`).
# NOTE: ours differ on purpose: REGEX_FLOAT and REGEX_INT take what Python's float() / int()
# read (exponents, "1.", ".5", "inf"), and REGEX_STR is any valid JSON string literal, where
# SGLang's allows only word characters and spaces (and REGEX_INT / REGEX_FLOAT trailing space).
_DIGITS = r"[0-9](_?[0-9])*"
REGEX_INT = rf"[-+]?{_DIGITS}"
REGEX_FLOAT = (
    rf"[-+]?(({_DIGITS}(\.({_DIGITS})?)?|\.{_DIGITS})([eE][-+]?{_DIGITS})?"
    r"|[iI][nN][fF]([iI][nN][iI][tT][yY])?|[nN][aA][nN])"
)
REGEX_BOOL = r"(True|False)"
REGEX_STR = r'"([^"\\\x00-\x1f]|\\(["\\/bfnrt]|u[0-9a-fA-F]{4}))*"'


@dataclass
class SglSamplingParams:
    """Sampling parameters of one `gen`, after defaults from `run(...)` are merged in.

    Field names follow `gen(...)`; `max_new_tokens` is gen's `max_tokens`. Backends convert
    these to their own API (srt: to_srt_kwargs(); API backends convert in their own module and
    must raise a clear error for a set field their API cannot honour, never drop it silently).
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    n: int = 1
    stop: Union[str, list[str], tuple[str, ...]] = ()
    stop_token_ids: Optional[list[int]] = None
    stop_regex: Union[str, list[str], None] = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = False
    return_logprob: Optional[bool] = None
    logprob_start_len: Optional[int] = None
    top_logprobs_num: Optional[int] = None
    return_text_in_logprobs: Optional[bool] = None
    json_schema: Optional[str] = None  # a JSON string (dicts and pydantic models are converted)
    regex: Optional[str] = None
    grammar: Optional[str] = None  # a context-free grammar (EBNF / Lark text)
    # Used only by the interpreter (not sent to backends as sampling parameters)
    dtype: Optional[Any] = None
    # Token healing (backends that support it; None: the backend's default, on for our runtime)
    token_healing: Optional[bool] = None

    def clone(self) -> "SglSamplingParams":
        return dataclasses.replace(self)

    def stop_list(self) -> list[str]:
        if isinstance(self.stop, str):
            return [self.stop] if self.stop else []
        return [s for s in self.stop if s]

    def to_srt_kwargs(self) -> dict[str, Any]:
        """The `sampling_params` object of the runtime's /generate."""
        d: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "n": self.n,
            "stop": self.stop_list() or None,
            "stop_token_ids": self.stop_token_ids,
            "stop_regex": self.stop_regex or None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "ignore_eos": self.ignore_eos,
            "regex": self.regex,
            "json_schema": self.json_schema,
            "ebnf": self.grammar,
        }
        return {k: v for k, v in d.items() if v is not None}


SAMPLING_PARAM_NAMES = frozenset(f.name for f in dataclasses.fields(SglSamplingParams))
# The sampling parameters `run(...)` / `run_batch(...)` accept as defaults for every gen.
RUN_SAMPLING_PARAM_NAMES = SAMPLING_PARAM_NAMES - {"json_schema", "regex", "grammar", "dtype", "n"}


# ---------------------------------------------------------------- expression nodes

_node_ids = itertools.count()


class SglExpr:
    """A node of a program: appended to a state with `s += expr`; `+` concatenates nodes."""

    def __init__(self) -> None:
        self.node_id = next(_node_ids)

    def __add__(self, other: Union[str, "SglExpr"]) -> "SglExprList":
        return SglExprList([self, to_expr(other)])

    def __radd__(self, other: Union[str, "SglExpr"]) -> "SglExprList":
        return SglExprList([to_expr(other), self])

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "node_id")
        return f"{type(self).__name__}({fields})"


def to_expr(value: Union[str, SglExpr, list[Any], tuple[Any, ...]]) -> SglExpr:
    """Turn what may be appended to a state into a node; TypeError for anything else."""
    if isinstance(value, SglExpr):
        return value
    if isinstance(value, str):
        return SglConstantText(value)
    if isinstance(value, (list, tuple)):
        return SglExprList([to_expr(v) for v in value])
    raise TypeError(f"cannot append {type(value).__name__} {value!r} to a program state")


class SglExprList(SglExpr):
    def __init__(self, expr_list: list[SglExpr]) -> None:
        super().__init__()
        self.expr_list = _flatten(expr_list)


def _flatten(exprs: list[SglExpr]) -> list[SglExpr]:
    out: list[SglExpr] = []
    for e in exprs:
        out.extend(e.expr_list if isinstance(e, SglExprList) else [e])
    return out


class SglConstantText(SglExpr):
    def __init__(self, value: str) -> None:
        super().__init__()
        self.value = value


class SglGen(SglExpr):
    """A generation; `overrides` holds only the sampling parameters the call set."""

    def __init__(self, name: Optional[str], overrides: dict[str, Any]) -> None:
        super().__init__()
        self.name = name
        self.overrides = overrides

    def resolve(self, defaults: SglSamplingParams) -> SglSamplingParams:
        return dataclasses.replace(defaults, **self.overrides)


class SglSelect(SglExpr):
    def __init__(
        self,
        name: Optional[str],
        choices: list[str],
        temperature: float,
        choices_method: "ChoicesSamplingMethod",
    ) -> None:
        super().__init__()
        self.name = name
        self.choices = choices
        self.temperature = temperature
        self.choices_method = choices_method


class SglImage(SglExpr):
    def __init__(self, path: Union[str, bytes]) -> None:
        super().__init__()
        self.path = path


class SglVideo(SglExpr):
    def __init__(self, path: str, num_frames: int) -> None:
        super().__init__()
        self.path = path
        self.num_frames = num_frames


class SglSeparateReasoning(SglExpr):
    """Split the values of the gens in `expr` into reasoning and answer (see api.separate_reasoning)."""

    def __init__(self, model_type: str, expr: SglExpr) -> None:
        super().__init__()
        self.model_type = model_type
        self.expr = expr

    def names(self) -> list[str]:
        """The variables of the gens and selects in `expr`."""
        exprs = self.expr.expr_list if isinstance(self.expr, SglExprList) else [self.expr]
        return [e.name for e in exprs if isinstance(e, (SglGen, SglSelect)) and e.name]


class SglRoleBegin(SglExpr):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role


class SglRoleEnd(SglExpr):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role


class SglVarScopeBegin(SglExpr):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class SglVarScopeEnd(SglExpr):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class SglCommitLazy(SglExpr):
    """Ask the backend to run operations it deferred (e.g. caching the prompt so far)."""


class SglVariable(SglExpr):
    """A reference to a variable: its value is appended once it exists."""

    def __init__(self, name: str, source: Optional["ProgramState"] = None) -> None:
        super().__init__()
        self.name = name
        self.source = source


class TracingError(Exception):
    """A traced program used a placeholder argument in a way tracing cannot follow."""


class SglArgument(SglExpr):
    """A placeholder for a program argument while tracing; it cannot be turned into text."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __str__(self) -> str:
        raise TracingError(f"argument {self.name!r} was used as text while tracing")

    def __format__(self, spec: str) -> str:
        raise TracingError(f"argument {self.name!r} was formatted while tracing")

    def __iter__(self) -> Iterator[Any]:
        raise TracingError(f"argument {self.name!r} was iterated while tracing")


# NOTE: SglFunction lives in sglang.lang.function, above the interpreter and the tracer it
# calls; it is still importable from here (resolved on first access, so no import loop).
_MOVED = {"SglFunction", "split_sampling_kwargs", "check_batch_kwargs"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from sglang.lang import function

        return getattr(function, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
