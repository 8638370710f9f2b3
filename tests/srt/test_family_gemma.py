"""Gemma 1, Gemma 2 and Gemma 3 (text) against transformers' reference on tiny random weights
(tests/model_families.py): scaled embeddings, (1 + w) norms, GeGLU, query_pre_attn_scalar,
sliding and full layers with prompts past the window, soft-capped attention scores and final
logits (caps small enough to bind on random weights), Gemma 3's q/k norms and its local and
global RoPE bases (linear scaling on the global layers), and the older config.json layouts
(no layer_types, no tie_word_embeddings, Gemma 3's rope_local_base_freq / rope_scaling)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
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
from sglang.srt.layers.attention import Attention  # noqa: E402
from sglang.srt.layers.rotary import rope_inv_freq  # noqa: E402
from sglang.srt.models.gemma2 import Gemma2ForCausalLM, GemmaForCausalLM  # noqa: E402
from sglang.srt.models.gemma3 import Gemma3ForCausalLM, gemma3_rope  # noqa: E402
from sglang.srt.models.registry import get_model_class, is_embedding_architecture  # noqa: E402

# head_dim 16 (Gemma's default is 256); query_pre_attn_scalar unlike head_dim, so the scaling
# is Gemma's own
GEMMA = dict(head_dim=16, query_pre_attn_scalar=24, pad_token_id=0)
# Gemma 3: two sliding layers, then a full one, then a sliding one; bases far apart and small
# enough that 45 positions turn every channel pair differently under the two tables
GEMMA3_LAYERS = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
GEMMA3_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
    "full_attention": {"rope_type": "default", "rope_theta": 10_000.0},
}


def _save_gemma2(path, **overrides) -> str:
    return save_tiny(str(path), "Gemma2Config", "Gemma2ForCausalLM", **{**GEMMA, **overrides})


def _save_gemma3(path, **overrides) -> str:
    overrides = {
        "num_hidden_layers": 4, "sliding_window": 8, "layer_types": GEMMA3_LAYERS,
        "rope_parameters": GEMMA3_ROPE, **GEMMA, **overrides,
    }  # fmt: skip
    return save_tiny(str(path), "Gemma3TextConfig", "Gemma3ForCausalLM", **overrides)


def _rewrite_config(path: str, drop: tuple[str, ...] = (), **changes) -> None:
    """config.json without the keys in drop, with changes."""
    file = os.path.join(path, "config.json")
    with open(file) as f:
        cfg = json.load(f)
    for key in drop:
        cfg.pop(key, None)
    cfg.update(changes)
    with open(file, "w") as f:
        json.dump(cfg, f)


def _attention_layers(runner) -> list[Attention]:
    return [m for m in runner.model.modules() if isinstance(m, Attention)]


def _largest_change(path: str, uncap) -> float:
    """max |logits with the reference's caps - logits after uncap(reference)| on a 40-token
    prompt: how much the caps change transformers' own output."""
    ref = reference_model(path)
    ids = random_ids(40, 1)
    capped = reference_logits(ref, ids)
    uncap(ref)
    return (reference_logits(ref, ids) - capped).abs().max().item()


def test_gemma2_sliding_window_and_soft_caps(tmp_path):
    # layer 0 windowed (8), layer 1 full; scores capped at 5, final logits at 3
    path = _save_gemma2(
        tmp_path, sliding_window=8, attn_logit_softcapping=5.0, final_logit_softcapping=3.0
    )
    runner = make_runner(path)
    assert isinstance(runner.model, Gemma2ForCausalLM)
    layers = _attention_layers(runner)
    assert [a.sliding_window for a in layers] == [8, None]
    assert [a.logit_cap for a in layers] == [5.0, 5.0]
    assert all(a.scaling == pytest.approx(24**-0.5) for a in layers)
    assert runner.model.final_logit_softcap == 3.0
    assert runner.logits_processor.lm_head.softcap == 3.0
    assert runner.model.config.tie_word_embeddings and not hasattr(runner.model, "lm_head")

    # both caps change transformers' logits by far more than the tolerance: the checks bind
    def no_final_cap(ref):
        ref.config.final_logit_softcapping = None

    def no_attention_cap(ref):
        for layer in ref.model.layers:
            layer.self_attn.attn_logit_softcapping = None

    assert _largest_change(path, no_final_cap) > 0.1
    assert _largest_change(path, no_attention_cap) > 0.1
    check_family(path, long_len=40)


