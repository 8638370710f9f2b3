"""Parameter holders for checkpoint weights: linear layers (plain and fused) and the vocab embedding.

Tensor parallelism (sglang/srt/distributed): a layer built inside `building_with(group)` holds
this rank's shard, and its `shard_checkpoint(tensor, shard)` cuts that shard out of a full
checkpoint tensor at load time. MergedLinear is column-parallel (each fused projection's output
rows split), RowParallelLinear splits its input columns and all-reduces its output, and
VocabParallelEmbedding splits the vocabulary rows (padded to a multiple of the group size).
With the trivial group (tp_size 1) each is the plain layer.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.distributed.parallel_state import TpGroup, building_group
from sglang.srt.layers.quantization import (
    ROUTE_BF16,
    ROUTE_DENSE,
    ROUTE_DEQUANT,
    ROUTE_INT4,
    ROUTE_INT8,
    ROUTE_PACKED,
    Bf16Weight,
    QuantWeight,
)

# A Python-only route (the C++ decode pass does not take it): one product per row.
ROUTE_ROWWISE = 6
# Up to this many rows a oneDNN-packed weight wins (2x at one row, even at 64, slower at 512):
# decode uses it, long prefills keep the plain kernel.
_PACKED_MAX_ROWS = 64
# At most this many rows go through a layer's small-batch form (layers/quantization.py; each
# form has its own max_rows, measured with benchmark/bench_forward.py): a step is weight
# streaming there. Larger products use the dense weight.
QUANT_MAX_ROWS = 16


class Linear(nn.Linear):
    """nn.Linear without random init: every weight is overwritten by the checkpoint.

    After loading, prepare_linears() may give it faster forms of the same weight: a low-bit
    form for small batches (quant) and a oneDNN-packed bf16 copy; on CPUs without bf16 dot
    products the dense weight itself is kept in float32.
    """

    packed: Optional[torch.Tensor] = None  # oneDNN-packed bf16 weight, or None
    quant: Optional[QuantWeight] = None  # low-bit form of weight, or None
    # one kernel for every row count (--enable-deterministic-inference; see linear_route)
    batch_invariant: bool = False

    def reset_parameters(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.packed, self.quant, self.batch_invariant)


class Route(NamedTuple):
    """How a Linear multiplies `rows` input rows: the kernel, its operands, the bias."""

    kind: int
    operands: tuple  # the kernel's weight operands (see linear())
    group: int  # the int4 group size; 0 otherwise
    bias: Optional[torch.Tensor]


def linear_route(
    rows: int,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    packed: Optional[torch.Tensor] = None,
    quant: Optional[QuantWeight] = None,
    batch_invariant: bool = False,
) -> Route:
    """The fastest form of the weight for `rows` input rows (-1: not a 2-d input).

    batch_invariant: the same route whatever the row count, through a kernel whose result for
    a row does not depend on the other rows (tests/srt/test_deterministic.py checks each): the
    int4 / int8 weight-only kernels, else oneDNN's packed bf16 kernel, else one product per row.
    """
    if batch_invariant:
        return _invariant_route(weight, bias, packed, quant)
    if quant is not None:
        if 0 <= rows <= min(quant.max_rows, QUANT_MAX_ROWS):
            kind, operands, group = quant.route()
            return Route(kind, operands, group, bias)
        return Route(ROUTE_DEQUANT, (weight,), 0, bias)
    if packed is not None and 0 <= rows <= _PACKED_MAX_ROWS:
        return Route(ROUTE_PACKED, (packed,), 0, bias)
    return Route(ROUTE_DENSE, (weight,), 0, bias)


def _invariant_route(
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    packed: Optional[torch.Tensor],
    quant: Optional[QuantWeight],
) -> Route:
    if quant is not None and quant.route()[0] in (ROUTE_INT4, ROUTE_INT8):
        kind, operands, group = quant.route()
        return Route(kind, operands, group, bias)
    if packed is not None:
        return Route(ROUTE_PACKED, (packed,), 0, bias)
    return Route(ROUTE_ROWWISE, (weight,), 0, bias)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    packed: Optional[torch.Tensor] = None,
    quant: Optional[QuantWeight] = None,
    batch_invariant: bool = False,
) -> torch.Tensor:
    """x [T, in] @ weight[out, in].T (+ bias), through the form that is fastest for T rows."""
    rows = x.shape[0] if x.dim() == 2 else -1
    route = linear_route(rows, weight, bias, packed, quant, batch_invariant)
    kind = route.kind
    if kind == ROUTE_ROWWISE:  # a matrix-vector product per row: the same for any batch
        b = None if bias is None else bias.to(weight.dtype)
        rows_out = [F.linear(r.to(weight.dtype), weight, b) for r in x.view(-1, 1, x.shape[-1])]
        return torch.cat(rows_out).view(*x.shape[:-1], -1).to(x.dtype)
    if kind in (ROUTE_INT4, ROUTE_INT8, ROUTE_BF16):
        y = quant.matmul(x)
        return y if bias is None else y + bias
    if kind == ROUTE_DEQUANT:  # the dense weight (quant's dequantization) at the kernel's
        # precision: bf16 in and out, so a row's result does not depend on which path its
        # batch took
        xb = x.to(torch.bfloat16)
        y = F.linear(xb.to(weight.dtype), weight).to(torch.bfloat16).to(x.dtype)
        return y if bias is None else y + bias
    if kind == ROUTE_PACKED:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    if weight.dtype != x.dtype:  # a float32 dense weight on a CPU without bf16 dot products
        b = None if bias is None else bias.to(weight.dtype)
        return F.linear(x.to(weight.dtype), weight, b).to(x.dtype)
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


@functools.lru_cache(maxsize=None)
def bf16_packing_works(device: torch.device) -> bool:
    """Whether this CPU has oneDNN's packed bf16 kernel (AVX-512 or AVX-NE-CONVERT)."""
    return pack_weight(torch.zeros(16, 16, dtype=torch.bfloat16, device=device)) is not None


