"""Rotary position embedding (rotate-halves style) with a precomputed cos/sin table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from sglang.srt.layers import cpu_kernels


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions 0..max_position-1; look up once per pass, apply per layer."""

    def __init__(
        self,
        head_dim: int,
        max_position: int,
        base: float,
        scaling: Optional[dict] = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, base, scaling)  # [D/2] float32
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)  # [P, D/2]
        cos, sin = freqs.cos(), freqs.sin()
        # NOTE: rotate_half(x) * sin == roll(x, D/2) * [-sin | sin], one roll instead of a cat.
        self.register_buffer("cos", torch.cat([cos, cos], -1).to(dtype), persistent=False)
        self.register_buffer("sin", torch.cat([-sin, sin], -1).to(dtype), persistent=False)

    def lookup(self, positions: torch.Tensor) -> Rope:
        # positions: [T] int64 -> the pass's rotation, applied by each layer
        kernels = cpu_kernels.for_tensor(positions)
        if kernels is not None and self.cos.device.type == "cpu":
            return Rope(None, None, kernels, self.cos, self.sin, positions)
        return Rope(self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1))


@dataclass
class Rope:
    """One pass's rotary embedding: positions looked up once, applied by every layer."""

    cos: Optional[torch.Tensor]  # [T, 1, D], broadcast over heads (torch ops)
    sin: Optional[torch.Tensor]
    # or, on CPU: the C++ kernel, which reads the [P, D] tables at the positions itself
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
        return apply_rotary(rows, self.cos.to(x.dtype), self.sin.to(x.dtype))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [T, N, D]; cos, sin: [T, 1, D] from RotaryEmbedding.lookup
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin)


def rope_inv_freq(head_dim: int, base: float, scaling: Optional[dict]) -> torch.Tensor:
    """Inverse frequencies [head_dim / 2] float32, with HF's linear or llama3 scaling applied."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    raise ValueError(f"rope_scaling type {kind!r} is not supported (default, linear, llama3 are)")


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