def test_gemma2_without_caps_untied_three_layers(tmp_path):
    path = _save_gemma2(
        tmp_path, num_hidden_layers=3, sliding_window=8, attn_logit_softcapping=None,
        final_logit_softcapping=None, tie_word_embeddings=False,
    )  # fmt: skip
    runner = make_runner(path)
    layers = _attention_layers(runner)
    assert [a.sliding_window for a in layers] == [8, None, 8]
    assert [a.logit_cap for a in layers] == [None, None, None]
    assert runner.model.final_logit_softcap is None
    assert runner.logits_processor.lm_head.softcap is None
    assert runner.model.lm_head_weight is runner.model.lm_head.weight
    check_family(path, long_len=40)


def test_gemma2_older_config_without_layer_types_or_tie_key(tmp_path):
    # Hub configs of transformers 4: no layer_types (even layers sliding), no
    # tie_word_embeddings (Gemma ties by default), hidden_act next to hidden_activation
    path = _save_gemma2(
        tmp_path, num_hidden_layers=4, sliding_window=8, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0,
    )  # fmt: skip
    _rewrite_config(
        path, drop=("layer_types", "tie_word_embeddings", "rope_parameters"),
        rope_theta=10000.0, hidden_act="gelu_pytorch_tanh",
    )  # fmt: skip
    runner = make_runner(path)
    assert [a.sliding_window for a in _attention_layers(runner)] == [8, None, 8, None]
    assert runner.model.config.tie_word_embeddings
    check_family(path, long_len=40)


def test_gemma2_keys_left_out_take_transformers_defaults(tmp_path):
    # no query_pre_attn_scalar (256), no caps (scores 50, logits 30)
    path = _save_gemma2(tmp_path, sliding_window=8)
    _rewrite_config(
        path, drop=("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping")
    )
    runner = make_runner(path)
    layers = _attention_layers(runner)
    assert all(a.scaling == 256**-0.5 and a.logit_cap == 50.0 for a in layers)
    assert runner.model.final_logit_softcap == 30.0
    check_family(path, long_len=40)


def test_gemma3_text_mixed_layers_local_and_global_rope(tmp_path):
    path = _save_gemma3(tmp_path)
    runner = make_runner(path)
    model = runner.model
    assert isinstance(model, Gemma3ForCausalLM)
    assert [a.sliding_window for a in _attention_layers(runner)] == [8, 8, None, 8]
    assert [a.logit_cap for a in _attention_layers(runner)] == [None] * 4
    assert [layer.local_rope for layer in model.model.layers] == [True, True, False, True]
    assert model.final_logit_softcap is None
    # the two tables differ: base 100 for the sliding layers, 10k for the full one
    local, full = model.model.rotary_local, model.model.rotary
    assert not torch.allclose(local.cos[1:45], full.cos[1:45], atol=1e-3)
    check_family(path, long_len=40)


def test_gemma3_linear_scaling_on_global_layers_and_final_cap(tmp_path):
    rope = {**GEMMA3_ROPE, "full_attention": {"rope_type": "linear", "factor": 4.0,
                                             "rope_theta": 10_000.0}}  # fmt: skip
    path = _save_gemma3(tmp_path, rope_parameters=rope, final_logit_softcapping=3.0)
    runner = make_runner(path)
    assert runner.model.final_logit_softcap == 3.0
    check_family(path, long_len=40)


def test_gemma3_older_config_layout(tmp_path):
    # transformers 4's Gemma 3 keys: rope_theta (global), rope_local_base_freq, rope_scaling
    # (global only), sliding_window_pattern (every 2nd layer full), no layer_types, no
    # tie_word_embeddings
    path = _save_gemma3(tmp_path)
    _rewrite_config(
        path, drop=("rope_parameters", "layer_types", "tie_word_embeddings"),
        rope_theta=5000.0, rope_local_base_freq=50.0, sliding_window_pattern=2,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    )  # fmt: skip
    runner = make_runner(path)
    assert [a.sliding_window for a in _attention_layers(runner)] == [8, None, 8, None]
    assert gemma3_rope(runner.model_config) == {
        "sliding_attention": (50.0, None),
        "full_attention": (5000.0, {"factor": 2.0, "rope_type": "linear"}),
    }
    check_family(path, long_len=40)


