"""Parameter holders for checkpoint weights: linear layers (plain and fused) and the vocab embedding."""

from __future__ import annotations

from torch import nn


class Linear(nn.Linear):
    """nn.Linear without random init: every weight is overwritten by the checkpoint."""

    def reset_parameters(self) -> None:
        pass


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
