"""Gated activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sglang.srt.layers import cpu_kernels


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    # x: [T, 2 * I] = [gate | up] -> [T, I]
    kernels = cpu_kernels.for_tensor(x)
    if kernels is not None and x.dim() == 2:
        return kernels.silu_and_mul(x)
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]