@pytest.mark.parametrize(
    "keys",
    [
        dict(rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 30.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        }),
        dict(rope_theta=2e5, rope_local_base_freq=300.0,
             rope_scaling={"rope_type": "linear", "factor": 3.0}),
        dict(rope_theta=7e4),  # the local base: transformers' default (10k)
        dict(),  # both defaults: 1M global, 10k local
    ],
    ids=["nested", "legacy_scaled", "legacy_global_only", "defaults"],
)  # fmt: skip
def test_gemma3_rope_bases_equal_transformers(tmp_path, keys):
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

    cfg = dict(
        architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", vocab_size=128,
        hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=8, max_position_embeddings=256,
        **keys,
    )  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    hf = transformers.AutoConfig.from_pretrained(str(tmp_path))
    assert set(hf.layer_types) == {"sliding_attention", "full_attention"}  # (pattern 6)
    expected = Gemma3RotaryEmbedding(hf)
    ours = gemma3_rope(ModelConfig.from_path(str(tmp_path)))
    for kind, (base, scaling) in ours.items():
        torch.testing.assert_close(
            rope_inv_freq(16, base, scaling), getattr(expected, f"{kind}_inv_freq"),
            rtol=1e-6, atol=0,
        )  # fmt: skip


def test_gemma1_legacy_gelu_is_tanh(tmp_path):
    # Gemma 1: Llama's block with (1 + w) norms, GeGLU ("gelu" read as the tanh approximation,
    # as transformers does), sqrt(hidden) embedding scale, head_dim ** -0.5 scaling
    path = save_tiny(
        str(tmp_path), "GemmaConfig", "GemmaForCausalLM", head_dim=16, pad_token_id=0,
        hidden_act="gelu",
    )  # fmt: skip
    runner = make_runner(path)
    assert isinstance(runner.model, GemmaForCausalLM)
    assert runner.model.model.layers[0].mlp.approximate == "tanh"
    assert all(a.plain and a.scaling == 0.25 for a in _attention_layers(runner))
    check_family(path, long_len=40)


def test_bfloat16_embedding_scale_and_logits_near_transformers(tmp_path):
    # sqrt(hidden) is rounded to bf16 before the multiply (sqrt(3072) = 55.43 -> 55.5)
    cfg = dict(
        architectures=["Gemma3ForCausalLM"], vocab_size=128, hidden_size=3072,
        intermediate_size=16, num_hidden_layers=1, num_attention_heads=4, head_dim=16,
    )  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    config = ModelConfig.from_path(str(tmp_path), dtype="bfloat16")
    assert Gemma3ForCausalLM(config).model.embed_scale == 55.5
    # the tiny model served in bf16: its logits stray from the float32 reference's no further
    # than transformers' own bf16 logits do (random (1 + w) norms make bf16 rounding large here)
    path = _save_gemma3(tmp_path / "tiny", final_logit_softcapping=3.0)
    runner = make_runner(path, dtype="bfloat16")
    ref16 = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16, attn_implementation="eager"
    ).eval()
    ids = random_ids(30, 0)
    ours = Driver(runner).extend({"a": ids}).next_token_logits[0]
    exact = reference_logits(reference_model(path), ids)[-1]
    bf16_error = (reference_logits(ref16, ids)[-1] - exact).abs().max().item()
    assert (ours - exact).abs().max().item() <= 1.5 * bf16_error + 0.05


def test_bidirectional_gemma3_is_refused(tmp_path):
    cfg = dict(
        architectures=["Gemma3ForCausalLM"], vocab_size=128, hidden_size=64,
        intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, head_dim=16,
        use_bidirectional_attention=True,
    )  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="bidirectional"):
        Gemma3ForCausalLM(ModelConfig.from_path(str(tmp_path)))


def test_registry_serves_gemma_base_models_as_embeddings():
    assert get_model_class("GemmaForCausalLM") is GemmaForCausalLM
    assert get_model_class("Gemma2ForCausalLM") is Gemma2ForCausalLM
    assert get_model_class("Gemma3ForCausalLM") is Gemma3ForCausalLM
    assert get_model_class("Gemma2Model") is Gemma2ForCausalLM
    assert is_embedding_architecture("Gemma2Model")
    assert not is_embedding_architecture("Gemma2ForCausalLM")
