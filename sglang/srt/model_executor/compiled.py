"""The compiled decode step: torch.compile (inductor) of model + lm_head for DECODE passes.

One compiled graph serves every batch size and context length (dynamic shapes; dynamo keeps
separate graphs for batch 1 and for batches past QUANT_MAX_ROWS, where the linear layers
switch kernels). Attention is PagedDecodeBackend: inductor fuses the KV slot lookup into the
attention reductions, so the paged pool is read in place. Inductor's compiled code is cached
on disk (torch's FX graph and code caches, under $TORCHINDUCTOR_CACHE_DIR), so a second
start of the same model only reloads it.

If compiling or running a compiled graph fails, the runner logs one line and goes on eager.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from sglang.srt.layers.attention import (
    PagedDecodeBackend,
    PagedDecodeMetadata,
    decode_slots_and_bias,
    register_decode_op,
)
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
from sglang.srt.model_executor.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)


@dataclass
class _DecodeInputs:
    """What the model's attention layers read of a DECODE pass inside the compiled graph.

    NOTE: one object for the runner's lifetime, its tensors replaced before each step, so
    dynamo sees the same structure every call and treats the tensors as graph inputs.
    """

    out_cache_loc: Optional[torch.Tensor]
    attn_metadata: PagedDecodeMetadata


class CompiledDecode:
    """model(input_ids, positions) -> next-token logits [B, V] float32, compiled for DECODE."""

    def __init__(
        self,
        model: nn.Module,
        lm_head: Callable[[torch.Tensor], torch.Tensor],
        kv_pool: MHATokenToKVPool,
    ) -> None:
        self.model = model
        self.lm_head = lm_head
        meta = PagedDecodeMetadata(PagedDecodeBackend(kv_pool), None, None)
        self.inputs = _DecodeInputs(None, meta)
        # the C++ decode kernel where it is built, else inductor's own attention code
        self.kernel = kv_pool.device.type == "cpu" and register_decode_op()
        self.failed: Optional[str] = None
        # emulate_precision_casts: round where eager rounds (bf16 casts), so the compiled step
        # gives the eager forward's numbers, not more precise ones that differ from them
        self._fn = torch.compile(
            self._step,
            dynamic=True,
            fullgraph=True,
            options={"emulate_precision_casts": True},
        )

    def _step(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids, positions, self.inputs)
        return self.lm_head(hidden).float()

    def __call__(self, fb: ForwardBatch) -> Optional[torch.Tensor]:
        """Logits of a DECODE pass, or None when the compiled path is off (failed earlier)."""
        if self.failed is not None:
            return None
        meta = self.inputs.attn_metadata
        if self.kernel:
            meta.req_to_token = fb.req_to_token
            meta.req_pool_indices = fb.req_pool_indices
            meta.seq_lens = fb.seq_lens
        else:
            width = max(fb.seq_lens_cpu)
            meta.slots, meta.bias = decode_slots_and_bias(
                fb.req_to_token, fb.req_pool_indices, fb.seq_lens, width
            )
        self.inputs.out_cache_loc = fb.out_cache_loc
        try:
            return self._fn(fb.input_ids, fb.positions)
        except Exception as e:  # noqa: BLE001 - any compiler failure falls back to eager
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            logger.warning("torch.compile of the decode step failed, running eager: %s", self.failed)
            return None
