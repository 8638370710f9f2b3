"""EmbeddingProcessor: an embedding model's pass -> each request's pooled embedding.

An embedding request is prefill only: each chunk's hidden states are folded into the
request's PoolState (a sum for mean pooling, the first row for CLS, the newest last row for
last-token pooling), and at its last chunk the request gets its embedding and ends with finish
reason length 0, as in SGLang. Nothing is sampled.
"""

from __future__ import annotations

import torch

from sglang.srt.layers.pooler import Pooler
from sglang.srt.managers.io_struct import FinishReason
from sglang.srt.managers.schedule_batch import ScheduledChunk


class EmbeddingProcessor:
    """The only writer of `req.pooling` after admission."""

    def __init__(self, pooler: Pooler) -> None:
        self.pooler = pooler

    def process(self, chunks: list[ScheduledChunk], hidden: torch.Tensor) -> None:
        """Fold a pass's hidden states [T, D] (the chunks' rows in order) into its requests."""
        offset = 0
        for c in chunks:
            rows = hidden[offset : offset + c.length]  # [c.length, D]
            offset += c.length
            req = c.req
            if req.finished:
                continue
            assert req.pooling is not None, f"request {req.rid} is not an embedding request"
            self.pooler.fold(req.pooling, rows, c.start)
            if c.reaches_end:
                req.pooling.embedding = self.pooler.finish(req.pooling).tolist()
                req.finish(FinishReason.for_length(0))
