"""Qwen3 decoder: the Llama layout with an RMSNorm over each head of q and of k before RoPE
(q_norm, k_norm, weight [head_dim]); head_dim is the config's own (often not hidden / heads),
attention_bias covers o_proj too, and layer_types / max_window_layers pick the windowed layers."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.layers.attention import Attention
from sglang.srt.layers.linear import Embedding, Linear, MergedLinear
from sglang.srt.layers.norm import RMSNorm
from sglang.srt.layers.rotary import Rope, RotaryEmbedding
from sglang.srt.model_executor.forward_batch import ForwardBatch
from sglang.srt.models.llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel


class Qwen3Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, sliding_window: Optional[int]) -> None:
        super().__init__()
        h, hkv, d = config.num_heads, config.num_kv_heads, config.head_dim
        bias = config.attention_bias
        self.q_size, self.kv_size = h * d, hkv * d
        self.qkv_proj = MergedLinear(config.hidden_size, [h * d, hkv * d, hkv * d], bias=bias)
        self.o_proj = Linear(h * d, config.hidden_size, bias=bias)
        self.q_norm = RMSNorm(d, config.rms_norm_eps)  # [D], shared by the heads
        self.k_norm = RMSNorm(d, config.rms_norm_eps)
        self.attn = Attention(h, hkv, d, layer_id, sliding_window=sliding_window)

    def forward(self, x: torch.Tensor, rope: Rope, forward_batch: ForwardBatch) -> torch.Tensor:
        # x: [T, hidden] -> [T, hidden]
        t = x.shape[0]
        d, heads, kv_heads = self.attn.head_dim, self.attn.num_heads, self.attn.num_kv_heads
        qkv = self.qkv_proj(x)  # [T, (H + 2 Hkv) D]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        # each head normalized on its own: rows of [T H, D]; then q and k rotated in one call
        qk = torch.cat(
            [self.q_norm(q.reshape(-1, d)).view(t, -1), self.k_norm(k.reshape(-1, d)).view(t, -1)],
            dim=-1,
        )  # [T, (H + Hkv) D]
        q, k = rope.rotate(qk, heads + kv_heads, d).split([heads, kv_heads], dim=1)
        return self.o_proj(self.attn(q, k, v.view(t, kv_heads, d), forward_batch))


class Qwen3DecoderLayer(LlamaDecoderLayer):
    """Llama's pre-norm block (its forward) around Qwen3 attention and the given MLP."""

    def __init__(
        self, config: ModelConfig, layer_id: int, sliding_window: Optional[int], mlp: nn.Module
    ) -> None:
        nn.Module.__init__(self)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Qwen3Attention(config, layer_id, sliding_window)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = mlp  # [T, hidden] -> [T, hidden]


class Qwen3Model(LlamaModel):
    """Llama's embedding, final norm and forward over the layers the causal-LM class builds."""

    def __init__(self, config: ModelConfig, layers: list[nn.Module]) -> None:
        nn.Module.__init__(self)
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(
            config.head_dim,
            config.context_len,
            config.rope_theta,
            config.rope_scaling,
            config.dtype,
        )


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3 (and, through the registry, Qwen3Model: embedding checkpoints without lm_head).

    Subclasses change the MLP of a layer (make_mlp) and its window (sliding_window_of).
    """

    def __init__(self, config: ModelConfig) -> None:
        nn.Module.__init__(self)  # LlamaForCausalLM's parts, with Qwen3's layers
        self.config = config
        layers = [
            Qwen3DecoderLayer(config, i, self.sliding_window_of(i), self.make_mlp(i))
            for i in range(config.num_layers)
        ]
        self.model = Qwen3Model(config, layers)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        # checkpoint tensors that have no parameter of their own here
        self.ignored_weights = {"lm_head.weight"} if config.tie_word_embeddings else set()

    def make_mlp(self, layer_id: int) -> nn.Module:
        return LlamaMLP(self.config)

    def sliding_window_of(self, layer_id: int) -> Optional[int]:
        # transformers' Qwen3: layer_types (written from use_sliding_window / max_window_layers)
        return self.config.sliding_window_of(layer_id)
