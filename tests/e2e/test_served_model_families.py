"""Each model family served by the real server: greedy outputs equal to transformers' generate.

A tiny random-weight model per family (tests/model_families.py) with a byte-level tokenizer,
served with `--dtype float32 --quantization none`. Three prompts at once (one longer than the
model's sliding window), so prefill and decode run batched; then the longest again, whose
prompt the radix cache now holds: the same tokens, from the cache.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_families import random_ids, reference_model, save_tiny  # noqa: E402

VOCAB = 320  # the byte-level tokenizer's ids fit
NEW_TOKENS = 12

# id -> (config class, model class, config overrides)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mistral-window": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
    "qwen3-moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}),
    "phi3-window-partial-rotary": ("Phi3Config", "Phi3ForCausalLM",
                                   {"sliding_window": 8, "partial_rotary_factor": 0.5, "pad_token_id": 0}),
    "gemma2-window-caps": ("Gemma2Config", "Gemma2ForCausalLM",
                           {"sliding_window": 8, "head_dim": 16, "attn_logit_softcapping": 5.0,
                            "final_logit_softcapping": 3.0, "query_pre_attn_scalar": 16}),
    "gemma3-local-global": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                            {"sliding_window": 8, "head_dim": 16, "num_hidden_layers": 4,
                             "layer_types": ["sliding_attention", "sliding_attention",
                                             "full_attention", "sliding_attention"],
                             "rope_local_base_freq": 100.0}),
}  # fmt: skip


def ref_generate(model: Any, ids: list[int]) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    return out[0, len(ids) :].tolist()


def generate(url: str, ids: list[int]) -> dict[str, Any]:
    body = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True},
    }
    reply = requests.post(url + "/generate", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory, launch_server_variant):
    config_cls, model_cls, overrides = FAMILIES[request.param]
    path = save_tiny(
        str(tmp_path_factory.mktemp(request.param)), config_cls, model_cls,
        tokenizer=True, vocab_size=VOCAB, **overrides,
    )  # fmt: skip
    args = ("--model-path", path, "--dtype", "float32", "--quantization", "none",
            "--max-total-tokens", "4096")  # fmt: skip
    with launch_server_variant(*args) as server:
        yield server.url, reference_model(path)


def test_greedy_outputs_equal_transformers_generate(family):
    url, ref = family
    prompts = [random_ids(5, 1, VOCAB), random_ids(30, 2, VOCAB), random_ids(45, 3, VOCAB)]
    with ThreadPoolExecutor(len(prompts)) as pool:
        replies = list(pool.map(lambda ids: generate(url, ids), prompts))
    for ids, reply in zip(prompts, replies):
        assert reply["output_ids"] == ref_generate(ref, ids)
    again = generate(url, prompts[2])
    assert again["meta_info"]["cached_tokens"] >= len(prompts[2]) - 1
    assert again["output_ids"] == replies[2]["output_ids"]
