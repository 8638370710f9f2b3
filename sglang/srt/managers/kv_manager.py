"""KVManager: the only writer of a request's KV state, and the only user of the radix cache's
ownership rule (who frees which slots when a request's tokens are cached)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import torch

from sglang.srt.managers.req import Req
from sglang.srt.mem_cache.radix_cache import MatchResult, RadixCache

if TYPE_CHECKING:
    from sglang.srt.managers.schedule_batch import ScheduledChunk
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPoolAllocator

logger = logging.getLogger(__name__)


class KVManager:
    """Pool rows, KV slots and the radix cache for the scheduler's requests.

    A request's life: `admit` (a pool row, its cached prefix locked) -> `allocate` slots for
    each pass -> `cache(req, finished=False)` after prefill chunks, so later requests share
    them -> `cache(req, finished=True)` when it ends, or `retract` under memory pressure.
    """

    def __init__(
        self,
        req_to_token_pool: ReqToTokenPool,
        allocator: TokenToKVPoolAllocator,
        disable_radix_cache: bool,
    ) -> None:
        self.req_to_token_pool = req_to_token_pool
        self.allocator = allocator
        # NOTE: with the cache disabled, RadixCache caches nothing and frees what it is given;
        # this class needs no branch of its own for that.
        self.tree_cache = RadixCache(allocator, disable=disable_radix_cache)

    @property
    def table(self) -> torch.Tensor:
        return self.req_to_token_pool.req_to_token

    # ---- admission -----------------------------------------------------------------------------

    def match(self, req: Req) -> MatchResult:
        return self.tree_cache.match_prefix(req.fill_ids[: req.max_prefix_len()])

    def cached_prefix_len(self, req: Req) -> int:
        """How much of req's prefix is cached, without touching the tree (for queue order)."""
        return self.tree_cache.peek_prefix_len(req.fill_ids[: req.max_prefix_len()])

    def admit(self, req: Req, match: MatchResult, need: int) -> bool:
        """Give req a pool row and its cached prefix if `need` free slots can be had."""
        self.tree_cache.inc_lock_ref(match.last_node)
        if not self.ensure_free(need) or self.req_to_token_pool.available_size() == 0:
            self.tree_cache.dec_lock_ref(match.last_node)
            return False
        prefix_len = int(match.indices.numel())
        kv = req.kv
        kv.pool_idx = self.req_to_token_pool.alloc()
        self.table[kv.pool_idx, :prefix_len] = match.indices
        kv.kv_len = kv.cached_len = prefix_len
        kv.last_node = match.last_node
        if not kv.admitted:
            kv.admitted = True
            kv.cached_tokens = prefix_len
            self.tree_cache.record_lookup(len(req.origin_input_ids), prefix_len)
        return True

    def ensure_free(self, n: int) -> bool:
        """Evict from the cache until n slots are free; False if that is not possible."""
        short = n - self.allocator.available_size()
        if short > 0:
            self.tree_cache.evict(short)
        return self.allocator.available_size() >= n

    # ---- passes --------------------------------------------------------------------------------

    def allocate(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """Slots for the chunks' new tokens, written into their rows; out_cache_loc [T]."""
        loc = self.allocator.alloc(sum(c.length for c in chunks))
        assert loc is not None, "the caller checked ensure_free first"
        offset = 0
        for c in chunks:
            self.table[c.req.kv.pool_idx, c.start : c.start + c.length] = loc[
                offset : offset + c.length
            ]
            offset += c.length
        return loc

    def advance(self, chunks: list[ScheduledChunk]) -> None:
        """The chunks' KV is computed."""
        for c in chunks:
            c.req.kv.kv_len = c.start + c.length

    # ---- handing KV to the cache -----------------------------------------------------------------

    def cache(self, req: Req, finished: bool) -> None:
        """Insert req's computed tokens into the radix tree.

        NOTE: the ownership rule of `RadixCache.insert`: slots [cached_len, already) duplicate
        ones the tree held before; they were this request's own, so this frees them. A finished
        request then gives up its row and lock; an unfinished one re-points its row at the
        tree's slots and moves its lock to the new last node.
        """
        kv = req.kv
        if kv.pool_idx is None:
            return
        if not finished and self.tree_cache.disable:
            return  # nothing to share; keep the slots until the request ends
        key = req.fill_ids[: kv.kv_len]
        slots = self.table[kv.pool_idx, : kv.kv_len].clone()
        already = self.tree_cache.insert(key, slots)
        if already > kv.cached_len:
            self.allocator.free(slots[kv.cached_len : already])
        if finished:
            self.tree_cache.dec_lock_ref(kv.last_node)
            self.req_to_token_pool.free(kv.pool_idx)
            kv.pool_idx, kv.last_node = None, None
            return
        match = self.tree_cache.match_prefix(key)
        self.table[kv.pool_idx, : len(match.indices)] = match.indices
        self.tree_cache.inc_lock_ref(match.last_node)
        self.tree_cache.dec_lock_ref(kv.last_node)
        kv.last_node, kv.cached_len = match.last_node, int(match.indices.numel())

    def release(self, req: Req) -> None:
        """A request that ends (finished or aborted): its KV goes to the cache, its row back."""
        self.cache(req, finished=True)

    def retract(self, req: Req) -> None:
        """Free a running request's memory (its computed KV stays shareable in the cache); it
        starts again from its cached prefix when readmitted."""
        self.release(req)
        req.kv.kv_len, req.kv.cached_len = 0, 0

    # ---- whole cache -----------------------------------------------------------------------------

    def flush(self) -> None:
        self.tree_cache.reset()

    def stats(self) -> dict[str, Optional[float]]:
        return {
            "max_total_tokens": self.allocator.size,
            "available_kv_tokens": self.allocator.available_size(),
            "cached_tokens_in_tree": self.tree_cache.total_size(),
            "cache_hit_rate": self.tree_cache.hit_rate(),
        }
