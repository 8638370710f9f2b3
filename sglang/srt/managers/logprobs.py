"""LogprobCollector: input logprobs stitched across chunks, output logprobs, and their deltas."""

from __future__ import annotations

from typing import Optional

import torch

from sglang.srt.managers.io_struct import ReqOutput, TokenLogprob
from sglang.srt.managers.req import Req
from sglang.srt.managers.schedule_batch import ScheduledChunk, logprob_offset
from sglang.srt.model_executor.forward_batch import LogitsOutput


class LogprobCollector:
    """The only writer of `req.logprob`."""

    def collect_input(self, chunks: list[ScheduledChunk], out: LogitsOutput) -> None:
        """Append the prompt logprobs a pass computed, chunk by chunk."""
        for i, c in enumerate(chunks):
            req = c.req
            if not req.wants_input_logprobs:
                continue
            lp = req.logprob
            if c.start == 0 and lp.start_len == 0:
                lp.input_token.append(TokenLogprob(None, req.fill_ids[0]))
                lp.input_top.append(None)
            first_pos = c.start + logprob_offset(c) + 1
            ids = req.fill_ids[first_pos : c.start + c.length]
            values = out.input_token_logprobs[i] if out.input_token_logprobs else []
            lp.input_token.extend(TokenLogprob(v, t) for v, t in zip(values, ids))
            if lp.top_num > 0 and out.input_top_logprobs:
                lp.input_top.extend(_tops(t) for t in out.input_top_logprobs[i])
            elif lp.top_num == 0:
                lp.input_top.extend([None] * len(ids))
            if c.reaches_end:
                lp.input_done = True
            elif lp.start_len <= c.start + c.length < len(req.origin_input_ids):
                self._stitch_boundary(req, out.next_token_logits[i], c.start + c.length)

    def _stitch_boundary(self, req: Req, logits: torch.Tensor, pos: int) -> None:
        """The first token of the next chunk is scored by this chunk's last hidden state."""
        # logits: [V]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        token = req.fill_ids[pos]
        lp = req.logprob
        lp.input_token.append(TokenLogprob(float(logprobs[token]), token))
        if lp.top_num > 0:
            values, ids = logprobs.topk(lp.top_num)
            lp.input_top.append([TokenLogprob(v, t) for v, t in zip(values.tolist(), ids.tolist())])
        else:
            lp.input_top.append(None)

    def record_output(
        self, req: Req, token: int, logprob: float, top: Optional[list[tuple[float, int]]]
    ) -> None:
        req.logprob.output_token.append(TokenLogprob(logprob, token))
        req.logprob.output_top.append(_tops(top or []))

    def attach(self, req: Req, out: ReqOutput) -> None:
        """Put the entries not sent yet into `out` (the input ones once, when complete)."""
        lp = req.logprob
        if not lp.input_sent and (lp.input_done or req.finished):
            out.input_token_logprobs = lp.input_token
            out.input_top_logprobs = lp.input_top
            lp.input_sent = True
        out.output_token_logprobs = lp.output_token[lp.output_sent :]
        out.output_top_logprobs = lp.output_top[lp.output_sent :]
        lp.output_sent = len(lp.output_token)


def _tops(pairs: list[tuple[float, int]]) -> list[TokenLogprob]:
    return [TokenLogprob(v, t) for v, t in pairs]
