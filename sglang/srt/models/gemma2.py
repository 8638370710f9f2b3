"""Gemma (1) and Gemma 2 decoders in plain PyTorch, and the parts Gemma 3 shares with them.

What sets Gemma apart from Llama, as transformers computes it:
- token embeddings multiplied by sqrt(hidden_size), that factor rounded to the compute dtype;
- RMSNorm in float32 with the weight applied as (1 + w), then rounded to the compute dtype;
- a GeGLU MLP: gelu(gate) * up, gelu with the tanh approximation (`hidden_activation`);
- tied embeddings unless the config says otherwise (transformers' Gemma default).
Gemma 2 adds: a norm after attention and a norm after the MLP (each applied to the block's
output before its residual add, and a separate norm before the MLP), q.k scaled by
query_pre_attn_scalar ** -0.5, attention scores soft-capped (attn_logit_softcapping), final
logits soft-capped (final_logit_softcapping, applied by the runner's LmHead), and sliding-window
layers alternating with full ones (`layer_types`; older configs: even layers windowed).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.layers.attention import Attention
from sglang.srt.layers.linear import Embedding, Linear, MergedLinear
from sglang.srt.layers.rotary import Rope, RotaryEmbedding
from sglang.srt.model_executor.forward_batch import ForwardBatch
from sglang.srt.models.llama import LlamaDecoderLayer

SLIDING, FULL = "sliding_attention", "full_attention"
# transformers' Gemma2Config / Gemma3TextConfig defaults for keys a config.json may leave out
DEFAULT_QUERY_PRE_ATTN_SCALAR = 256
DEFAULT_SLIDING_WINDOW = 4096
GEMMA2_DEFAULT_ATTN_CAP = 50.0
GEMMA2_DEFAULT_FINAL_CAP = 30.0

# activation name -> F.gelu's `approximate` ("gelu" is exact erf for Gemma 2 / 3)
_GELU_APPROXIMATE = {
    "gelu_pytorch_tanh": "tanh",
    "gelu_new": "tanh",
    "gelu_fast": "tanh",
    "gelu": "none",
}


def gemma_gelu_approximate(config: ModelConfig, legacy_gelu_is_tanh: bool = False) -> str:
    """F.gelu's `approximate` for the MLP: Gemma 2 / 3 read `hidden_activation` (default
    gelu_pytorch_tanh); Gemma 1 reads `hidden_act`, where transformers takes the legacy value
    "gelu" of the official releases as the tanh approximation (legacy_gelu_is_tanh)."""
    hf = config.hf
    if legacy_gelu_is_tanh:
        name = hf.get("hidden_act") or hf.get("hidden_activation") or "gelu_pytorch_tanh"
        if name == "gelu":
            return "tanh"
    else:
        name = hf.get("hidden_activation") or "gelu_pytorch_tanh"
    if name not in _GELU_APPROXIMATE:
        raise ValueError(
            f"Gemma activation {name!r} is not supported ({', '.join(sorted(_GELU_APPROXIMATE))} are)"
        )
    return _GELU_APPROXIMATE[name]


def gemma_tied_config(config: ModelConfig) -> ModelConfig:
    """config with tie_word_embeddings as Gemma reads it: config.json's value, True where it
    leaves the key out (transformers' Gemma default; ModelConfig's generic default is False).
    A config the runner has already marked tied (embedding models) stays tied."""
    tied = config.tie_word_embeddings or bool(config.hf.get("tie_word_embeddings", True))
    return dataclasses.replace(config, tie_word_embeddings=tied)


def gemma_layer_types(config: ModelConfig, default_pattern: int) -> list[str]:
    """Each layer's attention kind, SLIDING or FULL: the config's `layer_types`, else every
    `sliding_window_pattern`-th layer full (1-based) and the rest sliding, as transformers fills
    them in (Gemma 2: pattern 2, layer 0 sliding; Gemma 3: `sliding_window_pattern`, default 6).
    A sliding layer attends within `sliding_window` (see gemma_window)."""
    hf = config.hf
    kinds = hf.get("layer_types")
    if kinds:
        if len(kinds) < config.num_layers:
            raise ValueError(f"layer_types lists {len(kinds)} layers, expected {config.num_layers}")
        unknown = set(kinds) - {SLIDING, FULL}
        if unknown:
            raise ValueError(f"layer_types {sorted(unknown)}: expected {SLIDING} or {FULL}")
        return list(kinds[: config.num_layers])
    pattern = int(hf.get("sliding_window_pattern") or default_pattern)
    return [SLIDING if (i + 1) % pattern else FULL for i in range(config.num_layers)]


def gemma_window(config: ModelConfig, kind: str) -> Optional[int]:
    """The attention window of a layer of this kind: `sliding_window` for SLIDING layers (None
    where the config sets it to null), None (full attention) for FULL ones."""
    window = config.hf.get("sliding_window", DEFAULT_SLIDING_WINDOW)
    return int(window) if kind == SLIDING and window else None


def gemma_query_scaling(config: ModelConfig) -> float:
    """Gemma 2 / 3's scaling of q.k: query_pre_attn_scalar ** -0.5."""
    return float(config.hf.get("query_pre_attn_scalar") or DEFAULT_QUERY_PRE_ATTN_SCALAR) ** -0.5


