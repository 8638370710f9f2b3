"""The logits layer: next-token logits per request, and input-token logprobs where asked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from sglang.srt.distributed.parallel_state import SINGLE, TpGroup
from sglang.srt.layers.linear import dense_cpu_weight, linear, pack_weight
from sglang.srt.layers.quantization import Bf16Weight, QuantWeight

if TYPE_CHECKING:  # layers/ imports nothing from the packages above it at run time
    from sglang.srt.model_executor.forward_batch import ForwardBatch

# Rows of full-vocab logits materialized at once when scoring input tokens (bounds memory).
_LOGPROB_CHUNK = 256


@dataclass
class LogitsOutput:
    """What the model's logits layer returns for one pass."""

    next_token_logits: torch.Tensor  # [B, V] float32: logits after each request's last new token
    # Input-token logprobs, one list per request (empty where none were asked for): entry j is
    # the logprob of the new token at chunk offset k+1+j (see ForwardBatch).
    input_token_logprobs: Optional[list[list[float]]] = None
    # Top-k at the same positions, only for requests with top_logprobs_nums[i] > 0:
    # per request, per position, a list of (logprob, token_id), best first.
    input_top_logprobs: Optional[list[list[list[tuple[float, int]]]]] = None

    @classmethod
    def of_decode(cls, next_token_logits: torch.Tensor, fb: ForwardBatch) -> LogitsOutput:
        """A DECODE pass's output: it has no input tokens to score."""
        if not fb.return_logprob:
            return cls(next_token_logits)
        empty = [[] for _ in range(fb.batch_size)]
        return cls(next_token_logits, empty, [[] for _ in range(fb.batch_size)])


class LmHead:
    """The lm_head weight [V, D] and its faster forms (see layers/linear.py): a low-bit form for
    small batches, a oneDNN-packed copy, or a float32 copy on CPUs without bf16 dot products.

    Vocabulary-parallel (tp.size N > 1): weight is this rank's rows [V' / N, D] (V' the vocab
    padded to a multiple of N); every rank's logits are gathered (all-gather) and the padding
    columns dropped, so each rank returns the full [T, vocab_size].
    """

    def __init__(
        self,
        weight: torch.Tensor,
        quant: Optional[QuantWeight] = None,
        batch_invariant: bool = False,
        softcap: Optional[float] = None,
        tp: TpGroup = SINGLE,
        vocab_size: Optional[int] = None,
    ) -> None:
        self.batch_invariant = batch_invariant  # see layers/linear.py's linear_route
        self.tp = tp
        self.vocab_size = vocab_size or weight.shape[0] * tp.size
        # final logit soft-capping (Gemma 2): logits become cap * tanh(logits / cap)
        self.softcap = float(softcap) if softcap else None
        self.packed = pack_weight(weight)
        self.weight = weight if self.packed is not None else dense_cpu_weight(weight)
        if quant is None and self.weight is not weight and weight.dtype == torch.bfloat16:
            quant = Bf16Weight(weight.detach())  # decode reads half the bytes (see Bf16Weight)
        self.quant = quant

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, D] -> logits [T, V]
        logits = self._project(x)  # [T, V' / N] at tp size N
        if self.tp.enabled:
            logits = self.tp.all_gather_last(logits.float())[:, : self.vocab_size]
        if self.softcap is None:
            return logits
        return torch.tanh(logits.float() / self.softcap) * self.softcap

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        # float32 where the dense weight is (no bf16 rounding of logits)
        small = self.quant is not None and x.shape[0] <= self.quant.max_rows
        if self.weight.dtype == torch.float32 and not small and not self.batch_invariant:
            if self.quant is None or isinstance(self.quant, Bf16Weight):
                return torch.nn.functional.linear(x.float(), self.weight)
        return linear(x, self.weight, None, self.packed, self.quant, self.batch_invariant)


