"""How rank 0 hands each forward pass to the other ranks of its tensor-parallel group.

Every pass is two broadcasts from rank 0: a fixed header (int64 [HEADER_LEN]) that says what
follows, then one int64 payload with the pass's tensors. A worker rebuilds the same
ForwardBatch and runs the same forward; the collectives inside the model then line up.

req_to_token is a large table ([rows, context]); a pass reads only the rows of its requests up
to their seq_lens. Rank 0 keeps a copy of what each worker's table holds (`sent`) and sends,
per request, only the part of its row that differs from that copy: the whole row at a
request's first pass, one new slot at a decode step, the rewritten columns when the prefix
cache has swapped a row's slots.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from sglang.srt.distributed.parallel_state import TpGroup
from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode

OP_STOP, OP_FORWARD, OP_PING = 0, 1, 2
# header: op, mode, batch_size B, num_tokens T, return_logprob, payload length
HEADER_LEN = 6
# An idle rank 0 pings at most this often.
PING_INTERVAL_S = 1.0


class BatchSender:
    """Rank 0's side: send(fb) before its own forward; ping() while idle; stop() at the end."""

    def __init__(self, tp: TpGroup, req_to_token: torch.Tensor, device: torch.device) -> None:
        self.tp = tp
        self.device = device  # where the collectives' tensors live (cuda for NCCL)
        # [rows, context] int64: the table as every worker holds it
        self.sent = torch.zeros_like(req_to_token, device="cpu")
        self.sent_len = [0] * req_to_token.shape[0]
        self._last_message = time.monotonic()

    def send(self, fb: ForwardBatch) -> None:
        rows = fb.req_pool_indices.tolist()
        table = fb.req_to_token.cpu() if fb.req_to_token.device.type != "cpu" else fb.req_to_token
        starts, slots = [], []
        for row, seq_len in zip(rows, fb.seq_lens_cpu):
            first = self._first_change(table, row, seq_len)
            starts.append(first)
            slots.append(table[row, first:seq_len])
            self.sent[row, first:seq_len] = table[row, first:seq_len]
            self.sent_len[row] = seq_len
        b = fb.batch_size
        logprob_starts = fb.extend_logprob_start_lens_cpu or [0] * b
        top_nums = fb.top_logprobs_nums or [0] * b
        per_request = torch.tensor(
            [rows, fb.seq_lens_cpu, fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu,
             logprob_starts, top_nums, starts],
            dtype=torch.int64,
        ).flatten()  # fmt: skip
        payload = torch.cat(
            [
                fb.input_ids.cpu(),
                fb.positions.cpu(),
                fb.out_cache_loc.cpu(),
                per_request,
                *slots,
            ]
        )
        header = [OP_FORWARD, fb.mode.value, b, fb.num_tokens, int(fb.return_logprob)]
        self._broadcast_header(header + [payload.numel()])
        self.tp.broadcast(payload.to(self.device))

    def _first_change(self, table: torch.Tensor, row: int, seq_len: int) -> int:
        """The first column of row the workers' copy lacks or holds differently."""
        known = min(seq_len, self.sent_len[row])
        if known == 0:
            return 0
        differs = (table[row, :known] != self.sent[row, :known]).nonzero()
        return int(differs[0, 0]) if differs.numel() else known

    def ping(self) -> None:
        """An empty message: keeps idle workers' receives within the group's timeout and finds
        a rank that has died (its connection is closed: TensorParallelError). At most one per
        PING_INTERVAL_S."""
        if time.monotonic() - self._last_message >= PING_INTERVAL_S:
            self._broadcast_header([OP_PING, 0, 0, 0, 0, 0])

    def stop(self) -> None:
        self._broadcast_header([OP_STOP, 0, 0, 0, 0, 0])

    def _broadcast_header(self, values: list[int]) -> None:
        self._last_message = time.monotonic()
        self.tp.broadcast(torch.tensor(values, dtype=torch.int64, device=self.device))


class BatchReceiver:
    """A worker's side: recv() -> the next ForwardBatch on this rank's table, or None at stop."""

    def __init__(self, tp: TpGroup, req_to_token: torch.Tensor, device: torch.device) -> None:
        self.tp = tp
        self.req_to_token = req_to_token  # this rank's table, [rows, context] int64
        self.device = device

    def recv(self) -> Optional[ForwardBatch]:
        while True:
            header = torch.zeros(HEADER_LEN, dtype=torch.int64, device=self.device)
            op, mode, b, t, return_logprob, length = self.tp.broadcast(header).tolist()
            if op == OP_STOP:
                return None
            if op == OP_FORWARD:
                break
        payload = torch.empty(length, dtype=torch.int64, device=self.device)
        payload = self.tp.broadcast(payload).cpu()
        input_ids, positions, out_cache_loc = payload[: 3 * t].view(3, t)
        per_request = payload[3 * t : 3 * t + 7 * b].view(7, b).tolist()
        rows, seq_lens, prefix_lens, extend_lens, logprob_starts, top_nums, starts = per_request
        offset = 3 * t + 7 * b
        for row, first, seq_len in zip(rows, starts, seq_lens):
            n = seq_len - first
            self.req_to_token[row, first:seq_len] = payload[offset : offset + n].to(
                self.req_to_token.device
            )
            offset += n
        dev = self.req_to_token.device
        return ForwardBatch(
            mode=ForwardMode(mode),
            batch_size=b,
            input_ids=input_ids.to(dev),
            positions=positions.to(dev),
            out_cache_loc=out_cache_loc.to(dev),
            req_pool_indices=torch.tensor(rows, dtype=torch.int64, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=dev),
            req_to_token=self.req_to_token,
            seq_lens_cpu=seq_lens,
            extend_prefix_lens_cpu=prefix_lens,
            extend_seq_lens_cpu=extend_lens,
            return_logprob=bool(return_logprob),
            extend_logprob_start_lens_cpu=logprob_starts,
            top_logprobs_nums=top_nums,
        )
