"""Parameter holders for checkpoint weights: linear layers (plain and fused) and the vocab embedding."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# Up to this many rows a oneDNN-packed weight wins (2x at one row, even at 64, slower at 512):
# decode uses it, long prefills keep the plain kernel.
_PACKED_MAX_ROWS = 64


class Linear(nn.Linear):
    """nn.Linear without random init: every weight is overwritten by the checkpoint."""

    # A oneDNN-packed copy of weight for small batches on CPU (set by pack_linears), or None.
    packed: Optional[torch.Tensor] = None

    def reset_parameters(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.packed)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    packed: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """x [T, in] @ weight[out, in].T (+ bias); through the packed weight when it pays off."""
    if packed is not None and x.dim() == 2 and x.shape[0] <= _PACKED_MAX_ROWS:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return F.linear(x, weight, bias)


def pack_weight(weight: torch.Tensor) -> Optional[torch.Tensor]:
    """A oneDNN-packed copy of a bf16 CPU weight [out, in], or None where that does not apply.

    PyTorch's plain bf16 matrix-vector product on CPU reads weights at about half the speed of
    the packed oneDNN kernel, and decode steps at small batch are dominated by it; results are
    the same to the bit.
    """
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16:
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
    except (RuntimeError, AttributeError):
        return None


def pack_linears(model: nn.Module) -> int:
    """Give every Linear of model its packed weight; returns how many were packed."""
    count = 0
    for module in model.modules():
        if isinstance(module, Linear):
            module.packed = pack_weight(module.weight)
            count += module.packed is not None
    return count


class MergedLinear(Linear):
    """Several projections of one input fused into one matmul (q/k/v, gate/up).

    NOTE: output_sizes lists the row blocks in order; the loader copies checkpoint shard i into
    rows sum(output_sizes[:i]) : sum(output_sizes[:i + 1]).
    """

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False) -> None:
        super().__init__(in_features, sum(output_sizes), bias=bias)
        self.output_sizes = list(output_sizes)


class Embedding(nn.Embedding):
    """nn.Embedding without random init."""

    def reset_parameters(self) -> None:
        pass
