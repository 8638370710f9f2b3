"""Each model family against transformers' reference on tiny random weights (tests/model_families.py):
prefill, a cached prefix, batched decode, and sliding windows shorter than the prompt."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_families import check_family, save_tiny  # noqa: E402


def test_mistral_sliding_window_shorter_than_the_prompt(tmp_path):
    # window 8, prompts and decodes to 45 tokens: every layer masks the keys before the window
    path = save_tiny(str(tmp_path), "MistralConfig", "MistralForCausalLM", sliding_window=8)
    check_family(path)


def test_mistral_window_longer_than_every_sequence_is_full_attention(tmp_path):
    path = save_tiny(str(tmp_path), "MistralConfig", "MistralForCausalLM", sliding_window=64)
    check_family(path)


def test_qwen2_sliding_window_from_max_window_layers(tmp_path):
    # use_sliding_window with max_window_layers 1: layer 0 full, layer 1 windowed
    path = save_tiny(
        str(tmp_path), "Qwen2Config", "Qwen2ForCausalLM", sliding_window=6,
        use_sliding_window=True, max_window_layers=1,
    )  # fmt: skip
    check_family(path)


def test_llama_with_attention_bias_has_an_o_proj_bias(tmp_path):
    path = save_tiny(str(tmp_path), "LlamaConfig", "LlamaForCausalLM", attention_bias=True)
    check_family(path)


@pytest.mark.parametrize(
    ("config_cls", "model_cls", "overrides", "named"),
    [
        ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}, "sliding-window"),
        ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
         {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
         "mixture-of-experts"),
    ],
)  # fmt: skip
def test_deterministic_inference_refuses_what_it_cannot_keep_invariant(
    tmp_path, config_cls, model_cls, overrides, named
):
    from model_families import make_runner

    path = save_tiny(str(tmp_path), config_cls, model_cls, **overrides)
    with pytest.raises(ValueError, match=named):
        make_runner(path, enable_deterministic_inference=True)
