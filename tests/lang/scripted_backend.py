"""A scripted in-memory backend for the interpreter's unit tests (no model, no HTTP)."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator, Optional, Union

from sglang.lang.backend.base import BaseBackend
from sglang.lang.chat_template import ChatTemplate, get_chat_template
from sglang.lang.choices import ChoicesDecision, ChoicesSamplingMethod, mean_logprob
from sglang.lang.ir import SglSamplingParams

Reply = Callable[[str, SglSamplingParams], Union[str, list[str]]]


def _default_reply(prompt: str, params: SglSamplingParams) -> Union[str, list[str]]:
    return [f"sample{i}" for i in range(params.n)] if params.n > 1 else "gen"


class ScriptedBackend(BaseBackend):
    """Answers gen with `reply(prompt, params)`; scores select choices with `choice_logprobs`.

    Every call is recorded in `calls` as (kind, prompt, detail) in the order the calls arrived.
    """

    def __init__(
        self,
        reply: Reply = _default_reply,
        chat_template: Union[str, ChatTemplate] = "default",
        choice_logprobs: Optional[Callable[[str, str], list[list[Any]]]] = None,
        stream_piece_len: int = 2,
        before_piece: Optional[Callable[[int], None]] = None,
    ) -> None:
        super().__init__()
        self.reply = reply
        if isinstance(chat_template, str):
            chat_template = get_chat_template(chat_template)
        self.chat_template = chat_template
        self.choice_logprobs = choice_logprobs or (
            lambda prompt, choice: [[-float(len(choice)), 0, choice]]
        )
        self.stream_piece_len = stream_piece_len
        self.before_piece = before_piece or (lambda i: None)
        self.calls: list[tuple[str, str, Any]] = []
        self.cached: list[str] = []
        self.ended: list[str] = []
        self._lock = threading.Lock()

    def _record(self, kind: str, prompt: str, detail: Any) -> None:
        with self._lock:
            self.calls.append((kind, prompt, detail))

    def get_model_name(self) -> str:
        return "scripted"

    def cache_prefix(self, prefix_str: str) -> None:
        with self._lock:
            self.cached.append(prefix_str)

    def commit_lazy_operations(self, s: Any) -> None:
        self.cache_prefix(s.text_)

    def end_program(self, s: Any) -> None:
        with self._lock:
            self.ended.append(s.sid)

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[Any, Any]:
        prompt = s.text_
        self._record("generate", prompt, sampling_params)
        out = self.reply(prompt, sampling_params)
        if isinstance(out, list):
            return out, [{"prompt": prompt, "index": i} for i in range(len(out))]
        return out, {"prompt": prompt, "completion_tokens": len(out)}

    def generate_stream(
        self, s: Any, sampling_params: SglSamplingParams
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        prompt = s.text_
        self._record("generate_stream", prompt, sampling_params)
        out = self.reply(prompt, sampling_params)
        assert isinstance(out, str)
        step = self.stream_piece_len
        for i in range(0, len(out), step):
            self.before_piece(i // step)
            yield out[i : i + step], {"prompt": prompt, "completion_tokens": i // step + 1}

    def select(
        self,
        s: Any,
        choices: list[str],
        temperature: float,
        choices_method: Optional[ChoicesSamplingMethod] = None,
    ) -> ChoicesDecision:
        from sglang.lang.choices import token_length_normalized

        prompt = s.text_
        self._record("select", prompt, list(choices))
        lps = [self.choice_logprobs(prompt, c) for c in choices]
        method = choices_method or token_length_normalized
        return method(
            choices=choices,
            normalized_prompt_logprobs=[mean_logprob(x) for x in lps],
            input_token_logprobs=lps,
            output_token_logprobs=[[] for _ in choices],
            unconditional_token_logprobs=[self.choice_logprobs("", c) for c in choices],
        )
