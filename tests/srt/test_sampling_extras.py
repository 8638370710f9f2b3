"""SGLang's later sampling fields: logit_bias, sampling_seed, custom_params, stream_interval,
structural_tag — parsing, refusals, and logit_bias reaching the logits."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from sglang.srt.layers.sampler import Sampler
from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo, penalty_entries
from sglang.srt.sampling.sampling_params import SamplingParams


def _req(params: SamplingParams, output_ids: list[int] = ()) -> SimpleNamespace:
    return SimpleNamespace(
        sampling_params=params, output_ids=list(output_ids), origin_input_ids=[1, 2], step=0
    )


def test_logit_bias_keys_become_token_ids() -> None:
    p = SamplingParams.from_dict({"logit_bias": {"5": -100, "7": 2.5}})
    assert p.logit_bias_ids() == {5: -100.0, 7: 2.5}


@pytest.mark.parametrize(
    "bias, fragment",
    [({"x": 1}, "'x'"), ({"-3": 1}, "'-3'"), ({"5": 101}, "[-100, 100]"), ({"5": "a"}, "'5'")],
)
def test_bad_logit_bias_is_named(bias: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match="logit_bias") as e:
        SamplingParams.from_dict({"logit_bias": bias})
    assert fragment in str(e.value)


def test_logit_bias_with_repetition_penalty_is_refused() -> None:
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingParams.from_dict({"logit_bias": {"5": 1}, "repetition_penalty": 1.2})


def test_logit_bias_adds_to_the_counted_penalties() -> None:
    p = SamplingParams.from_dict({"logit_bias": {"3": 4.0}, "frequency_penalty": 1.0})
    ids, offsets = penalty_entries(_req(p, [3, 3, 9]), vocab_size=16)
    assert dict(zip(ids, offsets)) == {3: 2.0 - 4.0, 9: 1.0}


def test_logit_bias_steers_greedy_sampling() -> None:
    logits = torch.zeros(2, 8)
    logits[:, 2] = 5.0
    reqs = [
        _req(SamplingParams.from_dict({"temperature": 0, "logit_bias": {"6": 10}})),
        _req(SamplingParams.from_dict({"temperature": 0, "logit_bias": {"2": -100}})),
    ]
    info = SamplingBatchInfo.from_reqs(reqs, 8, "cpu", eos_token_ids=set())
    out = Sampler().sample(logits, info).next_token_ids.tolist()
    assert out[0] == 6 and out[1] != 2


def test_sampling_seed_is_the_seed() -> None:
    assert SamplingParams.from_dict({"sampling_seed": 9}).seed == 9
    assert SamplingParams.from_dict({"sampling_seed": 9, "seed": 9}).seed == 9
    assert SamplingParams.from_dict({"sampling_seed": None}).seed is None
    with pytest.raises(ValueError, match="sampling_seed"):
        SamplingParams.from_dict({"sampling_seed": 9, "seed": 8})


def test_custom_params_stream_interval_structural_tag() -> None:
    assert SamplingParams.from_dict({"custom_params": {"a": [1]}}).custom_params == {"a": [1]}
    with pytest.raises(ValueError, match="custom_params"):
        SamplingParams.from_dict({"custom_params": [1]})
    assert SamplingParams.from_dict({"stream_interval": 3}).stream_interval == 3
    with pytest.raises(ValueError, match="stream_interval"):
        SamplingParams.from_dict({"stream_interval": 0})
    assert SamplingParams.from_dict({"structural_tag": None}).structural_tag is None
    with pytest.raises(ValueError, match="structural_tag"):
        SamplingParams.from_dict({"structural_tag": '{"structures": []}'})
    tag = {"structures": [{"begin": "<f=a>", "schema": {}, "end": "</f>"}], "triggers": ["<f="]}
    params = SamplingParams.from_dict({"structural_tag": tag})
    assert params.grammar == ("structural_tag", json.dumps(tag))
    with pytest.raises(ValueError, match="at most one"):
        SamplingParams.from_dict({"structural_tag": tag, "regex": "a"})