class LogitsProcessor:
    """Projects hidden states to the vocabulary only where a distribution is needed."""

    def __init__(self, lm_head: LmHead) -> None:
        self.lm_head = lm_head

    def __call__(self, hidden: torch.Tensor, forward_batch: ForwardBatch) -> LogitsOutput:
        # hidden: [T, D]
        fb = forward_batch
        last = hidden if fb.is_decode else hidden.index_select(0, _last_token_rows(fb))
        next_token_logits = self.lm_head(last).float()  # [B, V]
        if not fb.return_logprob:
            return LogitsOutput(next_token_logits=next_token_logits)
        logprobs, top = _input_logprobs(hidden, self.lm_head, fb)
        return LogitsOutput(
            next_token_logits, input_token_logprobs=logprobs, input_top_logprobs=top
        )


def _last_token_rows(fb: ForwardBatch) -> torch.Tensor:
    ends, total = [], 0
    for n in fb.extend_seq_lens_cpu:
        total += n
        ends.append(total - 1)
    return torch.tensor(ends, dtype=torch.int64, device=fb.input_ids.device)


def _scored_spans(fb: ForwardBatch) -> list[tuple[int, int]]:
    """Per request (first row, count): hidden rows whose next token is scored (see ForwardBatch)."""
    starts = fb.extend_logprob_start_lens_cpu or [0] * fb.batch_size
    spans, offset = [], 0
    for n, k in zip(fb.extend_seq_lens_cpu, starts):
        assert k >= 0, f"extend_logprob_start_len {k} < 0"
        spans.append((offset + k, max(n - 1 - k, 0)))
        offset += n
    return spans


def _input_logprobs(
    hidden: torch.Tensor, lm_head: LmHead, fb: ForwardBatch
) -> tuple[list[list[float]], list[list[list[tuple[float, int]]]]]:
    spans = _scored_spans(fb)
    top_nums = fb.top_logprobs_nums or [0] * fb.batch_size
    rows = [r for first, count in spans for r in range(first, first + count)]
    tops = [top_nums[i] for i, (_, count) in enumerate(spans) for _ in range(count)]
    token_lp: list[float] = []
    top_lp: list[list[tuple[float, int]]] = []
    if rows:
        token_lp, top_lp = _score_rows(hidden, lm_head, fb.input_ids, rows, tops)
    logprobs, top, cursor = [], [], 0
    for i, (_, count) in enumerate(spans):
        logprobs.append(token_lp[cursor : cursor + count])
        top.append(top_lp[cursor : cursor + count] if top_nums[i] > 0 else [])
        cursor += count
    return logprobs, top


def _score_rows(
    hidden: torch.Tensor,
    lm_head: LmHead,
    input_ids: torch.Tensor,
    rows: list[int],
    tops: list[int],
) -> tuple[list[float], list[list[tuple[float, int]]]]:
    """Logprob of input_ids[r + 1] under the distribution after row r, for each row r; + top-k."""
    index = torch.tensor(rows, dtype=torch.int64, device=hidden.device)
    targets = input_ids.index_select(0, index + 1)
    max_top = max(tops)
    token_lp, top_vals, top_ids = [], [], []
    for lo in range(0, len(rows), _LOGPROB_CHUNK):
        part = index[lo : lo + _LOGPROB_CHUNK]
        logprobs = lm_head(hidden.index_select(0, part)).float().log_softmax(-1)
        token_lp.append(logprobs.gather(1, targets[lo : lo + _LOGPROB_CHUNK, None]).squeeze(1))
        if max_top > 0:
            vals, ids = logprobs.topk(max_top, dim=-1)
            top_vals.append(vals)
            top_ids.append(ids)
    top_lp = _top_lists(top_vals, top_ids, tops) if max_top > 0 else [[] for _ in rows]
    return torch.cat(token_lp).tolist(), top_lp


def _top_lists(
    vals: list[torch.Tensor], ids: list[torch.Tensor], tops: list[int]
) -> list[list[tuple[float, int]]]:
    all_vals = torch.cat(vals).tolist()
    all_ids = torch.cat(ids).tolist()
    return [list(zip(v[:k], i[:k])) for v, i, k in zip(all_vals, all_ids, tops)]
