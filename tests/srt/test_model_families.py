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


@pytest.mark.parametrize(
    ("config_cls", "model_cls", "overrides"),
    [
        ("MistralConfig", "MistralModel", {"sliding_window": 8}),  # e5-mistral-style
        ("Gemma2Config", "Gemma2Model", {"sliding_window": 8, "head_dim": 16}),  # bge-gemma2
        ("Phi3Config", "Phi3Model", {"pad_token_id": 0}),
    ],
)
def test_base_models_of_the_families_serve_embeddings(tmp_path, config_cls, model_cls, overrides):
    """A base model saved without lm_head, as embedding models ship: our final hidden states
    equal transformers' last_hidden_state, prompts longer than the window included."""
    from types import SimpleNamespace

    import torch
    import transformers
    from model_families import Driver, make_runner, random_ids

    path = save_tiny(str(tmp_path), config_cls, model_cls, **overrides)
    ref = getattr(transformers, model_cls).from_pretrained(path, dtype=torch.float32).eval()
    runner = make_runner(path, is_embedding=True)
    assert runner.is_embedding and runner.logits_processor is None
    hidden_runner = SimpleNamespace(
        req_to_token_pool=runner.req_to_token_pool,
        token_to_kv_pool_allocator=runner.token_to_kv_pool_allocator,
        forward=runner.forward_hidden,
    )
    prompts = [random_ids(n, n) for n in (1, 7, 30)]
    hidden = Driver(hidden_runner).extend({f"r{i}": ids for i, ids in enumerate(prompts)})
    for rows, ids in zip(hidden.split([len(p) for p in prompts]), prompts):
        with torch.no_grad():
            expected = ref(torch.tensor([ids])).last_hidden_state[0]  # [L, hidden]
        torch.testing.assert_close(rows, expected, atol=1e-4, rtol=1e-4)
