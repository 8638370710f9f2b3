"""SamplingBatchInfo: the sampling parameters of one batch of requests, as tensors."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, Union

import numpy as np
import torch

from sglang.srt.sampling.sampling_params import SamplingParams

_MASK32 = 0xFFFFFFFF


class SamplingReq(Protocol):
    """The only attributes of a scheduler request that sampling reads."""

    sampling_params: SamplingParams
    output_ids: list[int]
    origin_input_ids: list[int]
    step: int  # tokens sampled so far for this request


@dataclass
class SamplingBatchInfo:
    """Per-request sampling parameters of one batch of B requests over a vocabulary of V.

    Built by the scheduler once per step with from_reqs(); read by the Sampler. The Python flags
    are computed on the host so the sampler can pick fast paths without a device sync.
    """

    vocab_size: int
    temperatures: torch.Tensor  # [B, 1] float32
    # NOTE: greedy rows hold neutral values (temperature 1, top_k 1, top_p 1, min_p 0) so they
    # never widen the filtering work of the sampled rows; they take the argmax anyway.
    top_ps: torch.Tensor  # [B] float32
    top_ks: torch.Tensor  # [B] int64, clamped to vocab_size
    min_ps: torch.Tensor  # [B] float32
    greedy_rows: torch.Tensor  # [B] bool
    is_all_greedy: bool
    has_greedy_rows: bool
    # Rows cut by top_k or top_p; the others sample from the whole vocabulary.
    truncated_rows: torch.Tensor  # [B] bool
    # The flags and max_top_k look only at the sampled (non-greedy) rows.
    need_top_p: bool
    need_top_k: bool
    need_min_p: bool
    need_full_vocab: bool  # some row is cut by neither top_k nor top_p
    max_top_k: int  # the largest top_k below vocab_size, 1 if none

    # Penalties, sparse over the ids they touch; None where no request of the batch uses them.
    # NOTE: a row's ids are distinct, padded by repeating its first (id, offset), so writing the
    # penalized values back is well defined.
    penalty_ids: Optional[torch.Tensor] = None  # [B, L] int64
    # frequency_penalty * count + presence_penalty * (count > 0) over the output ids, subtracted.
    penalty_offsets: Optional[torch.Tensor] = None  # [B, L] float32
    # HF's repetition penalty over prompt + output ids; 1.0 on rows without it.
    repetition_penalties: Optional[torch.Tensor] = None  # [B, 1] float32

    # (row, token) pairs forced to -inf: EOS under ignore_eos, EOS and stop_token_ids while a
    # request has fewer than min_new_tokens outputs.
    banned_rows: Optional[torch.Tensor] = None  # [N] int64
    banned_ids: Optional[torch.Tensor] = None  # [N] int64

    # Seeded requests: their rows and (seed low 32 bits, seed high 32 bits, step) counters.
    seeded_rows: Optional[torch.Tensor] = None  # [S] int64
    seed_counters: Optional[torch.Tensor] = None  # [S, 3] int64

    # Filled by the scheduler from the requests' grammars after from_reqs(); True = allowed.
    vocab_mask: Optional[torch.Tensor] = None  # [B, V] bool

    @property
    def batch_size(self) -> int:
        return int(self.top_ps.shape[0])

    @property
    def has_penalties(self) -> bool:
        return self.penalty_ids is not None

    @classmethod
    def from_reqs(
        cls,
        reqs: Sequence[SamplingReq],
        vocab_size: int,
        device: Union[str, torch.device],
        eos_token_ids: set[int],
    ) -> SamplingBatchInfo:
        """Gather the sampling parameters of `reqs` (in batch order) into tensors on `device`."""
        params = [r.sampling_params for r in reqs]
        greedy = [p.is_greedy for p in params]
        sampled = [p for p, g in zip(params, greedy) if not g]
        top_ks = [1 if g else min(p.top_k, vocab_size) for p, g in zip(params, greedy)]
        top_ps = [1.0 if g else p.top_p for p, g in zip(params, greedy)]
        truncated = [k < vocab_size or p < 1.0 for k, p in zip(top_ks, top_ps)]
        info = cls(
            vocab_size=vocab_size,
            temperatures=_floats(
                [[1.0 if g else p.temperature] for p, g in zip(params, greedy)], device
            ),
            top_ps=_floats(top_ps, device),
            top_ks=torch.tensor(top_ks, dtype=torch.int64, device=device),
            min_ps=_floats([0.0 if g else p.min_p for p, g in zip(params, greedy)], device),
            greedy_rows=torch.tensor(greedy, dtype=torch.bool, device=device),
            is_all_greedy=all(greedy),
            has_greedy_rows=any(greedy),
            truncated_rows=torch.tensor(truncated, dtype=torch.bool, device=device),
            need_top_p=any(p.top_p < 1.0 for p in sampled),
            need_top_k=any(p.top_k < vocab_size for p in sampled),
            need_min_p=any(p.min_p > 0.0 for p in sampled),
            need_full_vocab=not all(t or g for t, g in zip(truncated, greedy)),
            max_top_k=max((p.top_k for p in sampled if p.top_k < vocab_size), default=1),
        )
        info._set_penalties(reqs, device)
        info._set_banned_ids(reqs, device, eos_token_ids)
        info._set_seeds(reqs, device)
        return info

    def _set_penalties(self, reqs: Sequence[SamplingReq], device: Union[str, torch.device]) -> None:
        params = [r.sampling_params for r in reqs]
        uses_counts = any(_uses_counts(p) for p in params)
        uses_repetition = any(p.repetition_penalty != 1.0 for p in params)
        uses_bias = any(p.logit_bias for p in params)
        if not uses_counts and not uses_repetition and not uses_bias:
            return
        rows = [penalty_entries(r, self.vocab_size) for r in reqs]
        width = max(1, max(len(ids) for ids, _ in rows))
        # numpy builds a [B, L] array from lists several times faster than torch.tensor does
        ids = np.array([_pad(ids, width, 0) for ids, _ in rows], dtype=np.int64)
        offsets = np.array([_pad(off, width, 0.0) for _, off in rows], dtype=np.float32)
        self.penalty_ids = torch.from_numpy(ids).to(device)
        self.penalty_offsets = torch.from_numpy(offsets).to(device)
        if uses_repetition:
            factors = [[p.repetition_penalty if ids else 1.0] for p, (ids, _) in zip(params, rows)]
            self.repetition_penalties = _floats(factors, device)

    def _set_banned_ids(
        self, reqs: Sequence[SamplingReq], device: Union[str, torch.device], eos: set[int]
    ) -> None:
        rows: list[int] = []
        ids: list[int] = []
        for i, r in enumerate(reqs):
            p = r.sampling_params
            banned: set[int] = set(eos) if p.ignore_eos else set()
            if len(r.output_ids) < p.min_new_tokens:
                banned |= eos | set(p.stop_token_ids or ())
            banned = {t for t in banned if 0 <= t < self.vocab_size}
            rows.extend([i] * len(banned))
            ids.extend(sorted(banned))
        if rows:
            self.banned_rows = torch.tensor(rows, dtype=torch.int64, device=device)
            self.banned_ids = torch.tensor(ids, dtype=torch.int64, device=device)

    def _set_seeds(self, reqs: Sequence[SamplingReq], device: Union[str, torch.device]) -> None:
        rows = [i for i, r in enumerate(reqs) if r.sampling_params.seed is not None]
        if not rows:
            return
        counters = []
        for i in rows:
            seed = reqs[i].sampling_params.seed
            counters.append([seed & _MASK32, (seed >> 32) & _MASK32, reqs[i].step & _MASK32])
        self.seeded_rows = torch.tensor(rows, dtype=torch.int64, device=device)
        self.seed_counters = torch.tensor(counters, dtype=torch.int64, device=device)


def penalty_entries(req: SamplingReq, vocab_size: int) -> tuple[list[int], list[float]]:
    """The distinct ids a request's penalties touch, and the offset subtracted from each.

    Output ids carry frequency * count + presence; with a repetition penalty, the other prompt
    and output ids join with offset 0; logit_bias ids carry minus their bias (a request never
    combines logit_bias with a repetition penalty, which would scale the bias). Ids outside
    [0, vocab_size) are ignored.
    """
    p = req.sampling_params
    offsets: dict[int, float] = {}
    if p.repetition_penalty != 1.0:
        offsets = dict.fromkeys(req.origin_input_ids, 0.0)
        offsets.update(dict.fromkeys(req.output_ids, 0.0))
    if _uses_counts(p):
        # A scheduler request keeps its counts up to date as tokens arrive (no rebuild per step).
        counts = getattr(req, "output_counts", None)
        if counts is None:
            counts = Counter(req.output_ids)
        for token, count in counts.items():
            offsets[token] = p.frequency_penalty * count + p.presence_penalty
    for token, bias in p.logit_bias_ids().items():
        offsets[token] = offsets.get(token, 0.0) - bias
    if offsets and (min(offsets) < 0 or max(offsets) >= vocab_size):
        offsets = {t: v for t, v in offsets.items() if 0 <= t < vocab_size}
    return list(offsets), list(offsets.values())


def _pad(values: list, width: int, empty: Union[int, float]) -> list:
    """Pad to `width` by repeating the first value (`empty` for an empty list)."""
    fill = values[0] if values else empty
    return values + [fill] * (width - len(values))


def _uses_counts(p: SamplingParams) -> bool:
    return p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


def _floats(values: list, device: Union[str, torch.device]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)
