"""Weight-only low-bit forms of linear weights, and how a GGUF file's blocks map onto them.

Two forms, each multiplied by one of PyTorch's own weight-only CPU kernels:

- ``Int4Weight``: 4-bit codes q in 0..15 in groups of ``group_size`` along the input dimension,
  each group with a scale and a zero: ``w = (q - 8) * scale + zero``
  (``torch.ops.aten._weight_int4pack_mm_for_cpu``; activations in bfloat16).
- ``Int8Weight``: int8 codes with one scale per output row: ``w = q * scale``
  (``torch._weight_int8pack_mm``).

GGUF blocks map onto them like this (d, m: the block's float16 scale and min):

- Q4_0 (``w = d * (q - 8)``): ``scale = d``, ``zero = 0``; exact.
- Q4_1 (``w = d * q + m``): ``scale = d``, ``zero = m + 8 d``; exact up to rounding scale and
  zero to the activation dtype (bfloat16: a relative error of at most 2^-9 on each).
- Q8_0 (``w = d * q`` in blocks of 32): dequantized, then re-quantized with one scale per row
  (the int8 kernel has no groups); not exact, measured by perplexity (benchmark/bench_quality.py).
- Other types (K-quants, Q5, F16...): the layer keeps its dense weight.

NOTE: the int4 kernel runs on CPU only; on other devices a quantized checkpoint is multiplied
through its dequantized dense weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

GROUP_SIZE = 32  # the int4 group (the GGUF block size of Q4_0 / Q4_1)
_ACT_DTYPE = torch.bfloat16  # the low-bit kernels' activation dtype
QUANTIZATION_CHOICES = ("auto", "none", "int8", "int4")
# Route kinds: which kernel multiplies a Linear's input (layers/linear.py's linear_route; also
# read by the C++ decode pass, layers/cpu_kernels/decode_layers.cpp, which runs the same kernels).
ROUTE_INT4, ROUTE_INT8, ROUTE_BF16, ROUTE_DEQUANT, ROUTE_DENSE, ROUTE_PACKED = range(6)


@dataclass
class Int4Weight:
    """Packed 4-bit codes of a weight [N, K] with per-group scale and zero."""

    packed: torch.Tensor  # the int4 kernel's packed layout of the codes
    scales_zeros: torch.Tensor  # [K / group_size, N, 2] bfloat16: (scale, zero) per group
    group_size: int
    shape: tuple[int, int]  # (N, K)
    max_rows = 16  # up to this many rows it beats the dense kernels (bench_forward.py)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, K] -> [T, N] in x's dtype
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.to(_ACT_DTYPE), self.packed, self.group_size, self.scales_zeros
        )
        return y.to(x.dtype)

    def route(self) -> tuple[int, tuple, int]:
        # (kind, operands, group) for layers/linear.py's Route
        return ROUTE_INT4, (self.packed, self.scales_zeros), self.group_size

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales_zeros.nbytes


@dataclass
class Int8Weight:
    """int8 codes of a weight [N, K] with one scale per output row."""

    qweight: torch.Tensor  # [N, K] int8
    scales: torch.Tensor  # [N] bfloat16
    max_rows = 16

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x.to(_ACT_DTYPE), self.qweight, self.scales).to(x.dtype)

    def route(self) -> tuple[int, tuple, int]:
        return ROUTE_INT8, (self.qweight, self.scales), 0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.qweight.shape)

    @property
    def nbytes(self) -> int:
        return self.qweight.nbytes + self.scales.nbytes


@dataclass
class Bf16Weight:
    """A dense bf16 weight [N, K] for one- and two-row products on CPUs whose fast dense path is
    float32 (no bf16 dot products): there a matrix-vector product is bound by reading the
    weight, and bf16 reads half the bytes (2x faster at one row; float32 wins from ~4 rows)."""

    weight: torch.Tensor
    max_rows = 2

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.to(_ACT_DTYPE), self.weight).to(x.dtype)

    def route(self) -> tuple[int, tuple, int]:
        return ROUTE_BF16, (self.weight,), 0

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes


QuantWeight = Union[Int4Weight, Int8Weight, Bf16Weight]


# ---- building the forms ----------------------------------------------------------------------


def int4_from_codes(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int = GROUP_SIZE
) -> Int4Weight:
    """codes [N, K] in 0..15; scale, zero [N, K / group_size]: w = (q - 8) * scale + zero."""
    n, k = codes.shape
    if k % group_size:
        raise ValueError(f"int4: input size {k} is not a multiple of the group size {group_size}")
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    scales_zeros = torch.stack([scale.t(), zero.t()], dim=-1).to(_ACT_DTYPE).contiguous()
    return Int4Weight(packed, scales_zeros, group_size, (n, k))


def int4_dequantize(codes: torch.Tensor, w: Int4Weight) -> torch.Tensor:
    """The float32 weight [N, K] that w's kernel multiplies by, given the codes it was built from."""
    g = w.group_size
    scale = w.scales_zeros[..., 0].t().float().repeat_interleave(g, dim=1)
    zero = w.scales_zeros[..., 1].t().float().repeat_interleave(g, dim=1)
    return (codes.float() - 8) * scale + zero


