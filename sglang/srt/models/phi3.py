"""Phi-3 family decoder (Phi-3-mini/medium, Phi-3.5-mini, Phi-4-mini) in plain PyTorch.

The Llama layer (pre-norm, SiLU-gated MLP, one sliding window on every layer where the config
sets sliding_window); the checkpoints already fuse q/k/v into qkv_proj and gate/up into
gate_up_proj, in the row order our MergedLinear projections use, so they load one to one.
RoPE: LongRoPE (SuRoPE; "longrope", older configs "su" or "yarn") scaling and partial rotary
(partial_rotary_factor: Phi-4-mini rotates 3/4 of each head).
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.layers.linear import Embedding, Linear
from sglang.srt.layers.norm import RMSNorm
from sglang.srt.layers.rotary import RotaryEmbedding
from sglang.srt.models.llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel

# transformers' Phi3Config defaults for keys a config.json may leave out
_DEFAULT_MAX_POSITIONS = 4096
_DEFAULT_ORIGINAL_MAX_POSITIONS = 4096


def phi3_rotary_dim(config: ModelConfig) -> int:
    """The channels of each head that rotate: int(head_dim * partial_rotary_factor), the factor
    read from the rope dict first, then config.json's top level (transformers' order)."""
    hf = config.hf
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    factor = params.get("partial_rotary_factor") or hf.get("partial_rotary_factor") or 1.0
    return int(config.head_dim * float(factor))


def phi3_rope_scaling(config: ModelConfig) -> Optional[dict]:
    """config.rope_scaling as the rotary layer reads it: None (plain RoPE) or a longrope dict
    with short_factor, long_factor, original_max_position_embeddings and factor.

    As transformers' Phi3Config reads it: "su" and "yarn" are older names of longrope; the
    top-level original_max_position_embeddings wins over the rope dict's; factor, unless the
    dict sets it, is the model's max_position_embeddings / original_max_position_embeddings
    (the trained extension, not the served context length)."""
    scaling = config.rope_scaling
    if scaling is None:
        return None
    kind = scaling["rope_type"]
    if kind not in ("longrope", "su", "yarn"):
        raise ValueError(f"Phi-3 rope_scaling type {kind!r} is not supported (longrope is)")
    scaling = {**scaling, "rope_type": "longrope"}
    hf = config.hf
    original = int(
        hf.get("original_max_position_embeddings")
        or scaling.get("original_max_position_embeddings")
        or _DEFAULT_ORIGINAL_MAX_POSITIONS
    )
    scaling["original_max_position_embeddings"] = original
    if scaling.get("factor") is None:
        max_positions = hf.get("max_position_embeddings") or _DEFAULT_MAX_POSITIONS
        scaling["factor"] = max_positions / original
    return scaling


class Phi3Model(LlamaModel):
    """Llama's embedding, layers, final norm and forward, with Phi-3's rotary embedding."""

    def __init__(self, config: ModelConfig) -> None:
        nn.Module.__init__(self)
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, qkv_bias=False) for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # tables [context_len, rotary_dim]; LongRoPE's factors chosen by context_len
        self.rotary = RotaryEmbedding(
            config.head_dim,
            config.context_len,
            config.rope_theta,
            phi3_rope_scaling(config),
            config.dtype,
            rotary_dim=phi3_rotary_dim(config),
        )


class Phi3ForCausalLM(LlamaForCausalLM):
    """Phi-3 / Phi-3.5 / Phi-4-mini (and, through the registry, Phi3Model: base checkpoints
    served as embedding models)."""

    packed_modules: dict = {}  # qkv_proj and gate_up_proj come fused in the checkpoint

    def __init__(self, config: ModelConfig) -> None:
        nn.Module.__init__(self)  # LlamaForCausalLM's parts, with Phi3Model
        act = config.hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"Phi-3 hidden_act {act!r} is not supported (silu is)")
        self.config = config
        self.model = Phi3Model(config)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        # checkpoint tensors that have no parameter of their own here
        self.ignored_weights = {"lm_head.weight"} if config.tie_word_embeddings else set()
