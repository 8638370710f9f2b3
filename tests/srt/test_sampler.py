"""Tests of SamplingBatchInfo and the batched Sampler."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from sglang.srt.layers import sampler as sampler_module
from sglang.srt.layers.sampler import (
    Sampler,
    apply_penalties,
    sample_from_probs,
    sample_truncated,
    seeded_uniforms,
    top_k_top_p_threshold,
)
from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo, penalty_entries
from sglang.srt.sampling.sampling_params import SamplingParams

EOS = 7


@dataclass
class FakeReq:
    sampling_params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    origin_input_ids: list[int] = field(default_factory=list)
    step: int = 0


def req(output_ids=(), prompt_ids=(), step=0, **params) -> FakeReq:
    return FakeReq(SamplingParams.from_dict(params), list(output_ids), list(prompt_ids), step)


def info_for(reqs, vocab_size: int) -> SamplingBatchInfo:
    return SamplingBatchInfo.from_reqs(reqs, vocab_size, "cpu", {EOS})


def sample(logits, reqs, **kwargs):
    return Sampler().sample(logits, info_for(reqs, logits.shape[1]), **kwargs)


# A crafted distribution over 8 tokens: sorted ids 5, 2, 0, 6, 3 carry 0.4, 0.3, 0.15, 0.1, 0.05.
CRAFTED = torch.tensor([0.15, 1e-9, 0.3, 0.05, 1e-9, 0.4, 0.1, 1e-9]).log()


def draw_many(logits_row: torch.Tensor, n: int, **params) -> set[int]:
    """The set of ids drawn in n independent draws (one batched call of n identical rows)."""
    torch.manual_seed(1234)
    logits = logits_row.unsqueeze(0).expand(n, -1).contiguous()
    ids = sample(logits, [req(**params)] * n).next_token_ids
    return set(ids.tolist())


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_greedy_equals_argmax():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    out = sample(logits, [req(temperature=0.0) for _ in range(6)])
    assert out.next_token_ids.dtype == torch.int64
    assert out.next_token_ids.tolist() == logits.argmax(-1).tolist()
    assert out.next_token_logprobs is None and out.top_logprobs is None


def test_top_k_1_equals_greedy():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    out = sample(logits, [req(temperature=1.5, top_k=1) for _ in range(6)])
    assert out.next_token_ids.tolist() == logits.argmax(-1).tolist()


def test_mixed_batch_greedy_rows_take_argmax():
    logits = torch.zeros(4, 30)
    logits[:, 3] = 0.5  # argmax, but far from certain when sampled
    reqs = [req(temperature=0.0), req(temperature=1.0), req(temperature=0.0), req(temperature=1.0)]
    torch.manual_seed(0)
    picks = [sample(logits, reqs).next_token_ids.tolist() for _ in range(20)]
    assert all(p[0] == 3 and p[2] == 3 for p in picks)
    assert any(p[1] != 3 for p in picks)  # sampled rows really sample


@pytest.mark.parametrize(
    "params, allowed",
    [
        ({"top_k": 3}, {5, 2, 0}),
        ({"top_p": 0.75}, {5, 2, 0}),
        ({"top_p": 0.65}, {5, 2}),
        ({"min_p": 0.3}, {5, 2, 0}),
        ({"min_p": 0.5}, {5, 2}),
        # top_p applies to the top-k mass (0.7): 0.5 * 0.7 = 0.35 < 0.4, so only the best token.
        ({"top_k": 2, "top_p": 0.5}, {5}),
        ({"top_k": 4, "min_p": 0.3}, {5, 2, 0}),
        ({"top_k": -1, "top_p": 1.0, "min_p": 0.0}, {5, 2, 0, 6, 3}),
    ],
)
def test_filters_never_pick_a_filtered_token_and_keep_the_rest(params, allowed):
    assert draw_many(CRAFTED, 3000, **params) == allowed


def test_top_k_top_p_threshold_on_sorted_probabilities():
    top = CRAFTED.softmax(-1).sort(descending=True).values.unsqueeze(0).repeat(4, 1)
    top_ks = torch.tensor([2, 8, 4, 8])
    top_ps = torch.tensor([1.0, 0.75, 0.8, 1.0])
    threshold, exact = top_k_top_p_threshold(top, top_ks, top_ps, 8)
    kept = (top >= threshold).sum(-1)
    assert kept[:3].tolist() == [2, 3, 3]
    assert threshold[3].item() == 0.0  # top_k off and top_p 1: nothing is cut
    assert exact.all()
    # From only 2 candidates, a cutoff at the 3rd token cannot be known.
    _, exact_from_two = top_k_top_p_threshold(top[:, :2], top_ks, top_ps, 8)
    assert exact_from_two.tolist() == [True, False, False, True]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_frequencies_follow_softmax(temperature):
    logits_row = torch.tensor([1.0, 0.5, 0.0, -1.0])
    n = 20000
    torch.manual_seed(7)
    logits = logits_row.unsqueeze(0).expand(n, -1).contiguous()
    ids = sample(logits, [req(temperature=temperature)] * n).next_token_ids
    freq = torch.bincount(ids, minlength=4).float() / n
    expected = torch.softmax(logits_row / temperature, -1)
    assert torch.allclose(freq, expected, atol=0.02), (freq, expected)
    if temperature != 1.0:  # the bound is tight enough to tell temperatures apart
        assert not torch.allclose(freq, torch.softmax(logits_row, -1), atol=0.02)


def test_frequency_and_presence_penalties_subtract_scaled_counts():
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.5, 3.0]] * 3)
    reqs = [
        req(output_ids=[1, 1, 2], frequency_penalty=0.5),
        req(output_ids=[1, 1, 2], presence_penalty=1.5),
        req(output_ids=[1, 1, 2]),  # no penalty on this row
    ]
    info = info_for(reqs, 5)
    assert info.has_penalties and info.repetition_penalties is None
    out = apply_penalties(logits, info)
    assert out[0].tolist() == [1.0, 2.0 - 1.0, -1.0 - 0.5, 0.5, 3.0]
    assert out[1].tolist() == [1.0, 2.0 - 1.5, -1.0 - 1.5, 0.5, 3.0]
    assert out[2].tolist() == logits[2].tolist()
    assert logits[0, 1] == 2.0  # the input is not modified


def test_repetition_penalty_divides_positive_multiplies_negative_over_prompt_and_output():
    logits = torch.tensor([[2.0, -1.0, 4.0, -3.0, 1.0]])
    reqs = [req(prompt_ids=[0, 1], output_ids=[2], repetition_penalty=2.0)]
    info = info_for(reqs, 5)
    out = apply_penalties(logits, info)
    assert out[0].tolist() == [1.0, -2.0, 2.0, -3.0, 1.0]


def test_no_penalties_builds_no_count_tensors():
    info = info_for([req(output_ids=[1, 2, 3], temperature=0.7, top_p=0.9)], 10)
    assert not info.has_penalties
    assert info.penalty_ids is None and info.repetition_penalties is None


def test_presence_penalty_changes_the_greedy_choice():
    logits = torch.tensor([[0.0, 3.0, 2.5, 0.0]])
    assert sample(logits, [req(temperature=0.0, output_ids=[1])]).next_token_ids.item() == 1
    penalized = [req(temperature=0.0, output_ids=[1], presence_penalty=1.0)]
    assert sample(logits, penalized).next_token_ids.item() == 2


def test_penalty_entries_are_distinct_in_vocab_ids_with_their_offsets():
    r = req(
        output_ids=[1, 1, 3, 99, -1, 1],
        prompt_ids=[2, 3, 50],
        frequency_penalty=0.5,
        presence_penalty=0.25,
        repetition_penalty=1.2,
    )
    ids, offsets = penalty_entries(r, 4)
    assert dict(zip(ids, offsets)) == {1: 1.75, 3: 0.75, 2: 0.0}
    only_rep = req(output_ids=[3, 3], prompt_ids=[0], repetition_penalty=1.2)
    assert dict(zip(*penalty_entries(only_rep, 4))) == {0: 0.0, 3: 0.0}
    assert penalty_entries(req(output_ids=[1, 2]), 4) == ([], [])


def test_penalties_in_a_mixed_batch_with_padding():
    logits = torch.tensor([[2.0, -1.0, 4.0, -3.0, 1.0]] * 3)
    reqs = [
        req(output_ids=[2, 2, 2], prompt_ids=[0], frequency_penalty=1.0, repetition_penalty=2.0),
        req(output_ids=[1]),  # untouched
        req(output_ids=[4], repetition_penalty=0.5),  # < 1 raises positive, lowers negative logits
    ]
    out = apply_penalties(logits, info_for(reqs, 5))
    assert out[0].tolist() == [1.0, -1.0, (4.0 - 3.0) / 2.0, -3.0, 1.0]
    assert out[1].tolist() == logits[1].tolist()
    assert out[2].tolist() == [2.0, -1.0, 4.0, -3.0, 2.0]


def test_min_new_tokens_blocks_eos_and_stop_ids_until_reached():
    logits = torch.zeros(1, 10)
    logits[0, EOS] = 10.0
    logits[0, 4] = 9.0
    logits[0, 2] = 8.0
    early = req(
        temperature=0.0, min_new_tokens=3, max_new_tokens=8, stop_token_ids=[4], output_ids=[1, 1]
    )
    assert sample(logits, [early]).next_token_ids.item() == 2
    reached = req(
        temperature=0.0,
        min_new_tokens=3,
        max_new_tokens=8,
        stop_token_ids=[4],
        output_ids=[1, 1, 1],
    )
    assert sample(logits, [reached]).next_token_ids.item() == EOS


def test_min_new_tokens_holds_when_sampling():
    logits = torch.zeros(500, 10)
    logits[:, EOS] = 5.0
    reqs = [req(min_new_tokens=1) for _ in range(500)]
    torch.manual_seed(0)
    assert EOS not in sample(logits, reqs).next_token_ids.tolist()
    assert EOS in sample(logits, [req() for _ in range(500)]).next_token_ids.tolist()


def test_ignore_eos_always_masks_eos():
    logits = torch.zeros(2, 10)
    logits[:, EOS] = 10.0
    reqs = [req(temperature=0.0, ignore_eos=True, output_ids=list(range(50))), req(temperature=0.0)]
    assert sample(logits, reqs).next_token_ids.tolist()[0] != EOS
    assert sample(logits, reqs).next_token_ids.tolist()[1] == EOS


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_vocab_mask_is_always_obeyed(temperature):
    gen = torch.Generator().manual_seed(3)
    batch, vocab = 400, 40
    logits = torch.randn(batch, vocab, generator=gen) * 3
    mask = torch.rand(batch, vocab, generator=gen) < 0.2
    mask[torch.arange(batch), torch.randint(vocab, (batch,), generator=gen)] = True
    info = info_for([req(temperature=temperature, top_p=0.9) for _ in range(batch)], vocab)
    info.vocab_mask = mask
    torch.manual_seed(0)
    ids = Sampler().sample(logits, info).next_token_ids
    assert mask[torch.arange(batch), ids].all()


def test_seeded_rows_reproduce_across_runs_batches_and_positions():
    gen = torch.Generator().manual_seed(5)
    vocab = 1000
    row = torch.randn(vocab, generator=gen)
    others = torch.randn(5, vocab, generator=gen)

    def seeded_draw(position: int, batch_size: int, rng_seed: int, step: int = 3) -> int:
        torch.manual_seed(rng_seed)
        logits = torch.cat([others[: batch_size - 1], row.unsqueeze(0)])
        logits = torch.cat([logits[:-1][:position], logits[-1:], logits[:-1][position:]])
        reqs = [
            req(temperature=1.0, seed=i) if i % 2 else req(temperature=0.9)
            for i in range(batch_size - 1)
        ]
        reqs.insert(position, req(temperature=1.0, top_p=0.95, seed=42, step=step))
        return sample(logits, reqs).next_token_ids[position].item()

    first = seeded_draw(0, 1, rng_seed=0)
    assert all(
        seeded_draw(p, b, r) == first
        for p, b, r in [(0, 1, 1), (0, 4, 2), (2, 4, 3), (5, 6, 4), (3, 6, 5)]
    )
    # The step advances the noise: over 20 steps the same request draws different tokens.
    assert len({seeded_draw(0, 1, 0, step=s) for s in range(20)}) > 5


def test_seeded_requests_differ_by_seed_and_match_the_distribution():
    logits_row = torch.tensor([1.0, 0.5, 0.0, -1.0])
    n = 20000
    logits = logits_row.unsqueeze(0).expand(n, -1).contiguous()
    # One seed over n steps: the counter hash must give the right frequencies.
    params = SamplingParams.from_dict({"seed": 11})
    reqs = [FakeReq(params, step=s) for s in range(n)]
    ids = sample(logits, reqs).next_token_ids
    freq = torch.bincount(ids, minlength=4).float() / n
    assert torch.allclose(freq, torch.softmax(logits_row, -1), atol=0.02), freq
    params = SamplingParams.from_dict({"seed": 12})
    other = sample(logits, [FakeReq(params, step=s) for s in range(n)]).next_token_ids
    assert (other != ids).float().mean() > 0.3


def test_seeded_uniforms_are_deterministic_and_uniform():
    steps = torch.arange(20000, dtype=torch.int64)
    counters = torch.stack([torch.full_like(steps, 3), torch.zeros_like(steps), steps], dim=1)
    u = seeded_uniforms(counters)
    assert torch.equal(u, seeded_uniforms(counters))
    assert ((u >= 0) & (u < 1)).all()
    histogram = torch.histc(u.float(), bins=10, min=0, max=1) / len(u)
    assert torch.allclose(histogram, torch.full((10,), 0.1), atol=0.01), histogram
    other_seed = counters.clone()
    other_seed[:, 0] = 4
    assert (seeded_uniforms(other_seed) != u).all()


def test_sample_from_probs_never_picks_a_zero_probability_id():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, 1e-30]])
    uniforms = torch.tensor([0.0, 0.4999, 0.5, 0.9999999, 1.0 - 2**-53], dtype=torch.float64)
    for u in uniforms.tolist():
        ids = sample_from_probs(probs, torch.tensor([u, u], dtype=torch.float64)).tolist()
        assert ids[0] in (1, 3) and ids[1] == 4
    ids = sample_from_probs(
        probs[:1].expand(2, -1), torch.tensor([0.25, 0.75], dtype=torch.float64)
    )
    assert ids.tolist() == [1, 3]


@pytest.mark.parametrize("vocab", [5, 256, 1000])  # one short block, one full, several + a tail
def test_two_level_sampling_inverts_the_full_cdf(vocab):
    gen = torch.Generator().manual_seed(vocab)
    probs = (torch.randn(vocab, generator=gen) * 2).softmax(-1)
    probs[torch.rand(vocab, generator=gen) < 0.3] = 0.0  # filtered ids, whole empty blocks too
    if vocab > 512:
        probs[256:512] = 0.0
    uniforms = (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000
    ids = sample_from_probs(probs.unsqueeze(0).expand(len(uniforms), -1), uniforms)
    cdf = probs.double().cumsum(0)
    expected = torch.searchsorted(cdf, uniforms * cdf[-1], right=True)
    assert (probs[ids] > 0).all()
    assert (ids != expected).sum() <= 2  # only rounding at a boundary may differ


def reference_draws(probs_row: list[float], top_k: int, top_p: float, uniforms: list[float]):
    """Top-k, then top-p over the renormalized top-k, by a plain sort; inverse CDF in that order."""
    order = sorted(range(len(probs_row)), key=lambda j: -probs_row[j])[:top_k]
    order = [j for j in order if probs_row[j] > 0]
    mass = sum(probs_row[j] for j in order)
    kept, before = [], 0.0
    for j in order:
        if top_p < 1.0 and before >= top_p * mass:
            break
        kept.append(j)
        before += probs_row[j]
    cum = torch.tensor([probs_row[j] for j in kept], dtype=torch.float64).cumsum(0)
    positions = torch.searchsorted(
        cum, torch.tensor(uniforms, dtype=torch.float64) * cum[-1], right=True
    )
    return [kept[p] for p in positions.tolist()]


SMALL_K = [(-1, 0.9), (-1, 0.5), (40, 0.95), (3, 1.0), (-1, 0.2)]
LARGE_K = [(-1, 0.9), (2000, 0.8), (100, 1.0), (50, 0.3)]


# Flat rows (small scale) need more candidates than peaked ones; a large top_k starts with more.
@pytest.mark.parametrize("scale", [0.3, 3.0, 6.0])
@pytest.mark.parametrize("settings", [SMALL_K, LARGE_K])
def test_truncated_sampling_on_a_large_vocab_matches_a_full_sort(scale, settings):
    gen = torch.Generator().manual_seed(int(scale * 10))
    vocab, draws = 5000, 64
    uniforms = ((torch.arange(draws, dtype=torch.float64) + 0.5) / draws).tolist()
    probs = (torch.randn(len(settings), vocab, generator=gen) * scale).softmax(-1)
    reqs = [req(top_k=k, top_p=p) for k, p in settings for _ in range(draws)]
    ids = sample_truncated(
        probs.repeat_interleave(draws, 0),
        info_for(reqs, vocab),
        torch.tensor(uniforms * len(settings), dtype=torch.float64),
    )
    for i, (k, p) in enumerate(settings):
        expected = reference_draws(probs[i].tolist(), vocab if k == -1 else k, p, uniforms)
        got = ids[i * draws : (i + 1) * draws].tolist()
        assert sum(a != b for a, b in zip(got, expected)) <= 1, (k, p)  # rounding at a boundary


def test_candidate_cut_gives_the_same_samples_as_a_full_sort(monkeypatch):
    gen = torch.Generator().manual_seed(21)
    vocab = 3000
    logits = torch.cat(
        [torch.randn(4, vocab, generator=gen) * 4, torch.randn(4, vocab, generator=gen)]
    )
    reqs = [req(top_p=p, seed=i) for i, p in enumerate([0.9, 0.6, 0.99, 0.3] * 2)]
    cut = sample(logits, reqs).next_token_ids
    monkeypatch.setattr(sampler_module, "TOP_P_CANDIDATES", vocab)
    assert torch.equal(sample(logits, reqs).next_token_ids, cut)


def test_logprobs_are_of_the_raw_distribution():
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(3, 20, generator=gen)
    reqs = [
        req(temperature=0.0, presence_penalty=2.0, output_ids=[int(logits[0].argmax())]),
        req(temperature=0.5, top_k=3),
        req(temperature=0.0, repetition_penalty=1.5, prompt_ids=[1, 2]),
    ]
    out = sample(logits, reqs, return_logprob=True, top_logprobs_nums=[2, 0, 5])
    expected = torch.log_softmax(logits, -1)
    ids = out.next_token_ids.tolist()
    for i, token in enumerate(ids):
        assert out.next_token_logprobs[i] == pytest.approx(expected[i, token].item(), abs=1e-6)
    assert out.top_logprobs[1] == []
    for i, n in [(0, 2), (2, 5)]:
        best = expected[i].topk(n)
        assert [t for _, t in out.top_logprobs[i]] == best.indices.tolist()
        assert [v for v, _ in out.top_logprobs[i]] == pytest.approx(best.values.tolist())
        values = [v for v, _ in out.top_logprobs[i]]
        assert values == sorted(values, reverse=True)
    assert ids[0] != int(logits[0].argmax())  # the penalty changed the pick, not the logprobs


def test_logprobs_default_to_no_top_logprobs():
    logits = torch.randn(2, 10, generator=torch.Generator().manual_seed(2))
    out = sample(logits, [req(temperature=0.0)] * 2, return_logprob=True)
    assert out.top_logprobs == [[], []]
    assert math.isclose(
        sum(math.exp(v) for v in out.next_token_logprobs),
        logits.softmax(-1).max(-1).values.sum().item(),
        rel_tol=1e-5,
    )


def test_sampling_does_not_modify_the_input_logits():
    logits = torch.randn(2, 12, generator=torch.Generator().manual_seed(4))
    before = logits.clone()
    reqs = [
        req(temperature=0.0, ignore_eos=True, frequency_penalty=1.0, output_ids=[1]),
        req(top_k=3, min_new_tokens=2, repetition_penalty=1.3, prompt_ids=[2]),
    ]
    info = info_for(reqs, 12)
    info.vocab_mask = torch.ones(2, 12, dtype=torch.bool)
    info.vocab_mask[:, 0] = False
    Sampler().sample(logits, info, return_logprob=True, top_logprobs_nums=[1, 1])
    assert torch.equal(logits, before)


def test_negative_and_huge_seeds_are_accepted_and_reproducible():
    logits = torch.randn(2, 300, generator=torch.Generator().manual_seed(8))
    reqs = [req(seed=-5, step=2), req(seed=2**70 + 3, step=2)]
    torch.manual_seed(0)
    first = sample(logits, reqs).next_token_ids.tolist()
    torch.manual_seed(1)
    assert sample(logits, reqs).next_token_ids.tolist() == first
