"""ScheduledChunk (one request's share of a pass) and building a ForwardBatch from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from sglang.srt.managers.req import Req
from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode


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
        input_ids.extend(c.req.fill_ids[c.start : c.start + c.length])
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
            [c.req.kv.pool_idx for c in chunks], dtype=torch.int64, device=device
        ),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=device),
        req_to_token=req_to_token,
        seq_lens_cpu=seq_lens,
        extend_prefix_lens_cpu=[c.start for c in chunks],
        extend_seq_lens_cpu=[c.length for c in chunks],
        return_logprob=any(want_logprob),
        extend_logprob_start_lens_cpu=starts,
        top_logprobs_nums=[c.req.logprob.top_num if w else 0 for c, w in zip(chunks, want_logprob)],
        mm_inputs=_mm_inputs(chunks),
    )


def _mm_inputs(chunks: list[ScheduledChunk]) -> Optional[list[Any]]:
    """Each request's images, for a pass where some request has images: an extend chunk may
    cover image positions, and M-RoPE models (Qwen2-VL) place every token of such a request,
    in extend and decode passes alike, by its images."""
    mms = [c.req.mm_inputs for c in chunks]
    return mms if any(mm is not None for mm in mms) else None


def logprob_offset(c: ScheduledChunk) -> int:
    """Chunk offset of the first hidden state whose next-token logprob is wanted."""
    first_hidden = max(c.req.logprob.start_len - 1, 0)
    return max(first_hidden - c.start, 0)
