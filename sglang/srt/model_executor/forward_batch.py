"""ForwardBatch: the tensors one forward pass needs, built by the scheduler, read by the model."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

# LogitsOutput belongs to the logits layer; it is also reachable from here, beside ForwardBatch.
from sglang.srt.layers.logits import LogitsOutput  # noqa: F401


class ForwardMode(enum.Enum):
    EXTEND = 1  # one or more new tokens per request (prefill, chunked prefill, jump-forward)
    DECODE = 2  # exactly one new token per request


@dataclass
class ForwardBatch:
    """One forward pass over B requests with T new tokens in all.

    NOTE: the new tokens of request i are input_ids[sum(extend_seq_lens[:i]) :][: extend_seq_lens[i]];
    their KV goes to out_cache_loc at the same offsets. req_to_token[req_pool_indices[i], :seq_lens[i]]
    holds the KV slots of the whole sequence, the new tokens' slots included (the scheduler writes
    them before the forward).
    """

    mode: ForwardMode
    batch_size: int
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    out_cache_loc: torch.Tensor  # [T] int64, KV slots the new tokens are written to
    req_pool_indices: torch.Tensor  # [B] int64, rows of req_to_token
    seq_lens: torch.Tensor  # [B] int64, total tokens per request after this pass
    req_to_token: torch.Tensor  # [max_reqs, max_context_len] int64, the pool's table
    seq_lens_cpu: list[int]
    extend_prefix_lens_cpu: list[int]  # [B] tokens already in the KV cache before this pass
    extend_seq_lens_cpu: list[int]  # [B] new tokens this pass (all 1 in DECODE)

    # Logprobs of input tokens. For request i with n new tokens, the model scores the new tokens
    # at chunk offsets k+1 .. n-1 (each from the hidden state of the token before it), where
    # k = extend_logprob_start_lens_cpu[i]; k >= n - 1 means none. The distribution after the
    # last new token is next_token_logits; the scheduler stitches chunk boundaries with it.
    return_logprob: bool = False
    extend_logprob_start_lens_cpu: Optional[list[int]] = None
    top_logprobs_nums: Optional[list[int]] = None

    # EXTEND passes with images: per request, its MultimodalInputs or None (vision models read it)
    mm_inputs: Optional[list[Any]] = None

    # Filled by the attention backend's init_forward_metadata() (once per pass, not per layer).
    attn_metadata: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def is_decode(self) -> bool:
        return self.mode == ForwardMode.DECODE

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])
