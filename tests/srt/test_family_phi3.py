"""Phi-3 family against transformers' reference on tiny random weights
(tests/model_families.py): the checkpoint's fused qkv_proj / gate_up_proj, a sliding window
shorter than the prompt, LongRoPE with short factors (served context within
original_max_position_embeddings) and long factors (served past it), and partial rotary
(Phi-4-mini)."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model_families  # noqa: E402
from model_families import (  # noqa: E402
    Driver,
    check_family,
    make_runner,
    random_ids,
    reference_logits,
    reference_model,
    save_tiny,
)

from sglang.srt.configs.model_config import ModelConfig  # noqa: E402
from sglang.srt.layers import attention  # noqa: E402
from sglang.srt.layers.attention import Attention  # noqa: E402
from sglang.srt.layers.rotary import (  # noqa: E402
    RotaryEmbedding,
    rope_attention_factor,
    rope_inv_freq,
)
from sglang.srt.models.phi3 import (  # noqa: E402
    Phi3ForCausalLM,
    phi3_rope_scaling,
    phi3_rotary_dim,
)

# Phi3Config's pad_token_id (32000) is outside the tiny vocabulary
PHI3 = dict(pad_token_id=None)
ORIGINAL = 16  # original_max_position_embeddings of the LongRoPE models (max_position 256)


def _longrope(rotary_dim: int = 16) -> dict:
    """LongRoPE overrides: short factors near 1, long ones growing toward the low frequencies,
    trained from 16 to 256 positions (attention factor sqrt(1 + ln 16 / ln 16) = sqrt 2)."""
    half = rotary_dim // 2
    return dict(
        original_max_position_embeddings=ORIGINAL,
        rope_scaling={
            "type": "longrope",
            "short_factor": [1.0 + 0.05 * i for i in range(half)],
            "long_factor": [1.5 + 0.9 * i for i in range(half)],
        },
    )


def _save(path, **overrides) -> str:
    return save_tiny(str(path), "Phi3Config", "Phi3ForCausalLM", **PHI3, **overrides)


def _serve_with_context(monkeypatch, context_length: int) -> None:
    """check_family's runner serves context_length positions."""
    runner = functools.partial(make_runner, context_length=context_length)
    monkeypatch.setattr(model_families, "make_runner", runner)


