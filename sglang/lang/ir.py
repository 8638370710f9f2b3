"""The DSL's intermediate representation: sampling parameters, expression nodes, SglFunction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Union


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
