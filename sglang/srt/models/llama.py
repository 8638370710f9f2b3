"""Llama-family decoder (Llama 2/3, Mistral with its sliding window, SmolLM, TinyLlama) in plain
PyTorch.

Tensor-parallel (sglang/srt/distributed): built at tp_size N, each rank holds H / N query heads
and Hkv / N KV heads (qkv_proj column-parallel, o_proj row-parallel), I / N intermediate
features (gate_up_proj column-parallel, down_proj row-parallel) and V' / N rows of the embedding
and lm_head (vocabulary-parallel); the norms and rotary tables are whole on every rank.
"""

from __future__ import annotations

import torch
from torch import nn

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.layers.activation import silu_and_mul
from sglang.srt.layers.attention import Attention
from sglang.srt.layers.linear import MergedLinear, RowParallelLinear, VocabParallelEmbedding
from sglang.srt.layers.norm import RMSNorm
from sglang.srt.layers.rotary import Rope, RotaryEmbedding
from sglang.srt.model_executor.forward_batch import ForwardBatch


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, qkv_bias: bool) -> None:
        super().__init__()
        h, hkv, d = config.num_heads, config.num_kv_heads, config.head_dim
        self.qkv_proj = MergedLinear(config.hidden_size, [h * d, hkv * d, hkv * d], bias=qkv_bias)
        self.o_proj = RowParallelLinear(h * d, config.hidden_size, bias=config.attention_bias)
        tp = self.qkv_proj.tp.size  # this rank: h / tp query heads, hkv / tp KV heads
        self.q_size, self.kv_size = h // tp * d, hkv // tp * d
        self.attn = Attention(
            h // tp, hkv // tp, d, layer_id, sliding_window=config.sliding_window_of(layer_id)
        )

    def forward(self, x: torch.Tensor, rope: Rope, forward_batch: ForwardBatch) -> torch.Tensor:
        # x: [T, hidden] -> [T, hidden]
        qkv = self.qkv_proj(x)  # [T, (H + 2 Hkv) D], this rank's heads
        d, heads, kv_heads = self.attn.head_dim, self.attn.num_heads, self.attn.num_kv_heads
        # q and k get rotated together: one rotation per layer instead of two
        q, k = rope.rotate(qkv, heads + kv_heads, d).split([heads, kv_heads], dim=1)
        v = qkv[:, self.q_size + self.kv_size :].view(x.shape[0], -1, d)
        return self.o_proj(self.attn(q, k, v, forward_batch))


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        inter = config.intermediate_size
        self.gate_up_proj = MergedLinear(config.hidden_size, [inter, inter], bias=False)
        self.down_proj = RowParallelLinear(inter, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, qkv_bias: bool) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer_id, qkv_bias)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, rope: Rope, fb: ForwardBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual add of each block is fused into the norm that follows it.
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, rope, fb)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, qkv_bias: bool) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, qkv_bias) for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(
            config.head_dim,
            config.context_len,
            config.rope_theta,
            config.rope_scaling,
            config.dtype,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        forward_batch: ForwardBatch,
        input_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # input_ids, positions: [T] int64 -> [T, hidden] after the final norm; input_embeds
        # [T, hidden] replaces the embedding lookup (vision-language models put images there)
        x = self.embed_tokens(input_ids) if input_embeds is None else input_embeds
        rope = self.rotary.lookup(positions)  # once per pass, shared by all layers
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, rope, forward_batch)
        x, _ = self.norm(x, residual)
        return x


class LlamaForCausalLM(nn.Module):
    # checkpoint projection name -> (our fused projection, its shard index)
    packed_modules = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    qkv_bias = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, self.qkv_bias or config.attention_bias)
        if not config.tie_word_embeddings:
            # a weight holder [V' / tp, hidden]; the runner's LmHead multiplies by it
            self.lm_head = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        # checkpoint tensors that have no parameter of their own here
        self.ignored_weights = {"lm_head.weight"} if config.tie_word_embeddings else set()

    @property
    def lm_head_weight(self) -> torch.Tensor:
        # [V, hidden] (at tp_size N: this rank's rows [V' / N, hidden]); a tied model reuses
        # the embedding
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        # input_ids, positions: [T] int64 -> hidden states [T, hidden]; logits are the runner's
        return self.model(input_ids, positions, forward_batch)