def _check_past_original_length(path: str, tol: float = 1e-4) -> None:
    """Our logits equal transformers' on sequences longer than original_max_position_embeddings
    (where transformers takes the long factors, as our full-context server always does):
    prefill of a batch, an extend on a cached prefix that started within the original length,
    batched decode with a request leaving the batch."""
    ref = reference_model(path)
    runner = make_runner(path)
    vocab = runner.model_config.vocab_size

    def close(ours, ids, what):
        expected = reference_logits(ref, ids)[-1]
        torch.testing.assert_close(ours, expected, atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")

    old = attention.SHORT_EXTEND_TOKENS, attention.DECODE_CHUNK_TOKENS
    try:
        for short_extend in (0, 64):
            attention.SHORT_EXTEND_TOKENS = short_extend
            prompts = {"a": random_ids(ORIGINAL + 1, 0, vocab), "b": random_ids(40, 1, vocab),
                       "c": random_ids(23, 2, vocab)}  # fmt: skip
            out = Driver(runner).extend(prompts)
            for i, (rid, ids) in enumerate(prompts.items()):
                close(out.next_token_logits[i], ids, f"prefill {rid}/{short_extend}")
            # "a" cached at 10 tokens (within the original length), then extended to 30
            a, b = random_ids(30, 3, vocab), random_ids(20, 4, vocab)
            driver = Driver(runner)
            driver.extend({"a": a[:10]})
            out = driver.extend({"b": b, "a": a[10:]})
            for i, (rid, ids) in enumerate([("b", b), ("a", a)]):
                close(out.next_token_logits[i], ids, f"cached {rid}/{short_extend}")
        for chunk_tokens in (4096, 30):
            attention.DECODE_CHUNK_TOKENS = chunk_tokens
            seqs = {"a": random_ids(ORIGINAL + 1, 5, vocab), "b": random_ids(25, 6, vocab),
                    "c": random_ids(38, 7, vocab)}  # fmt: skip
            driver = Driver(runner)
            driver.extend(seqs)
            for step in range(4):
                running = [rid for rid in seqs if not (rid == "b" and step >= 2)]
                tokens = {rid: random_ids(1, 100 + 10 * step + i, vocab)[0]
                          for i, rid in enumerate(running)}  # fmt: skip
                out = driver.decode(tokens)
                for i, rid in enumerate(running):
                    seqs[rid] = seqs[rid] + [tokens[rid]]
                    close(out.next_token_logits[i], seqs[rid], f"decode {rid}/{step}")
    finally:
        attention.SHORT_EXTEND_TOKENS, attention.DECODE_CHUNK_TOKENS = old


def test_phi3_fused_checkpoint_without_rope_scaling(tmp_path):
    path = _save(tmp_path)
    from safetensors import safe_open

    with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    # the checkpoint's own fused projections, loaded one to one
    assert "model.layers.0.self_attn.qkv_proj.weight" in names
    assert "model.layers.0.mlp.gate_up_proj.weight" in names
    runner = make_runner(path)
    assert isinstance(runner.model, Phi3ForCausalLM)
    assert phi3_rope_scaling(runner.model_config) is None
    check_family(path)


def test_phi3_sliding_window_shorter_than_the_prompt(tmp_path):
    # window 8 on every layer, prompts and decodes to 45 tokens
    path = _save(tmp_path, sliding_window=8)
    runner = make_runner(path)
    windows = [m.sliding_window for m in runner.model.modules() if isinstance(m, Attention)]
    assert windows == [8, 8]
    check_family(path)


def test_longrope_short_factors_within_the_original_context(tmp_path, monkeypatch):
    # served context 16 = original_max_position_embeddings: short factors, as transformers
    # takes for every sequence of at most 16 tokens (check_family's run to 16 with long_len 13)
    path = _save(tmp_path, **_longrope())
    _serve_with_context(monkeypatch, ORIGINAL)
    check_family(path, long_len=13)


def test_longrope_long_factors_past_the_original_context(tmp_path):
    # served context 256 > 16: long factors, as transformers takes for sequences past 16 tokens
    path = _save(tmp_path, **_longrope())
    _check_past_original_length(path)


def test_partial_rotary_half_of_each_head(tmp_path):
    # partial_rotary_factor 0.5: channels 0..7 of each 16-wide head rotate, 8..15 pass through
    path = _save(tmp_path, partial_rotary_factor=0.5)
    runner = make_runner(path)
    assert runner.model.model.rotary.cos.shape == (256, 8)
    check_family(path)


def test_phi4_mini_layout_partial_rotary_longrope_tied_embeddings(tmp_path, monkeypatch):
    # Phi-4-mini's shape of config: 3/4 of each head rotates (12 of 16), LongRoPE factors for
    # those 12 channels, tied embeddings
    overrides = dict(_longrope(12), partial_rotary_factor=0.75, tie_word_embeddings=True)
    path = _save(tmp_path, **overrides)
    _check_past_original_length(path)
    _serve_with_context(monkeypatch, ORIGINAL)
    check_family(path, long_len=13)


def _hf_and_ours(path: str, hf_json: dict) -> tuple:
    """(transformers' config, our ModelConfig) read from config.json files holding hf_json.
    transformers 5 fails on the older type "su" (it renames it to longrope only after the
    check for original_max_position_embeddings), so it reads the same config as "longrope"."""
    ours_dir, hf_dir = os.path.join(path, "ours"), os.path.join(path, "hf")
    scaling = hf_json.get("rope_scaling")
    hf_scaling = scaling and {**scaling, "type": "longrope"}
    for folder, cfg in ((ours_dir, hf_json), (hf_dir, {**hf_json, "rope_scaling": hf_scaling})):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(cfg, f)
    return transformers.AutoConfig.from_pretrained(hf_dir), ModelConfig.from_path(ours_dir)


LEGACY = dict(
    architectures=["Phi3ForCausalLM"], model_type="phi3", vocab_size=128, hidden_size=64,
    intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=256, original_max_position_embeddings=ORIGINAL, rope_theta=500.0,
)  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [
        # Phi-3-mini-128k's early layout: type "su", the top-level original length
        dict(rope_type_name="su"),
        # Phi-3.5 / Phi-4-mini: type "longrope"; Phi-4-mini rotates 3/4 of each head
        dict(rope_type_name="longrope", partial_rotary_factor=0.75),
        # an explicit factor, and an explicit attention factor, override the length ratio
        dict(rope_type_name="longrope", factor=4.0),
        dict(rope_type_name="longrope", attention_factor=1.25),
    ],
    ids=["su", "longrope_partial", "factor", "attention_factor"],
)
def test_longrope_inv_freq_and_attention_factor_equal_transformers(tmp_path, extra):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    extra = dict(extra)
    kind = extra.pop("rope_type_name")
    partial = extra.pop("partial_rotary_factor", None)
    half = int(16 * (partial or 1.0)) // 2
    rope_scaling = dict(
        type=kind,
        short_factor=[1.0 + 0.05 * i for i in range(half)],
        long_factor=[1.5 + 0.9 * i for i in range(half)],
        **extra,
    )
    hf_json = dict(LEGACY, rope_scaling=rope_scaling)
    if partial is not None:
        hf_json["partial_rotary_factor"] = partial
    hf, ours = _hf_and_ours(str(tmp_path), hf_json)
    assert hf.rope_parameters["rope_type"] == "longrope"
    scaling, dim = phi3_rope_scaling(ours), phi3_rotary_dim(ours)
    assert dim == int(16 * (partial or 1.0))
    init = ROPE_INIT_FUNCTIONS["longrope"]
    # transformers: short factors without a sequence length (or one within 16), long past 16
    for context_len, seq_len in ((ORIGINAL, None), (ORIGINAL, ORIGINAL), (256, ORIGINAL + 1)):
        expected, expected_factor = init(hf, None, seq_len=seq_len)
        inv_freq = rope_inv_freq(dim, ours.rope_theta, scaling, context_len)
        torch.testing.assert_close(inv_freq, expected, rtol=0, atol=0)
        assert rope_attention_factor(scaling) == pytest.approx(expected_factor, rel=1e-12)


