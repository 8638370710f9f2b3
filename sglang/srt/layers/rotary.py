"""Rotary position embedding (rotate-halves style) with a precomputed cos/sin table."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


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

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [T] int64 -> cos, sin: [T, 1, D], broadcast over heads
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


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
