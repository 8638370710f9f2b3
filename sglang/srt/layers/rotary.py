"""Rotary position embedding (rotate-halves style) with a precomputed cos/sin table; partial
rotary (only the first rotary_dim channels of each head turn) and LongRoPE scaling."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from sglang.srt.layers import cpu_kernels


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions 0..max_position-1; look up once per pass, apply per layer.

    rotary_dim (default head_dim): the leading channels of each head that rotate, the rest pass
    through (partial rotary, Phi-4-mini). max_position is the served context length: LongRoPE
    picks its factors by it (rope_inv_freq)."""

    def __init__(
        self,
        head_dim: int,
        max_position: int,
        base: float,
        scaling: Optional[dict] = None,
        dtype: torch.dtype = torch.float32,
        rotary_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim or head_dim  # R
        if self.rotary_dim % 2 or self.rotary_dim > head_dim:
            raise ValueError(f"rotary_dim={self.rotary_dim}: expected an even size <= {head_dim}")
        inv_freq = rope_inv_freq(self.rotary_dim, base, scaling, max_position)  # [R/2] float32
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)  # [P, R/2]
        # LongRoPE scales cos and sin themselves (1.0 for the other kinds), in float32
        factor = rope_attention_factor(scaling)
        cos, sin = freqs.cos(), freqs.sin()
        if factor != 1.0:
            cos, sin = cos * factor, sin * factor
        # NOTE: rotate_half(x) * sin == roll(x, R/2) * [-sin | sin], one roll instead of a cat.
        self.register_buffer("cos", torch.cat([cos, cos], -1).to(dtype), persistent=False)
        self.register_buffer("sin", torch.cat([-sin, sin], -1).to(dtype), persistent=False)

    def lookup(self, positions: torch.Tensor) -> Rope:
        # positions: [T] int64 -> the pass's rotation, applied by each layer
        kernels = cpu_kernels.for_tensor(positions)
        # the C++ kernel rotates whole heads: partial rotary takes the torch ops
        whole_heads = self.rotary_dim == self.head_dim
        if kernels is not None and self.cos.device.type == "cpu" and whole_heads:
            return Rope(None, None, kernels, self.cos, self.sin, positions)
        return Rope(self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1))


@dataclass
class Rope:
    """One pass's rotary embedding: positions looked up once, applied by every layer."""

    cos: Optional[torch.Tensor]  # [T, 1, R], broadcast over heads (torch ops); R <= D
    sin: Optional[torch.Tensor]
    # or, on CPU (R == D): the C++ kernel, which reads the [P, D] tables at the positions itself
    kernels: Any = None
    cos_table: Optional[torch.Tensor] = None
    sin_table: Optional[torch.Tensor] = None
    positions: Optional[torch.Tensor] = None

    def rotate(self, x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
        # x: [T, W] rows whose first `heads` heads of head_dim get rotated -> [T, heads, D]
        if self.kernels is not None and x.dtype == self.cos_table.dtype and x.stride(-1) == 1:
            return self.kernels.rotary(
                x, self.cos_table, self.sin_table, self.positions, heads, head_dim
            )
        if self.cos is None:  # (a dtype the tables do not have)
            self.cos = self.cos_table[self.positions].unsqueeze(1)
            self.sin = self.sin_table[self.positions].unsqueeze(1)
        rows = x[:, : heads * head_dim].reshape(x.shape[0], heads, head_dim)
        cos, sin = self.cos.to(x.dtype), self.sin.to(x.dtype)
        rot = cos.shape[-1]
        if rot == head_dim:
            return apply_rotary(rows, cos, sin)
        # partial rotary: channels [0, R) of each head rotate, [R, D) pass through
        return torch.cat([apply_rotary(rows[..., :rot], cos, sin), rows[..., rot:]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [T, N, R]; cos, sin: [T, 1, R] from RotaryEmbedding.lookup
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin)


def rope_inv_freq(
    dim: int, base: float, scaling: Optional[dict], context_len: Optional[int] = None
) -> torch.Tensor:
    """Inverse frequencies [dim / 2] float32 of the dim rotated channels of a head, with HF's
    linear, llama3 or longrope scaling applied.

    longrope (Phi-3's LongRoPE / SuRoPE): inv_freq = 1 / (ext * base ** (2i / dim)), ext being
    long_factor when context_len (the served context) exceeds original_max_position_embeddings,
    short_factor otherwise. transformers picks per forward call by that call's sequence length;
    a server picks once, by the context it serves, so that every cached key was rotated with the
    factors every later token is: the two agree for sequences of more than
    original_max_position_embeddings tokens on a long-context server, and for every sequence on
    a server whose context is at most original_max_position_embeddings."""
    powers = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # [dim / 2]
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return 1.0 / powers
    if kind == "linear":
        return 1.0 / powers / float(scaling["factor"])
    if kind == "llama3":
        return _llama3_inv_freq(1.0 / powers, scaling)
    if kind == "longrope":
        original = int(scaling["original_max_position_embeddings"])
        use_long = context_len is not None and context_len > original
        ext = scaling["long_factor" if use_long else "short_factor"]
        if len(ext) != dim // 2:
            raise ValueError(
                f"rope_scaling {'long' if use_long else 'short'}_factor: {len(ext)} values, "
                f"expected rotary dim / 2 = {dim // 2}"
            )
        return 1.0 / (torch.tensor(ext, dtype=torch.float32) * powers)
    raise ValueError(
        f"rope_scaling type {kind!r} is not supported (default, linear, llama3, longrope are)"
    )


def rope_attention_factor(scaling: Optional[dict]) -> float:
    """The factor cos and sin are multiplied by: longrope's attention_factor, by default
    sqrt(1 + ln(factor) / ln(original_max_position_embeddings)) (1 where factor <= 1), factor
    being the model's max_position_embeddings / original_max_position_embeddings; 1 otherwise."""
    if (scaling or {}).get("rope_type") != "longrope":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    if scaling.get("factor") is None:
        raise ValueError(
            "longrope rope_scaling needs factor (max_position_embeddings / "
            "original_max_position_embeddings) or attention_factor"
        )
    factor = float(scaling["factor"])
    if factor <= 1.0:
        return 1.0
    original = float(scaling["original_max_position_embeddings"])
    return math.sqrt(1 + math.log(factor) / math.log(original))


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1: keep high frequencies, divide low ones by factor, interpolate in between."""
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)