def quantize_int4(weight: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[Int4Weight, torch.Tensor]:
    """Round-to-nearest asymmetric int4 of weight [N, K] per group; returns (form, codes)."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"int4: input size {k} is not a multiple of the group size {group_size}")
    w = weight.float().view(n, k // group_size, group_size)
    lo, hi = w.amin(-1), w.amax(-1)
    # codes are rounded against the scale and zero as the kernel will hold them (bf16)
    scale = ((hi - lo) / 15).clamp(min=1e-10).to(_ACT_DTYPE).float()
    zero = (lo + 8 * scale).to(_ACT_DTYPE).float()
    codes = ((w - zero[..., None]) / scale[..., None] + 8).round().clamp(0, 15).to(torch.uint8)
    form = int4_from_codes(codes.view(n, k), scale, zero, group_size)
    return form, codes.view(n, k)


def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """Round-to-nearest symmetric int8 of weight [N, K] with one scale per row."""
    w = weight.float()
    scale = (w.abs().amax(-1) / 127).clamp(min=1e-10).to(_ACT_DTYPE).float()
    codes = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    return Int8Weight(codes.contiguous(), scale.to(_ACT_DTYPE))


def int8_dequantize(w: Int8Weight) -> torch.Tensor:
    return w.qweight.float() * w.scales.float()[:, None]


# ---- GGUF blocks -----------------------------------------------------------------------------

# Types whose blocks map exactly onto Int4Weight (group 32).
GGUF_INT4_TYPES = ("Q4_0", "Q4_1")
# Types re-quantized to Int8Weight (one scale per row).
GGUF_INT8_TYPES = ("Q8_0",)


def gguf_int4_codes(type_name: str, raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes [N, K] uint8, scale and zero [N, K / 32] float32 of a Q4_0 / Q4_1 tensor.

    raw: the tensor's bytes as the gguf package reads them, [N, blocks * block_bytes] uint8.
    A block of 32 weights: float16 d (Q4_1: then float16 m), then 16 bytes whose low nibbles
    are weights 0..15 and high nibbles weights 16..31.
    """
    head = {"Q4_0": 2, "Q4_1": 4}[type_name]
    n = raw.shape[0]
    blocks = raw.reshape(n, -1, head + 16)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # [N, B]
    nibbles = blocks[..., head:]
    codes = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).reshape(n, -1)  # [N, K]
    if type_name == "Q4_0":
        zero = np.zeros_like(d)
    else:
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        zero = m + 8 * d
    return torch.from_numpy(codes.copy()), torch.from_numpy(d), torch.from_numpy(zero)