def dense_cpu_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight the dense CPU path multiplies by: float32 where bf16/fp16 have no fast kernel.

    CPUs without bf16 dot products (AVX2) run PyTorch's bf16 matmul several times slower than
    float32 (4.5x at 64 rows, benchmark/bench_forward.py --kernels); the float32 copy computes
    the same products of the same (bf16-representable) values.
    """
    if weight.device.type != "cpu" or bf16_packing_works(weight.device):
        return weight
    if weight.dtype in (torch.bfloat16, torch.float16):
        return weight.detach().float()
    return weight


def use_float32_dense(model: nn.Module) -> int:
    """Store each CPU Linear's dense weight in float32 where that is the faster kernel (see
    dense_cpu_weight); returns how many were converted. Run before quantization and packing."""
    count = 0
    for module in model.modules():
        if isinstance(module, Linear) and not bf16_packing_works(module.weight.device):
            dense = dense_cpu_weight(module.weight)
            if dense is not module.weight:
                if module.weight.dtype == torch.bfloat16:  # kept for 1-2 rows (decode)
                    module.quant = Bf16Weight(module.weight.detach())
                module.weight = nn.Parameter(dense, requires_grad=False)
                count += 1
    return count


def make_batch_invariant(model: nn.Module) -> None:
    """Every Linear of model takes its batch-invariant route (see linear_route)."""
    for module in model.modules():
        if isinstance(module, Linear):
            module.batch_invariant = True


def pack_linears(model: nn.Module) -> int:
    """Give every Linear of model its packed weight; returns how many were packed."""
    count = 0
    for module in model.modules():
        if isinstance(module, Linear):
            module.packed = pack_weight(module.weight)
            count += module.packed is not None
    return count


class MergedLinear(Linear):
    """Several projections of one input fused into one matmul (q/k/v, gate/up); column-parallel.

    NOTE: output_sizes lists this rank's row blocks in order (each projection's full size
    divided by the group size); the loader copies this rank's part of checkpoint shard i into
    rows sum(output_sizes[:i]) : sum(output_sizes[:i + 1]).
    """

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False) -> None:
        self.tp = building_group()
        for size in output_sizes:
            if size % self.tp.size:
                raise ValueError(f"output size {size} does not split into {self.tp.size} parts")
        self.output_sizes = [size // self.tp.size for size in output_sizes]
        super().__init__(in_features, sum(self.output_sizes), bias=bias)

    def shard_checkpoint(self, tensor: torch.Tensor, shard: Optional[int]) -> torch.Tensor:
        # checkpoint shard [full_rows, ...] (a weight, a bias, or a quantized form's codes and
        # scales) -> this rank's rows [full_rows / tp, ...]
        return equal_part(tensor, 0, self.tp)


class RowParallelLinear(Linear):
    """A Linear whose input features are split across the group: each rank multiplies its
    columns of the weight [out, in / tp] by its part of the input [T, in / tp] (the heads or the
    intermediate features a column-parallel layer left on it), then the partial products are
    summed over the ranks (all-reduce) and the bias, held whole, is added once."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        self.tp = building_group()
        if in_features % self.tp.size:
            raise ValueError(f"input size {in_features} does not split into {self.tp.size} parts")
        super().__init__(in_features // self.tp.size, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, in / tp] -> [T, out]
        if not self.tp.enabled:
            return super().forward(x)
        y = linear(x, self.weight, None, self.packed, self.quant, self.batch_invariant)
        y = self.tp.all_reduce(y)
        return y if self.bias is None else y + self.bias

    def shard_checkpoint(self, tensor: torch.Tensor, shard: Optional[int] = None) -> torch.Tensor:
        # weight [out, in] (or codes [out, in], scales [out, in / group]) -> [out, in / tp, ...];
        # the bias [out] stays whole
        return tensor if tensor.dim() == 1 else equal_part(tensor, 1, self.tp)


class Embedding(nn.Embedding):
    """nn.Embedding without random init."""

    def reset_parameters(self) -> None:
        pass


class VocabParallelEmbedding(Embedding):
    """The vocabulary rows split across the group: the vocabulary is padded to a multiple of
    the group size, rank r holds rows [r V' / tp, (r + 1) V' / tp) (the padding rows are zero).
    A lookup takes the rows this rank holds (zeros for the others) and sums over the ranks.
    Also the holder of an untied lm_head's weight (layers/logits.py gathers its logits)."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        self.tp = building_group()
        self.vocab_size = num_embeddings
        self.padded_vocab_size = -(-num_embeddings // self.tp.size) * self.tp.size
        self.vocab_start, rows = self.tp.shard_range(self.padded_vocab_size)
        super().__init__(rows, embedding_dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids [T] int64 -> [T, D]
        if not self.tp.enabled:
            return super().forward(input_ids)
        local = input_ids - self.vocab_start
        held = (local >= 0) & (local < self.num_embeddings)
        rows = F.embedding(local.clamp(0, self.num_embeddings - 1), self.weight)
        return self.tp.all_reduce(rows * held.unsqueeze(-1).to(rows.dtype))

    def shard_checkpoint(self, tensor: torch.Tensor, shard: Optional[int] = None) -> torch.Tensor:
        # [V, ...] -> this rank's rows [V' / tp, ...], zero past V
        return rows_padded(tensor, self.vocab_start, self.num_embeddings)


def equal_part(tensor: torch.Tensor, dim: int, tp: TpGroup) -> torch.Tensor:
    """This rank's equal part of tensor along dim (its size must split into tp.size parts)."""
    if tp.size == 1:
        return tensor
    total = tensor.shape[dim]
    if total % tp.size:
        raise ValueError(
            f"a tensor of shape {tuple(tensor.shape)} does not split into {tp.size} equal parts "
            f"along dim {dim}"
        )
    start, size = tp.shard_range(total)
    return tensor.narrow(dim, start, size)


def rows_padded(tensor: torch.Tensor, start: int, rows: int) -> torch.Tensor:
    """tensor[start : start + rows], zero rows where that runs past the end."""
    part = tensor[start : start + rows]
    if part.shape[0] == rows:
        return part
    pad = tensor.new_zeros((rows - part.shape[0], *tensor.shape[1:]))
    return torch.cat([part, pad])
