"""Sampler: the next token of every request of a batch, from its logits, in batched tensor ops."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from sglang.srt.layers import cpu_kernels
from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9
# Candidates a top_p row is first cut to on CPU (see sample_truncated).
TOP_P_CANDIDATES = 64
# Ids per block of the two-level inverse-CDF sampling.
SAMPLE_BLOCK = 256


class SampleOutput(NamedTuple):
    next_token_ids: torch.Tensor  # [B] int64
    # Logprobs of the raw model distribution (log_softmax of the unprocessed logits); None
    # unless asked for.
    next_token_logprobs: Optional[list[float]]
    # Per request, its top_logprobs_nums[i] best (logprob, token_id), best first.
    top_logprobs: Optional[list[list[tuple[float, int]]]]


class Sampler:
    """Picks one token per row.

    Order: penalties -> EOS/stop bans -> grammar vocab_mask -> argmax on greedy rows; on the
    others temperature -> top_k -> top_p -> min_p -> sample. Returns tensors; converts to lists
    only when logprobs are asked for.
    """

    def sample(
        self,
        logits: torch.Tensor,
        info: SamplingBatchInfo,
        return_logprob: bool = False,
        top_logprobs_nums: Optional[list[int]] = None,
    ) -> SampleOutput:
        """Pick the next token of each of the B rows of `logits`.

        Parameters
        ----------
        logits : [B, V] float tensor, the model's next-token logits; never modified.
        info : the batch's sampling parameters (info.vocab_size == V).
        return_logprob : also return logprobs of the raw distribution as lists.
        top_logprobs_nums : per row, how many top (logprob, id) pairs to return.
        """
        raw = logits.float()
        assert raw.shape[1] == info.vocab_size, (
            f"logits have {raw.shape[1]} columns, sampling info {info.vocab_size}"
        )
        penalized = apply_penalties(raw, info)
        processed = apply_masks(penalized, info, owned=penalized is not raw)
        if info.is_all_greedy:
            next_ids = argmax_rows(processed)
        else:
            next_ids = _sample_rows(processed, info)
        if not return_logprob:
            return SampleOutput(next_ids, None, None)
        nums = top_logprobs_nums or [0] * raw.shape[0]
        chosen, top = logprob_lists(raw, next_ids, nums)
        return SampleOutput(next_ids, chosen, top)


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """x [B, V] -> [B] int64, as x.argmax(-1) (first maximum; NaN counts as the largest).
    On CPU the C++ kernel: torch's argmax takes ~5 ms at [64, 49152] on one core, ~6x longer."""
    kernels = cpu_kernels.for_tensor(x)
    if kernels is not None and x.dtype == torch.float32 and x.dim() == 2 and x.shape[1] > 0:
        return kernels.argmax_rows(x)
    return x.argmax(dim=-1)


