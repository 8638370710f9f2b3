"""ReqState: what the HTTP process knows of one in-flight request, assembled from ReqOutput deltas."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from sglang.srt.managers.io_struct import (
    FinishReason,
    GenerateOutput,
    LogprobEntry,
    ReqOutput,
    TokenLogprob,
)

TokenText = Callable[[int], str]


@dataclass
class ReqState:
    rid: str
    event: asyncio.Event  # shared by all requests of one generate call
    return_logprob: bool = False
    return_text: bool = False  # token texts in logprob entries
    constrained: bool = False  # has a grammar: its first output says whether it compiled
    text: str = ""
    output_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: Optional[FinishReason] = None
    finished: bool = False
    seen_output: bool = False  # the scheduler sent something for it
    failed: bool = False  # ended because the scheduler process is gone
    dirty: bool = False  # got output not yet handed to the caller
    timing: Optional[Any] = None  # metrics.ReqTiming when the request is counted in /metrics
    input_token_logprobs: list[LogprobEntry] = field(default_factory=list)
    input_top_logprobs: list[Optional[list[LogprobEntry]]] = field(default_factory=list)
    output_token_logprobs: list[LogprobEntry] = field(default_factory=list)
    output_top_logprobs: list[Optional[list[LogprobEntry]]] = field(default_factory=list)
    embedding: Optional[list[float]] = None  # an embedding request's result

    def finish(self, reason: FinishReason) -> None:
        self.finish_reason = reason
        self.finished = True
        self.dirty = True
        self.event.set()

    def apply(self, out: ReqOutput, token_text: TokenText) -> None:
        """Fold one step's delta in."""
        self.seen_output = True
        self.text += out.text_delta
        self.output_ids.extend(out.output_ids)
        self.prompt_tokens = out.prompt_tokens
        self.completion_tokens = out.completion_tokens
        self.cached_tokens = out.cached_tokens
        if out.embedding is not None:
            self.embedding = out.embedding
        if self.return_logprob:
            self._apply_logprobs(out, token_text if self.return_text else None)
        self.dirty = True
        if out.finish_reason is not None:
            self.finish(out.finish_reason)
        self.event.set()

    def _apply_logprobs(self, out: ReqOutput, token_text: Optional[TokenText]) -> None:
        if out.input_token_logprobs is not None:
            self.input_token_logprobs = _entries(out.input_token_logprobs, token_text)
        if out.input_top_logprobs is not None:
            self.input_top_logprobs = [_top(t, token_text) for t in out.input_top_logprobs]
        if out.output_token_logprobs:
            self.output_token_logprobs.extend(_entries(out.output_token_logprobs, token_text))
        if out.output_top_logprobs:
            self.output_top_logprobs.extend(_top(t, token_text) for t in out.output_top_logprobs)

    def snapshot(self, index: Optional[int] = None) -> GenerateOutput:
        return GenerateOutput(
            rid=self.rid,
            text=self.text,
            output_ids=list(self.output_ids),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
            finish_reason=self.finish_reason,
            return_logprob=self.return_logprob,
            input_token_logprobs=list(self.input_token_logprobs),
            input_top_logprobs=list(self.input_top_logprobs),
            output_token_logprobs=list(self.output_token_logprobs),
            output_top_logprobs=list(self.output_top_logprobs),
            index=index,
        )


def _entries(pairs: list[TokenLogprob], token_text: Optional[TokenText]) -> list[LogprobEntry]:
    return [
        LogprobEntry(lp, tid, token_text(tid) if token_text is not None else None)
        for lp, tid in pairs
    ]


def _top(
    pairs: Optional[list[TokenLogprob]], token_text: Optional[TokenText]
) -> Optional[list[LogprobEntry]]:
    return None if pairs is None else _entries(pairs, token_text)
