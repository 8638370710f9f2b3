"""Req: one request's state inside the scheduler; building a ForwardBatch from a list of them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch

from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode
from sglang.srt.sampling.sampling_params import SamplingParams

if TYPE_CHECKING:
    from sglang.srt.managers.detokenizer import IncrementalDetokenizer, StopChecker
    from sglang.srt.mem_cache.radix_cache import TreeNode


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass
class Req:
    """A request as the scheduler sees it.

    NOTE: fill_ids = origin_input_ids + output_ids. The KV of fill_ids[:kv_len] is in the pool at
    req_to_token[req_pool_idx, :kv_len]; of those, the first cached_len slots belong to the radix
    tree (locked through last_node), the rest to this request.
    """

    rid: str
    origin_input_ids: list[int]
    sampling_params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    stream: bool = False
    output_ids: list[int] = field(default_factory=list)

    # KV state, owned by the scheduler
    req_pool_idx: Optional[int] = None
    kv_len: int = 0
    cached_len: int = 0
    last_node: Optional["TreeNode"] = None
    cached_tokens: int = 0  # prompt tokens reused from the cache at first admission
    admitted: bool = False

    # Grammar (set by the scheduler when the compiled grammar is ready)
    grammar: Any = None
    grammar_future: Any = None

    # Text (filled by the scheduler as tokens arrive)
    detokenizer: Optional["IncrementalDetokenizer"] = None
    stop_checker: Optional["StopChecker"] = None
    text: str = ""
    sent_text_len: int = 0
    sent_ids_len: int = 0
    finish_reason: Optional[dict[str, Any]] = None
    finish_cut: Optional[int] = None  # where the output text ends (stop string trimming)

    # Logprobs (filled after each pass); *_sent counts entries already sent
    input_token_logprobs: list[tuple[Optional[float], int]] = field(default_factory=list)
    input_top_logprobs: list[Optional[list[tuple[float, int]]]] = field(default_factory=list)
    input_logprobs_done: bool = False
    input_logprobs_sent: bool = False
    output_token_logprobs: list[tuple[float, int]] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    output_logprobs_sent: int = 0

    @property
    def fill_ids(self) -> list[int]:
        return self.origin_input_ids + self.output_ids

    def fill_slice(self, start: int, end: int) -> list[int]:
        """fill_ids[start:end] without building fill_ids (decode asks for one token a step)."""
        n = len(self.origin_input_ids)
        if start >= n:
            return self.output_ids[start - n : end - n]
        if end <= n:
            return self.origin_input_ids[start:end]
        return self.origin_input_ids[start:] + self.output_ids[: end - n]

    @property
    def seq_len(self) -> int:
        return len(self.origin_input_ids) + len(self.output_ids)

    @property
    def pending_len(self) -> int:
        """Tokens whose KV is not computed yet."""
        return self.seq_len - self.kv_len

    @property
    def step(self) -> int:
        return len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def wants_input_logprobs(self) -> bool:
        return self.return_logprob and self.logprob_start_len >= 0 and not self.input_logprobs_done

    def max_prefix_len(self) -> int:
        """How much of fill_ids may come from the cache: one token must be computed to get
        logits, and input logprobs need the hidden state before logprob_start_len."""
        limit = self.seq_len - 1
        if self.wants_input_logprobs:
            limit = min(limit, max(self.logprob_start_len - 1, 0))
        return max(limit, 0)

    def finish(self, kind: FinishReason, **detail: Any) -> None:
        if self.finish_reason is None:
            self.finish_reason = {"type": kind.value, **detail}


@dataclass
class ScheduledChunk:
    """One request's share of a forward pass: fill_ids[start:start + length]."""

    req: Req
    start: int
    length: int

    @property
    def reaches_end(self) -> bool:
        return self.start + self.length == self.req.seq_len


def build_forward_batch(
    mode: ForwardMode,
    chunks: list[ScheduledChunk],
    out_cache_loc: torch.Tensor,
    req_to_token: torch.Tensor,
    device: torch.device,
) -> ForwardBatch:
    """Tensors for one pass; out_cache_loc [T] holds the slots of the new tokens, chunk by chunk."""
    input_ids: list[int] = []
    positions: list[int] = []
    for c in chunks:
        input_ids.extend(c.req.fill_slice(c.start, c.start + c.length))
        positions.extend(range(c.start, c.start + c.length))
    seq_lens = [c.start + c.length for c in chunks]
    want_logprob = [c.req.wants_input_logprobs for c in chunks]
    starts = [logprob_offset(c) if w else c.length for c, w in zip(chunks, want_logprob)]
    return ForwardBatch(
        mode=mode,
        batch_size=len(chunks),
        input_ids=torch.tensor(input_ids, dtype=torch.int64, device=device),
        positions=torch.tensor(positions, dtype=torch.int64, device=device),
        out_cache_loc=out_cache_loc,
        req_pool_indices=torch.tensor(
            [c.req.req_pool_idx for c in chunks], dtype=torch.int64, device=device
        ),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=device),
        req_to_token=req_to_token,
        seq_lens_cpu=seq_lens,
        extend_prefix_lens_cpu=[c.start for c in chunks],
        extend_seq_lens_cpu=[c.length for c in chunks],
        return_logprob=any(want_logprob),
        extend_logprob_start_lens_cpu=starts,
        top_logprobs_nums=[c.req.top_logprobs_num if w else 0 for c, w in zip(chunks, want_logprob)],
    )


def logprob_offset(c: ScheduledChunk) -> int:
    """Chunk offset of the first hidden state whose next-token logprob is wanted."""
    first_hidden = max(c.req.logprob_start_len - 1, 0)
    return max(first_hidden - c.start, 0)