@pytest.mark.parametrize("context_len", [ORIGINAL, 256])
def test_rotary_tables_equal_transformers_cos_sin(tmp_path, context_len):
    """Our cos/sin tables (attention factor in them, partial width) equal Phi3RotaryEmbedding's
    output on a sequence whose length takes the same factors: 16 tokens short, 40 long."""
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    half = 6
    rope_scaling = dict(
        type="longrope",
        short_factor=[1.0 + 0.05 * i for i in range(half)],
        long_factor=[1.5 + 0.9 * i for i in range(half)],
    )
    hf_json = dict(LEGACY, rope_scaling=rope_scaling, partial_rotary_factor=0.75)
    hf, ours = _hf_and_ours(str(tmp_path), hf_json)
    rotary = RotaryEmbedding(
        16, context_len, ours.rope_theta, phi3_rope_scaling(ours), torch.float32,
        rotary_dim=phi3_rotary_dim(ours),
    )  # fmt: skip
    length = min(context_len, 40)
    positions = torch.arange(length)
    cos, sin = Phi3RotaryEmbedding(hf)(torch.zeros(1, dtype=torch.float32), positions[None])
    torch.testing.assert_close(rotary.cos[:length], cos[0], rtol=0, atol=0)
    # our sin table holds [-sin | sin] for the roll form of rotate_half
    torch.testing.assert_close(rotary.sin[:length, half:], sin[0, :, half:], rtol=0, atol=0)
    torch.testing.assert_close(rotary.sin[:length, :half], -sin[0, :, :half], rtol=0, atol=0)
    other = RotaryEmbedding(
        16, 256 if context_len == ORIGINAL else ORIGINAL, ours.rope_theta,
        phi3_rope_scaling(ours), torch.float32, rotary_dim=12,
    )  # fmt: skip
    assert not torch.equal(other.cos[:ORIGINAL], rotary.cos[:ORIGINAL])  # the other factors


def test_partial_rotary_rotates_the_leading_channels_only():
    """Rope.rotate with a 6-wide table on 8-wide heads: channels 6, 7 unchanged, 0..5 as a
    whole-head rotation of width 6 would turn them."""
    partial = RotaryEmbedding(8, 32, 10000.0, None, torch.float32, rotary_dim=6)
    whole = RotaryEmbedding(6, 32, 10000.0, None, torch.float32)
    positions = torch.tensor([0, 5, 31])
    x = torch.randn(3, 3 * 8)  # [T, 3 heads of 8]
    out = partial.lookup(positions).rotate(x, 2, 8)  # the first 2 heads -> [T, 2, 8]
    heads = x[:, :16].view(3, 2, 8)
    torch.testing.assert_close(out[..., 6:], heads[..., 6:], rtol=0, atol=0)
    expected = whole.lookup(positions).rotate(heads[..., :6].reshape(3, 12), 2, 6)
    torch.testing.assert_close(out[..., :6], expected, rtol=1e-6, atol=1e-6)