def apply_penalties(logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """Frequency/presence penalties from output counts, then HF's repetition penalty.

    Touches only the ids in info.penalty_ids. Returns a new tensor when any penalty applies,
    `logits` itself otherwise.
    """
    # logits: [B, V] float32
    if info.penalty_ids is None:
        return logits
    values = logits.gather(1, info.penalty_ids) - info.penalty_offsets  # [B, L]
    rep = info.repetition_penalties  # [B, 1] or None
    if rep is not None:
        values = torch.where(values > 0, values / rep, values * rep)
    # clone + in-place scatter: out-of-place scatter is ~3x slower on CPU at [64, 49152]
    return logits.clone().scatter_(1, info.penalty_ids, values)


def apply_masks(logits: torch.Tensor, info: SamplingBatchInfo, owned: bool = True) -> torch.Tensor:
    """Set banned ids and tokens outside info.vocab_mask to -inf (in place when `owned`)."""
    # logits: [B, V] float32
    if info.banned_rows is None and info.vocab_mask is None:
        return logits
    if not owned:
        logits = logits.clone()
    if info.banned_rows is not None:
        logits[info.banned_rows, info.banned_ids] = float("-inf")
    if info.vocab_mask is not None:
        logits.masked_fill_(~info.vocab_mask, float("-inf"))
    return logits


def _sample_rows(logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """Sample every row (greedy rows take the argmax): [B, V] -> [B] int64."""
    probs = torch.softmax(logits / info.temperatures, dim=-1)  # [B, V]
    uniforms = _uniforms(info, logits.device)  # [B]
    next_ids = None
    if info.need_top_k or info.need_top_p:
        next_ids = sample_truncated(probs, info, uniforms)
    if info.need_full_vocab:
        full_ids = sample_full_vocab(probs, info, uniforms)
        if next_ids is None:
            next_ids = full_ids
        else:
            next_ids = torch.where(info.truncated_rows, next_ids, full_ids)
    if info.has_greedy_rows:
        # From the logits: softmax can round two close logits to one probability.
        next_ids = torch.where(info.greedy_rows, argmax_rows(logits), next_ids)
    return next_ids


def sample_full_vocab(
    probs: torch.Tensor, info: SamplingBatchInfo, uniforms: torch.Tensor
) -> torch.Tensor:
    """Sample from the whole vocabulary, min_p applied: [B, V] -> [B]."""
    if info.need_min_p:
        threshold = probs.amax(dim=-1, keepdim=True) * info.min_ps.unsqueeze(1)  # [B, 1]
        probs = probs.masked_fill(probs < threshold, 0.0)
    return sample_from_probs(probs, uniforms)


def sample_from_probs(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling, one uniform per row; zero-probability ids never win.

    Two levels, so no [B, V] cumulative sum is written: a block of SAMPLE_BLOCK ids by block
    mass, then an id inside the block with what is left of the uniform.
    """
    # probs: [B, V] float32 >= 0, not necessarily normalized; uniforms: [B] float64 in [0, 1)
    vocab = probs.shape[1]
    if vocab <= SAMPLE_BLOCK:
        return _invert_cdf(probs.to(torch.float64), uniforms)[0]
    block, rest = _invert_cdf(_block_sums(probs), uniforms)  # [B], [B]
    offsets = torch.arange(SAMPLE_BLOCK, device=probs.device)
    cols = block.unsqueeze(1) * SAMPLE_BLOCK + offsets  # [B, SAMPLE_BLOCK]
    in_block = probs.gather(1, cols.clamp(max=vocab - 1)).masked_fill(cols >= vocab, 0.0)
    offset, _ = _invert_cdf(in_block.to(torch.float64), rest)
    return block * SAMPLE_BLOCK + offset


def _block_sums(probs: torch.Tensor) -> torch.Tensor:
    """Mass of each run of SAMPLE_BLOCK ids (the last run may be shorter): [B, V] -> [B, NB]."""
    # NOTE: summed in float32 and widened after; sum(dtype=float64) would copy all of probs.
    batch, vocab = probs.shape
    full = vocab // SAMPLE_BLOCK * SAMPLE_BLOCK
    sums = probs[:, :full].reshape(batch, -1, SAMPLE_BLOCK).sum(dim=-1)  # [B, V // SAMPLE_BLOCK]
    if full < vocab:
        sums = torch.cat([sums, probs[:, full:].sum(dim=-1, keepdim=True)], dim=1)
    return sums.to(torch.float64)


def _invert_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The index the uniform falls on in each row's cdf, and where in that index's share it fell.

    Returns (index [B] int64, fraction [B] float64 in [0, 1)), the fraction being a fresh
    uniform given the index.
    """
    # weights: [B, N] float64 >= 0, some > 0 per row; uniforms: [B] float64 in [0, 1)
    cdf = weights.cumsum(dim=-1)  # [B, N]
    total = cdf[:, -1:]  # [B, 1]
    # Strictly below the total; the first cdf entry above it is where the cdf rises, so the
    # chosen index has weight > 0.
    target = torch.minimum(uniforms.unsqueeze(1) * total, total.nextafter(torch.zeros_like(total)))
    index = torch.searchsorted(cdf, target, right=True).clamp_(max=weights.shape[1] - 1)  # [B, 1]
    weight = weights.gather(1, index)  # [B, 1]
    fraction = ((target - (cdf.gather(1, index) - weight)) / weight).clamp(0.0, 1.0 - 2**-53)
    return index.squeeze(1), fraction.squeeze(1)


def sample_truncated(
    probs: torch.Tensor, info: SamplingBatchInfo, uniforms: torch.Tensor
) -> torch.Tensor:
    """Sample under top_k, then top_p, then min_p: [B, V] -> [B] int64.

    Sorting a whole [B, V] row is slow on CPU, so each row is cut to its K best candidates and
    sampled among them in order of probability; a row whose cutoff may lie beyond them is
    redone with more (at last all V). The kept tokens do not depend on K, so neither does the
    sample of a seeded row.
    """
    # probs: [B, V] rows summing to 1; uniforms: [B] float64
    per_row = (info.top_ks, info.top_ps, info.min_ps, uniforms)
    levels = _candidate_levels(info, probs.shape[1], probs.device)
    next_ids, exact = _sample_among_top(probs, *per_row, levels[0])
    for k in levels[1:]:
        # NOTE: a data-dependent branch, used only on CPU where it costs no device sync.
        if bool(exact.all()):
            break
        rows = (~exact).nonzero().squeeze(1)
        redo_ids, redo_exact = _sample_among_top(probs[rows], *(t[rows] for t in per_row), k)
        next_ids[rows] = redo_ids
        exact[rows] = redo_exact
    return next_ids


def _candidate_levels(info: SamplingBatchInfo, vocab: int, device: torch.device) -> list[int]:
    """Candidate counts to try, growing to `vocab`; a single, always exact one off the CPU."""
    if not info.need_top_p:
        return [min(info.max_top_k, vocab)]  # top_k alone is always exact among its top_k
    if device.type != "cpu":
        return [vocab]  # a full sort: fast on accelerators, and no host sync
    first = max(info.max_top_k, TOP_P_CANDIDATES)
    return sorted({min(first, vocab), min(first * 16, vocab), vocab})


def _sample_among_top(
    probs: torch.Tensor,
    top_ks: torch.Tensor,
    top_ps: torch.Tensor,
    min_ps: torch.Tensor,
    uniforms: torch.Tensor,
    candidates: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample each row among its `candidates` most likely tokens.

    Returns (next_ids [b], exact [b] bool); exact is False where the top-k/top-p cutoff may lie
    beyond the candidates (that row's next_id is then meaningless).
    """
    # probs: [b, V]; top_ks: [b] int64; top_ps, min_ps: [b]; uniforms: [b] float64
    top, top_ids = probs.topk(candidates, dim=-1)  # [b, K], descending
    threshold, exact = top_k_top_p_threshold(top, top_ks, top_ps, probs.shape[1])
    threshold = threshold.maximum(top[:, :1] * min_ps.unsqueeze(1))  # [b, 1]
    kept = top.masked_fill(top < threshold, 0.0).to(torch.float64)  # [b, K]
    position, _ = _invert_cdf(kept, uniforms)  # [b]
    next_ids = top_ids.gather(1, position.unsqueeze(1)).squeeze(1)
    return next_ids, exact


def top_k_top_p_threshold(
    top: torch.Tensor, top_ks: torch.Tensor, top_ps: torch.Tensor, vocab: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest probability top_k then top_p keep, from each row's K best probabilities.

    NOTE: the kept tokens are those >= the threshold, so one tied with the last kept is kept.
    Returns (threshold [b, 1], 0 where nothing is cut; exact [b] bool, False where the cutoff
    may lie beyond the K candidates).
    """
    # top: [b, K] descending probabilities of distributions over `vocab` ids summing to 1
    candidates = top.shape[1]
    cum = top.cumsum(dim=-1)  # [b, K]
    k = top_ks.clamp(1, vocab)
    # Mass of the top-k (top_p is relative to it, as when top-k renormalizes); 1 when top_k is off.
    mass = cum.gather(1, (k.clamp(max=candidates) - 1).unsqueeze(1)).squeeze(1)  # [b]
    mass = torch.where(k >= vocab, torch.ones_like(mass), mass)
    target = top_ps * mass  # [b]
    # Token j is kept while the mass before it, cum[j - 1], is below the target.
    n_top_p = 1 + (cum[:, :-1] < target.unsqueeze(1)).sum(dim=-1)  # [b]
    no_top_p = top_ps >= 1.0
    n_keep = torch.where(no_top_p, k, torch.minimum(k, n_top_p))
    uncut = no_top_p & (k >= vocab)
    closes = no_top_p | (cum[:, -1] >= target)  # the top-p cutoff lies among the candidates
    known_mass = (k <= candidates) | (k >= vocab)
    exact = uncut | (candidates >= vocab) | ((n_keep <= candidates) & known_mass & closes)
    threshold = top.gather(1, (n_keep.clamp(max=candidates) - 1).unsqueeze(1))  # [b, 1]
    return threshold.masked_fill(uncut.unsqueeze(1), 0.0), exact


def _uniforms(info: SamplingBatchInfo, device: torch.device) -> torch.Tensor:
    """One uniform in [0, 1) per row: from (seed, step) on seeded rows, the global RNG elsewhere."""
    batch = info.batch_size
    if info.seed_counters is None:
        return torch.rand(batch, dtype=torch.float64, device=device)
    seeded = seeded_uniforms(info.seed_counters)  # [S]
    if seeded.shape[0] == batch:
        return seeded
    uniforms = torch.rand(batch, dtype=torch.float64, device=device)
    return uniforms.index_copy_(0, info.seeded_rows, seeded)


def seeded_uniforms(counters: torch.Tensor) -> torch.Tensor:
    """A uniform in [0, 1) that depends only on a row's (seed_lo, seed_hi, step).

    A counter-based hash, so a seeded request draws the same number whatever else is in the batch.
    """
    # counters: [S, 3] int64, each value in [0, 2^32) -> [S] float64
    seed_lo, seed_hi, step = counters.unbind(dim=1)
    bits = _mix32(seed_lo ^ _mix32(seed_hi ^ _mix32((step + _GOLDEN32) & _MASK32)))  # [S]
    return bits.to(torch.float64) * (1.0 / (1 << 32))


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2^32 in two 16-bit halves of c, so no int64 product overflows.
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def logprob_lists(
    logits: torch.Tensor, next_ids: torch.Tensor, top_nums: list[int]
) -> tuple[list[float], list[list[tuple[float, int]]]]:
    """Logprob of each chosen token and each row's top_nums[i] best (logprob, id), best first."""
    # logits: [B, V] raw float32; next_ids: [B] int64
    logprobs = torch.log_softmax(logits, dim=-1)  # [B, V]
    chosen = logprobs.gather(1, next_ids.unsqueeze(1)).squeeze(1).tolist()
    k = min(max(top_nums, default=0), logits.shape[1])
    if k <= 0:
        return chosen, [[] for _ in top_nums]
    values, ids = logprobs.topk(k, dim=-1)  # [B, k]
    values, ids = values.tolist(), ids.tolist()
    top = [list(zip(v[:n], i[:n])) for v, i, n in zip(values, ids, top_nums)]
    return chosen, top
