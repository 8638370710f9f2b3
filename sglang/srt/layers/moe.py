"""Sparse mixture-of-experts MLP: a softmax top-k router and SiLU-gated experts whose weights
are stacked, computed one matmul per expert over the rows routed to it."""

from __future__ import annotations

import re
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.layers.activation import silu_and_mul
from sglang.srt.layers.linear import Linear, MergedLinear

# Checkpoint names of expert weights, after the experts module's own prefix:
# one tensor per expert and projection (Hub checkpoints, and what transformers saves) ...
_PER_EXPERT = re.compile(r"(\d+)\.(gate_proj|up_proj|down_proj)\.weight")
# ... or already stacked over the experts (transformers' in-memory layout)
_STACKED = ("gate_up_proj", "down_proj")


class Router(nn.Module):
    """Top-k expert choice of each token: softmax over all experts in float32, then top-k.

    NOTE: a plain parameter rather than a Linear, so --quantization never approximates it and
    tokens go to the experts the checkpoint's full-precision router picks.
    """

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, renormalize: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))  # [E, hidden]
        self.top_k = top_k
        self.renormalize = renormalize

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [T, hidden] -> (weights [T, K] in x's dtype, expert ids [T, K] int64)
        probs = F.linear(x, self.weight).softmax(-1, dtype=torch.float32)  # [T, E]
        weights, ids = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights.to(x.dtype), ids


class StackedExperts(nn.Module):
    """E SiLU-gated MLPs with their weights stacked: gate_up_proj [E, 2I, hidden] (each
    expert's gate rows, then its up rows) and down_proj [E, hidden, I]."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        e, h, i = num_experts, hidden_size, intermediate_size
        self.num_experts, self.intermediate_size = e, i
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.empty(e, h, i))
        # what the checkpoint has filled: (expert, projection) pairs, see load_tensor()
        self._loaded: set[tuple[int, str]] = set()

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        # x: [T, hidden]; weights, ids: [T, K] (the router's) -> sum_k weights[t, k] *
        # expert_{ids[t, k]}(x[t]): [T, hidden]
        tokens, k = ids.shape
        flat_ids = ids.reshape(-1)  # [T K], row t * K + j is token t's j-th choice
        order = flat_ids.argsort(stable=True)  # [T K]: the choices grouped by expert
        rows = x[order // k]  # [T K, hidden], each choice's token, grouped by expert
        counts = torch.bincount(flat_ids, minlength=self.num_experts).tolist()  # [E]
        out = torch.empty_like(rows)  # [T K, hidden]
        start = 0
        for expert, n in enumerate(counts):
            if n == 0:
                continue
            block = rows[start : start + n]  # [n, hidden]
            hidden = silu_and_mul(F.linear(block, self.gate_up_proj[expert]))  # [n, I]
            out[start : start + n] = F.linear(hidden, self.down_proj[expert])
            start += n
        weighted = out * weights.reshape(-1)[order].unsqueeze(1)  # [T K, hidden]
        # back to token order, then each token's K outputs summed (no scatter-add: the same
        # sum on every device, in every run)
        per_choice = torch.empty_like(weighted)
        per_choice[order] = weighted
        return per_choice.view(tokens, k, -1).sum(1)

    def load_tensor(self, name: str, tensor: torch.Tensor) -> bool:
        """Copy one checkpoint tensor named `name` (relative to this module: `3.up_proj.weight`
        or `gate_up_proj`) into the stacked weights; False when the name is not an expert's."""
        i = self.intermediate_size
        match = _PER_EXPERT.fullmatch(name)
        if match is not None:
            expert, proj = int(match.group(1)), match.group(2)
            if expert >= self.num_experts:
                return False
            dest = {
                "gate_proj": self.gate_up_proj.data[expert, :i],
                "up_proj": self.gate_up_proj.data[expert, i:],
                "down_proj": self.down_proj.data[expert],
            }[proj]
            self._copy(dest, tensor, name)
            self._loaded.add((expert, proj))
            return True
        if name in _STACKED:
            self._copy(getattr(self, name).data, tensor, name)
            projs = ("gate_proj", "up_proj") if name == "gate_up_proj" else ("down_proj",)
            self._loaded.update((e, p) for e in range(self.num_experts) for p in projs)
            return True
        return False

    def missing(self) -> list[str]:
        """The expert weights no checkpoint tensor has filled yet."""
        return [
            f"{e}.{p}"
            for e in range(self.num_experts)
            for p in ("gate_proj", "up_proj", "down_proj")
            if (e, p) not in self._loaded
        ]

    @staticmethod
    def _copy(dest: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
        if dest.shape != tensor.shape:
            raise ValueError(
                f"expert weight {name!r}: shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
            )
        dest.copy_(tensor)


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate/up fused (checkpoint names gate_proj, up_proj)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        i = intermediate_size
        self.gate_up_proj = MergedLinear(hidden_size, [i, i], bias=False)
        self.down_proj = Linear(i, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, hidden] -> [T, hidden]
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class SparseMoeBlock(nn.Module):
    """Qwen-MoE MLP: each token through its top-k experts, outputs weighted by the router;
    with `shared_intermediate_size`, plus a shared expert (Qwen2-MoE) scaled by
    sigmoid(shared_expert_gate(x))."""

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        intermediate_size: int,
        renormalize: bool,
        shared_intermediate_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.gate = Router(hidden_size, num_experts, top_k, renormalize)
        self.experts = StackedExperts(num_experts, hidden_size, intermediate_size)
        self.shared_expert: Optional[GatedMLP] = None
        self.shared_expert_gate: Optional[Linear] = None
        if shared_intermediate_size:
            self.shared_expert = GatedMLP(hidden_size, shared_intermediate_size)
            self.shared_expert_gate = Linear(hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, hidden] -> [T, hidden]
        weights, ids = self.gate(x)  # [T, K] each
        out = self.experts(x, weights, ids)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out
