"""Qwen3-MoE decoder: Qwen3's attention, with a sparse mixture-of-experts MLP on the layers the
config marks (every `decoder_sparse_step`-th layer not in `mlp_only_layers`; the others keep a
dense MLP of `intermediate_size`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Optional

import torch
from torch import nn

from sglang.srt.layers.moe import SparseMoeBlock, StackedExperts
from sglang.srt.models.llama import LlamaMLP
from sglang.srt.models.qwen3 import Qwen3ForCausalLM


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    def make_mlp(self, layer_id: int) -> nn.Module:
        hf = self.config.hf
        # transformers writes num_experts to config.json as num_local_experts
        num_experts = hf.get("num_experts") or hf.get("num_local_experts") or 0
        sparse = (
            layer_id not in (hf.get("mlp_only_layers") or [])
            and num_experts > 0
            and (layer_id + 1) % hf.get("decoder_sparse_step", 1) == 0
        )
        if not sparse:
            return LlamaMLP(self.config)
        return SparseMoeBlock(
            self.config.hidden_size,
            num_experts,
            hf["num_experts_per_tok"],
            hf["moe_intermediate_size"],
            renormalize=bool(hf.get("norm_topk_prob", False)),
            shared_intermediate_size=hf.get("shared_expert_intermediate_size"),
        )

    def sliding_window_of(self, layer_id: int) -> Optional[int]:
        # transformers' Qwen3-MoE windows every layer when use_sliding_window is set (it has no
        # layer_types and ignores max_window_layers)
        window = self.config.hf.get("sliding_window")
        return int(window) if window and self.config.hf.get("use_sliding_window") else None

    def load_checkpoint(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Expert weights into the stacked parameters (per-expert or already stacked names),
        everything else through load_weights."""
        from sglang.srt.model_loader.loader import load_weights  # the loader imports the models

        experts = {n: m for n, m in self.named_modules() if isinstance(m, StackedExperts)}
        others = {
            name: p for name, p in self.named_parameters() if name.rsplit(".", 1)[0] not in experts
        }
        load_weights(self, self._load_experts(weights, experts), params=others)
        for name, module in experts.items():
            missing = module.missing()
            if missing:
                raise ValueError(
                    f"checkpoint lacks weights of {name} for {missing[:5]} ({len(missing)} in all)"
                )

    @staticmethod
    def _load_experts(
        weights: Iterable[tuple[str, torch.Tensor]], experts: dict[str, StackedExperts]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        # `model.layers.1.mlp.experts.3.up_proj.weight`: module `model.layers.1.mlp.experts`
        # (without the `model.` in a base-model checkpoint), name `3.up_proj.weight` in it
        for name, tensor in weights:
            prefix, sep, rest = name.partition(".experts.")
            module = experts.get(prefix + ".experts") or experts.get(f"model.{prefix}.experts")
            if not sep or module is None or not module.load_tensor(rest, tensor):
                yield name, tensor
