"""Gemma 3 text decoder (Gemma3ForCausalLM: gemma-3-1b, and the text configs of the larger
models) in plain PyTorch.

Gemma 2's layer (see gemma2.py: scaled embedding, (1 + w) norms around both blocks, GeGLU,
query_pre_attn_scalar, sliding/full layers from `layer_types`, final logit soft-capping where
set), with:
- q_norm / k_norm: a Gemma RMSNorm (weight [head_dim], (1 + w)) over each head of q and of k,
  before RoPE;
- two RoPE tables: sliding layers rotate with the local base (10k by default), full layers with
  the global base (1M by default) and the global scaling (linear on the larger models);
- no soft-capping of attention scores (transformers' Gemma 3 ignores attn_logit_softcapping).
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.layers.rotary import Rope, RotaryEmbedding
from sglang.srt.model_executor.forward_batch import ForwardBatch
from sglang.srt.models.gemma2 import (
    FULL,
    SLIDING,
    Gemma2DecoderLayer,
    GemmaAttention,
    GemmaCausalLMBase,
    GemmaModel,
    GemmaRMSNorm,
    gemma_gelu_approximate,
    gemma_layer_types,
    gemma_query_scaling,
    gemma_tied_config,
    gemma_window,
)

# transformers' Gemma3TextConfig defaults
DEFAULT_GLOBAL_THETA = 1_000_000.0
DEFAULT_LOCAL_THETA = 10_000.0
DEFAULT_SLIDING_WINDOW_PATTERN = 6


def _scaling_of(params: Optional[dict]) -> Optional[dict]:
    """A rope dict as RotaryEmbedding reads it: None for plain RoPE, else with "rope_type"."""
    if not params:
        return None
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind == "default":
        return None
    scaling = {k: v for k, v in params.items() if k not in ("type", "rope_theta")}
    scaling["rope_type"] = kind
    return scaling


def gemma3_rope(config: ModelConfig) -> dict[str, tuple[float, Optional[dict]]]:
    """{SLIDING: (base, scaling), FULL: (base, scaling)}, as transformers reads the config:
    `rope_parameters` nested by layer type (transformers 5), else the older top-level keys:
    rope_theta and rope_scaling for the full layers, rope_local_base_freq for the sliding ones
    (which never scale). A flat rope_parameters dict counts as the full layers' rope_scaling."""
    hf = config.hf
    params = hf.get("rope_parameters") or {}
    nested = isinstance(params, dict) and (SLIDING in params or FULL in params)
    full = dict(params.get(FULL) or {}) if nested else {}
    sliding = dict(params.get(SLIDING) or {}) if nested else {}
    legacy_scaling = hf.get("rope_scaling") or (None if nested else params) or {}
    full.update(legacy_scaling)
    full.setdefault("rope_theta", hf.get("rope_theta") or DEFAULT_GLOBAL_THETA)
    sliding.setdefault("rope_theta", hf.get("rope_local_base_freq") or DEFAULT_LOCAL_THETA)
    return {
        kind: (float(p["rope_theta"]), _scaling_of(p))
        for kind, p in ((SLIDING, sliding), (FULL, full))
    }


class Gemma3Attention(GemmaAttention):
    """Gemma's attention with q_norm / k_norm over each head before RoPE; no score cap."""

    def __init__(self, config: ModelConfig, layer_id: int, sliding_window: Optional[int]) -> None:
        super().__init__(config, layer_id, gemma_query_scaling(config), sliding_window)
        self.q_norm = GemmaRMSNorm(config.head_dim, config.rms_norm_eps)  # [D], shared by heads
        self.k_norm = GemmaRMSNorm(config.head_dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: Rope, forward_batch: ForwardBatch) -> torch.Tensor:
        # x: [T, hidden] -> [T, hidden]
        t = x.shape[0]
        d, heads, kv_heads = self.attn.head_dim, self.attn.num_heads, self.attn.num_kv_heads
        qkv = self.qkv_proj(x)  # [T, (H + 2 Hkv) D]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        # each head normalized on its own (rows of [T H, D]); then q and k rotated in one call
        qk = torch.cat(
            [self.q_norm(q.reshape(-1, d)).view(t, -1), self.k_norm(k.reshape(-1, d)).view(t, -1)],
            dim=-1,
        )  # [T, (H + Hkv) D]
        q, k = rope.rotate(qk, heads + kv_heads, d).split([heads, kv_heads], dim=1)
        return self.o_proj(self.attn(q, k, v.reshape(t, kv_heads, d), forward_batch))


class Gemma3DecoderLayer(Gemma2DecoderLayer):
    """Gemma 2's layer around Gemma 3's attention; local_rope: rotate with the local table."""

    def __init__(self, config: ModelConfig, layer_id: int, kind: str, approximate: str) -> None:
        attention = Gemma3Attention(config, layer_id, gemma_window(config, kind))
        super().__init__(config, attention, approximate)
        self.local_rope = kind == SLIDING


class Gemma3ForCausalLM(GemmaCausalLMBase):
    """Gemma 3 text (Gemma3TextConfig): see the module docstring."""

    def __init__(self, config: ModelConfig) -> None:
        if config.hf.get("use_bidirectional_attention"):
            raise ValueError(
                "Gemma 3 with use_bidirectional_attention (an encoder, as EmbeddingGemma) is not "
                "supported: this runtime serves causal attention"
            )
        config = gemma_tied_config(config)
        approximate = gemma_gelu_approximate(config)
        kinds = gemma_layer_types(config, DEFAULT_SLIDING_WINDOW_PATTERN)
        layers = [Gemma3DecoderLayer(config, i, k, approximate) for i, k in enumerate(kinds)]
        rope = gemma3_rope(config)

        def table(kind: str) -> RotaryEmbedding:
            base, scaling = rope[kind]
            return RotaryEmbedding(config.head_dim, config.context_len, base, scaling, config.dtype)

        # [context_len, head_dim] cos/sin tables, one per kind of layer the model has
        if FULL in kinds:
            rotary = table(FULL)
            rotary_local = table(SLIDING) if SLIDING in kinds else None
        else:  # every layer sliding: its table is the only one
            rotary, rotary_local = table(SLIDING), None
            for layer in layers:
                layer.local_rope = False
        model = GemmaModel(config, layers, rotary, rotary_local)
        super().__init__(config, model, config.hf.get("final_logit_softcapping"))
