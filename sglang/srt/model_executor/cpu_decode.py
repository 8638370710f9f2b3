"""The DECODE pass of a Llama-family model on CPU as one C++ call.

A one-row decode step runs ~25 kernels per layer, each a few microseconds; run from Python
(module calls, dtype checks, the kernel's dispatch) the step spends a quarter of its time
between them. CpuDecode runs the same kernels, in the same order, on the same operands, from
C++ (layers/cpu_kernels/decode_layers.cpp): the results are the same to the bit.

A plan per batch size holds each layer's tensors and, for each projection, the route
layers/linear.py picks for that many rows (a batch past the quantized kernels' rows takes the
dense weight, as the Python layers do). Where the model is not a Llama-family decoder on CPU
with the kernels built, the runner keeps the Python layers.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from sglang.srt.layers import cpu_kernels
from sglang.srt.layers.attention import Attention
from sglang.srt.layers.linear import ROUTE_ROWWISE, Linear, linear_route
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
from sglang.srt.model_executor.forward_batch import ForwardBatch
from sglang.srt.models.llama import LlamaForCausalLM
from sglang.srt.models.qwen2 import Qwen2ForCausalLM

logger = logging.getLogger(__name__)


class CpuDecode:
    """fb (DECODE) -> the final norm's hidden states [B, hidden]."""

    def __init__(self, model: LlamaForCausalLM, kv_pool: MHATokenToKVPool, kernels: Any) -> None:
        self.model = model
        self.kv_pool = kv_pool
        self.kernels = kernels
        self._plans: dict[int, Any] = {}  # batch size -> DecodePlan

    @classmethod
    def create(cls, model: torch.nn.Module, kv_pool: MHATokenToKVPool) -> Optional[CpuDecode]:
        # the C++ pass is the Llama layer exactly (Qwen2 adds q/k/v biases, which it takes);
        # subclasses of other families change the layer, and windows or capped scores it lacks
        if kv_pool.device.type != "cpu" or type(model) not in (LlamaForCausalLM, Qwen2ForCausalLM):
            return None
        if not all(m.plain for m in model.modules() if isinstance(m, Attention)):
            return None
        kernels = cpu_kernels.load()
        if kernels is None:
            return None
        inner = model.model
        dtype = inner.embed_tokens.weight.dtype
        norms = [inner.norm] + [n for layer in inner.layers for n in _norms(layer)]
        same_dtype = (
            kv_pool.dtype == dtype
            and inner.rotary.cos.dtype == dtype
            and all(n.weight.dtype == dtype for n in norms)
            and len({n.eps for n in norms}) == 1
        )
        return cls(model, kv_pool, kernels) if same_dtype and _routes_in_cpp(model) else None

    def __call__(self, fb: ForwardBatch) -> torch.Tensor:
        plan = self._plans.get(fb.batch_size)
        if plan is None:
            plan = self._plans[fb.batch_size] = self._plan(fb.batch_size)
        x = self.model.model.embed_tokens(fb.input_ids)
        return plan.forward(
            x, fb.positions, fb.out_cache_loc, fb.req_to_token, fb.req_pool_indices, fb.seq_lens
        )

    def _plan(self, rows: int) -> Any:
        inner = self.model.model
        layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            routes = [
                _route(rows, m)
                for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
            ]
            k_buf, v_buf = self.kv_pool.get_kv_buffer(attn.attn.layer_id)
            layers.append(
                (
                    layer.input_layernorm.weight,
                    layer.post_attention_layernorm.weight,
                    k_buf,
                    v_buf,
                    *routes,
                )
            )
        first = inner.layers[0].self_attn.attn
        return self.kernels.DecodePlan(
            layers,
            inner.norm.weight,
            inner.rotary.cos,
            inner.rotary.sin,
            first.num_heads,
            first.num_kv_heads,
            first.head_dim,
            float(inner.norm.eps),
            float(first.scaling),
        )


def _norms(layer: torch.nn.Module) -> list:
    return [layer.input_layernorm, layer.post_attention_layernorm]


def _route(rows: int, m: Linear) -> tuple:
    r = linear_route(rows, m.weight, m.bias, m.packed, m.quant, m.batch_invariant)
    return (r.kind, list(r.operands), r.group, r.bias)


def _routes_in_cpp(model: torch.nn.Module) -> bool:
    """Whether the C++ pass has every projection's route (not the Python-only per-row one)."""
    return all(_route(1, m)[0] != ROUTE_ROWWISE for m in model.modules() if isinstance(m, Linear))