def gemma_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: [..., D], weight: [D]. float32 statistics and product, rounded once at the end.
    h = x.float()
    h = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps)
    return (h * (1.0 + weight.float())).to(x.dtype)


class GemmaRMSNorm(nn.Module):
    """RMSNorm with the weight applied as (1 + w); with a residual, the add that precedes it is
    fused in: forward(x, residual) -> (norm(x + residual), x + residual)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size))  # [D]
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: Optional[torch.Tensor] = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # x, residual: [T, D]
        if residual is None:
            return gemma_rms_norm(x, self.weight, self.eps)
        x = x + residual
        return gemma_rms_norm(x, self.weight, self.eps), x


class GemmaMLP(nn.Module):
    """GeGLU: down(gelu(gate(x)) * up(x)), gate and up fused into one projection."""

    def __init__(self, config: ModelConfig, approximate: str) -> None:
        super().__init__()
        inter = config.intermediate_size
        self.gate_up_proj = MergedLinear(config.hidden_size, [inter, inter], bias=False)
        self.down_proj = Linear(inter, config.hidden_size, bias=False)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, hidden] -> [T, hidden]
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # [T, I] each
        return self.down_proj(F.gelu(gate, approximate=self.approximate) * up)


class GemmaAttention(nn.Module):
    """q/k/v fused, RoPE on q and k, attention with the given q.k scaling, window and score
    cap (None: full attention, no cap)."""

    def __init__(
        self,
        config: ModelConfig,
        layer_id: int,
        scaling: float,
        sliding_window: Optional[int] = None,
        logit_cap: Optional[float] = None,
    ) -> None:
        super().__init__()
        h, hkv, d = config.num_heads, config.num_kv_heads, config.head_dim
        bias = config.attention_bias
        self.q_size, self.kv_size = h * d, hkv * d
        self.qkv_proj = MergedLinear(config.hidden_size, [h * d, hkv * d, hkv * d], bias=bias)
        self.o_proj = Linear(h * d, config.hidden_size, bias=bias)
        self.attn = Attention(h, hkv, d, layer_id, scaling, sliding_window, logit_cap)

    def forward(self, x: torch.Tensor, rope: Rope, forward_batch: ForwardBatch) -> torch.Tensor:
        # x: [T, hidden] -> [T, hidden]
        qkv = self.qkv_proj(x)  # [T, (H + 2 Hkv) D]
        d, heads, kv_heads = self.attn.head_dim, self.attn.num_heads, self.attn.num_kv_heads
        q, k = rope.rotate(qkv, heads + kv_heads, d).split([heads, kv_heads], dim=1)
        v = qkv[:, self.q_size + self.kv_size :].view(x.shape[0], -1, d)  # [T, Hkv, D]
        return self.o_proj(self.attn(q, k, v, forward_batch))


class Gemma2DecoderLayer(nn.Module):
    """Pre- and post-norms around both blocks:
    h = x + post_attn_norm(attn(input_norm(x))); out = h + post_ff_norm(mlp(pre_ff_norm(h))).
    The residual adds are fused into the norm that follows each of them, as in Llama's layer:
    forward takes and returns (block output, residual stream before its add)."""

    def __init__(self, config: ModelConfig, self_attn: nn.Module, approximate: str) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(hidden, eps)
        self.self_attn = self_attn  # (x [T, hidden], rope, forward_batch) -> [T, hidden]
        self.post_attention_layernorm = GemmaRMSNorm(hidden, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(hidden, eps)
        self.mlp = GemmaMLP(config, approximate)
        self.post_feedforward_layernorm = GemmaRMSNorm(hidden, eps)

    def forward(
        self, x: torch.Tensor, residual: Optional[torch.Tensor], rope: Rope, fb: ForwardBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # x, residual: [T, hidden]; the layer's input is x + residual (x alone when None)
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.post_attention_layernorm(self.self_attn(x, rope, fb))
        x, residual = self.pre_feedforward_layernorm(x, residual)
        return self.post_feedforward_layernorm(self.mlp(x)), residual


class GemmaDecoderLayer(LlamaDecoderLayer):
    """Gemma 1: Llama's pre-norm block (its forward) with Gemma's norms, attention and MLP."""

    def __init__(self, config: ModelConfig, layer_id: int, approximate: str) -> None:
        nn.Module.__init__(self)
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(hidden, eps)
        self.self_attn = GemmaAttention(config, layer_id, config.head_dim**-0.5)
        self.post_attention_layernorm = GemmaRMSNorm(hidden, eps)
        self.mlp = GemmaMLP(config, approximate)


class GemmaModel(nn.Module):
    """Scaled embedding, the given layers, final norm. `rotary` rotates the layers whose
    `local_rope` is False (or absent); `rotary_local`, where given, those whose it is True."""

    def __init__(
        self,
        config: ModelConfig,
        layers: list[nn.Module],
        rotary: RotaryEmbedding,
        rotary_local: Optional[RotaryEmbedding] = None,
    ) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        # sqrt(hidden) rounded to the compute dtype, as transformers multiplies by it
        self.embed_scale = float(torch.tensor(config.hidden_size**0.5).to(config.dtype))
        self.layers = nn.ModuleList(layers)
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = rotary
        self.rotary_local = rotary_local

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: [T] int64 -> [T, hidden], scaled by sqrt(hidden)
        return self.embed_tokens(input_ids) * self.embed_scale

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        forward_batch: ForwardBatch,
        input_embeds: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        # input_ids, positions: [T] int64 -> [T, hidden] after the final norm; input_embeds
        # [T, hidden] (already scaled) replaces the embedding lookup
        x = self.embed(input_ids) if input_embeds is None else input_embeds
        rope = self.rotary.lookup(positions)  # once per pass, shared by the layers
        rope_local = None if self.rotary_local is None else self.rotary_local.lookup(positions)
        residual = None
        for layer in self.layers:
            layer_rope = rope_local if getattr(layer, "local_rope", False) else rope
            x, residual = layer(x, residual, layer_rope, forward_batch)
        x, _ = self.norm(x, residual)
        return x


class GemmaCausalLMBase(nn.Module):
    """The causal-LM wrapper every Gemma generation shares: model, (un)tied lm_head, the
    checkpoint's q/k/v and gate/up projections fused, final logit soft-capping (final_cap;
    None: off)."""

    # checkpoint projection name -> (our fused projection, its shard index)
    packed_modules = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(
        self, config: ModelConfig, model: GemmaModel, final_cap: Optional[float] = None
    ) -> None:
        super().__init__()
        self.config = config
        self.model = model
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        # checkpoint tensors that have no parameter of their own here
        self.ignored_weights = {"lm_head.weight"} if config.tie_word_embeddings else set()
        # read by the runner's LmHead: logits become cap * tanh(logits / cap)
        self.final_logit_softcap = float(final_cap) if final_cap else None

    @property
    def lm_head_weight(self) -> torch.Tensor:
        # [V, hidden]; a tied model reuses the embedding
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        # input_ids, positions: [T] int64 -> hidden states [T, hidden]; logits are the runner's
        return self.model(input_ids, positions, forward_batch)


def _rotary(config: ModelConfig) -> RotaryEmbedding:
    return RotaryEmbedding(
        config.head_dim, config.context_len, config.rope_theta, config.rope_scaling, config.dtype
    )


class GemmaForCausalLM(GemmaCausalLMBase):
    """Gemma 1 (gemma-2b/7b, 1.1, CodeGemma): Llama's layer with Gemma's norms, GeGLU MLP and
    scaled embedding; full attention, no soft-capping."""

    def __init__(self, config: ModelConfig) -> None:
        config = gemma_tied_config(config)
        approximate = gemma_gelu_approximate(config, legacy_gelu_is_tanh=True)
        layers = [GemmaDecoderLayer(config, i, approximate) for i in range(config.num_layers)]
        super().__init__(config, GemmaModel(config, layers, _rotary(config)))


class Gemma2ForCausalLM(GemmaCausalLMBase):
    """Gemma 2 (2B, 9B, 27B): see the module docstring."""

    def __init__(self, config: ModelConfig) -> None:
        config = gemma_tied_config(config)
        approximate = gemma_gelu_approximate(config)
        kinds = gemma_layer_types(config, default_pattern=2)
        hf = config.hf
        scaling = gemma_query_scaling(config)
        cap = hf.get("attn_logit_softcapping", GEMMA2_DEFAULT_ATTN_CAP)
        layers = [
            Gemma2DecoderLayer(
                config,
                GemmaAttention(config, i, scaling, gemma_window(config, kind), cap),
                approximate,
            )
            for i, kind in enumerate(kinds)
        ]
        final_cap = hf.get("final_logit_softcapping", GEMMA2_DEFAULT_FINAL_CAP)
        super().__init__(config, GemmaModel(config, layers, _rotary(config)), final_cap)
