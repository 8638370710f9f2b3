"""SchedulePolicy: the waiting queue's order, admission, chunking, and what the next pass runs."""

from __future__ import annotations

import logging
from collections import deque
from typing import Optional

from sglang.srt.managers.io_struct import FinishReason
from sglang.srt.managers.kv_manager import KVManager
from sglang.srt.managers.req import Req
from sglang.srt.managers.schedule_batch import ScheduledChunk
from sglang.srt.model_executor.forward_batch import ForwardMode
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger(__name__)

# Extends this short (jump-forward runs, small chunks) take the decoding requests along in the
# same pass, and do not count as a prefill that makes decoding wait its turn.
SHORT_EXTEND_TOKENS = 16
# Admission keeps this many free slots per running request for the tokens it will decode next.
DECODE_HEADROOM = 8
# lpm ranks at most this many waiting requests; past this size the queue stays in fcfs order.
LPM_MAX_QUEUE = 256


class SchedulePolicy:
    """Owns the waiting queue and the running list; decides each pass's chunks.

    A pass is either an extend (prompt chunks of running and newly admitted requests, up to
    `max_prefill_tokens` in all and `chunked_prefill_size` per request) or a decode (one token
    for every running request). Extends and decodes alternate while both are wanted, so a long
    prompt cannot stall the running streams.
    """

    def __init__(self, server_args: ServerArgs, kv: KVManager, max_running: int) -> None:
        self.kv = kv
        self.max_running = max_running
        self.lpm = server_args.schedule_policy == "lpm" and not server_args.disable_radix_cache
        self.chunk_size = server_args.chunked_prefill_size
        self.pass_budget = server_args.max_prefill_tokens or server_args.chunked_prefill_size
        self.waiting: deque[Req] = deque()
        self.running: list[Req] = []
        self.last_mode: Optional[ForwardMode] = None
        # rid -> (tree version, cached prefix length): lpm scores stay valid until the tree changes
        self._scores: dict[str, tuple[int, int]] = {}

    # ---- the next pass -------------------------------------------------------------------------

    def schedule(self) -> tuple[list[ScheduledChunk], ForwardMode]:
        decode_ready = [r for r in self.running if r.pending_len == 1 and not r.finished]
        want_extend = bool(self.waiting) or any(r.pending_len > 1 for r in self.running)
        if want_extend and not (decode_ready and self.last_mode == ForwardMode.EXTEND):
            chunks = self._schedule_extend()
            if chunks and _all_short(chunks):
                taken = {id(c.req) for c in chunks}
                chunks += [_decode_chunk(r) for r in decode_ready if id(r) not in taken]
            if chunks:
                return chunks, ForwardMode.EXTEND
        if decode_ready:
            return [_decode_chunk(r) for r in decode_ready], ForwardMode.DECODE
        return [], ForwardMode.DECODE

    def ran(self, chunks: list[ScheduledChunk], mode: ForwardMode) -> None:
        """Record a pass: a short extend kept the decoding requests moving."""
        self.last_mode = ForwardMode.DECODE if _all_short(chunks) else mode

    def _schedule_extend(self) -> list[ScheduledChunk]:
        budget = self.pass_budget
        chunks: list[ScheduledChunk] = []
        for req in self.running:
            if req.pending_len > 1 and not req.finished and budget > 0:
                n = min(req.pending_len, self.chunk_size, budget)
                chunks.append(ScheduledChunk(req, req.kv.kv_len, n))
                budget -= n
        if not self._can_admit_any():
            return chunks
        self._order_waiting()
        reserved = sum(c.length for c in chunks)
        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            req = self.waiting[0]
            if not self._admit(req, budget, reserved):
                break
            self.waiting.popleft()
            self._scores.pop(req.rid, None)
            self.running.append(req)
            n = min(req.pending_len, self.chunk_size, budget)
            chunks.append(ScheduledChunk(req, req.kv.kv_len, n))
            budget -= n
            reserved += n
        return chunks

    # ---- admission -----------------------------------------------------------------------------

    def _can_admit_any(self) -> bool:
        """Nothing to rank when no request could be admitted this step anyway."""
        pool = self.kv.req_to_token_pool
        return (
            bool(self.waiting)
            and len(self.running) < self.max_running
            and (pool.available_size() > 0)
        )

    def _admit(self, req: Req, budget: int, reserved: int) -> bool:
        """Give req a pool row and its cached prefix if memory allows; False leaves it waiting.

        `reserved` slots are already promised to earlier chunks of the pass being built."""
        match = self.kv.match(req)
        prefix_len = int(match.indices.numel())
        first_chunk = min(req.seq_len - prefix_len, self.chunk_size, budget)
        need = reserved + first_chunk + DECODE_HEADROOM * (len(self.running) + 1)
        if self.kv.admit(req, match, need):
            return True
        # Nothing running will ever free memory: admit with what is there rather than hang.
        return not self.running and self.kv.admit(req, match, first_chunk)

    def _order_waiting(self) -> None:
        """lpm: longest cached prefix first (ties: arrival order); fcfs: arrival order."""
        if not self.lpm or len(self.waiting) < 2 or len(self.waiting) > LPM_MAX_QUEUE:
            return
        version = self.kv.tree_cache.version
        scored = [(-self._cached_len(r, version), i, r) for i, r in enumerate(self.waiting)]
        scored.sort(key=lambda t: (t[0], t[1]))
        self.waiting = deque(r for _, _, r in scored)

    def _cached_len(self, req: Req, version: int) -> int:
        score = self._scores.get(req.rid)
        if score is None or score[0] != version:
            score = (version, self.kv.cached_prefix_len(req))
            self._scores[req.rid] = score
        return score[1]

    # ---- queues --------------------------------------------------------------------------------

    def add(self, req: Req) -> None:
        self.waiting.append(req)

    def make_room(self, chunks: list[ScheduledChunk]) -> tuple[list[ScheduledChunk], list[Req]]:
        """Free slots for the chunks' new tokens; returns the chunks that still run and the
        requests retracted for them.

        Under pressure the most recently admitted running request yields first (back to the
        front of the queue, its computed KV left in the cache), whether or not it is in this
        pass. Only a request that runs alone and still outgrows the whole pool ends, with
        finish reason "length": the pool is its context limit.
        """
        need = sum(c.length for c in chunks)
        retracted: list[Req] = []
        while not self.kv.ensure_free(need):
            victim = self._newest_other_than_alone()
            if victim is None:
                for c in chunks:
                    self._outgrown(c.req, need)
                return [], retracted
            chunks = [c for c in chunks if c.req is not victim]
            need = sum(c.length for c in chunks)
            self.kv.retract(victim)
            self.running.remove(victim)
            self.waiting.appendleft(victim)
            retracted.append(victim)
            logger.info("KV cache full: request %s retracted, it resumes later", victim.rid)
        return chunks, retracted

    def _newest_other_than_alone(self) -> Optional[Req]:
        """The running request to retract next; None when at most one request is running."""
        live = [r for r in self.running if not r.finished]
        return live[-1] if len(live) > 1 else None

    def _outgrown(self, req: Req, need: int) -> None:
        length = len(req.output_ids)
        logger.warning(
            "request %s stops at %d tokens: alone it fills the KV pool (%d tokens; %d more needed)",
            req.rid,
            req.seq_len,
            self.kv.allocator.size,
            need,
        )
        req.finish(FinishReason.for_length(length))

    def remove_waiting(self, rid: str) -> list[Req]:
        found = [r for r in self.waiting if r.rid == rid]
        for req in found:
            self.waiting.remove(req)
            self._scores.pop(req.rid, None)
        return found

    def take_finished(self) -> list[Req]:
        """Remove and return the finished running requests."""
        done = [r for r in self.running if r.finished]
        if done:
            self.running = [r for r in self.running if not r.finished]
        return done


def _decode_chunk(req: Req) -> ScheduledChunk:
    return ScheduledChunk(req, req.kv.kv_len, 1)


def _all_short(chunks: list[ScheduledChunk]) -> bool:
    return all(c.length <= SHORT_EXTEND_TOKENS for c in chunks)
