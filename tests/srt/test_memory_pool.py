"""Tests of the request->token table, the KV slot allocator and the KV buffers."""

from __future__ import annotations

import torch

from sglang.srt.mem_cache.memory_pool import (
    MHATokenToKVPool,
    ReqToTokenPool,
    TokenToKVPoolAllocator,
)


def test_alloc_hands_out_distinct_slots_never_zero():
    alloc = TokenToKVPoolAllocator(size=10)
    a = alloc.alloc(4)
    b = alloc.alloc(6)
    slots = torch.cat([a, b]).tolist()
    assert a.dtype == torch.int64
    assert sorted(slots) == list(range(1, 11))
    assert alloc.available_size() == 0


def test_alloc_returns_none_when_full_and_keeps_state():
    alloc = TokenToKVPoolAllocator(size=5)
    assert alloc.alloc(6) is None
    assert alloc.available_size() == 5
    assert alloc.can_alloc(5) and not alloc.can_alloc(6)
    first = alloc.alloc(3)
    assert alloc.alloc(3) is None
    assert alloc.available_size() == 2
    assert first is not None and len(first) == 3


def test_freed_slots_are_reused():
    alloc = TokenToKVPoolAllocator(size=4)
    a = alloc.alloc(4)
    alloc.free(a[:2])
    assert alloc.available_size() == 2
    b = alloc.alloc(2)
    assert sorted(b.tolist()) == sorted(a[:2].tolist())
    assert alloc.alloc(1) is None


def test_free_of_empty_tensor_is_a_no_op_and_clear_restores_all():
    alloc = TokenToKVPoolAllocator(size=3)
    alloc.alloc(2)
    alloc.free(torch.empty(0, dtype=torch.int64))
    assert alloc.available_size() == 1
    alloc.clear()
    assert alloc.available_size() == 3
    assert 0 not in alloc.alloc(3).tolist()


def test_alloc_result_is_a_copy_not_a_view_of_the_free_list():
    alloc = TokenToKVPoolAllocator(size=6)
    a = alloc.alloc(3)
    a.fill_(99)  # scribbling on the returned tensor must not corrupt the free list
    b = alloc.alloc(3)
    assert 99 not in b.tolist()


def test_many_alloc_free_rounds_never_duplicate_live_slots():
    alloc = TokenToKVPoolAllocator(size=16)
    gen = torch.Generator().manual_seed(0)
    live: list[torch.Tensor] = []
    for _ in range(200):
        n = int(torch.randint(1, 6, (1,), generator=gen))
        got = alloc.alloc(n)
        if got is None:
            alloc.free(live.pop(0))
            continue
        live.append(got)
        flat = torch.cat(live).tolist()
        assert len(flat) == len(set(flat)), "a live slot was handed out twice"
        assert 0 not in flat
        assert alloc.available_size() + len(flat) == 16


def test_req_to_token_pool_rows():
    pool = ReqToTokenPool(size=2, max_context_len=8)
    r0, r1 = pool.alloc(), pool.alloc()
    assert {r0, r1} == {0, 1}
    assert pool.alloc() is None
    pool.free(r0)
    assert pool.available_size() == 1
    assert pool.alloc() == r0
    assert pool.req_to_token.shape == (2, 8)


def test_kv_pool_set_and_get():
    pool = MHATokenToKVPool(size=4, dtype=torch.float32, num_kv_heads=2, head_dim=3, num_layers=2)
    k = torch.arange(12, dtype=torch.float32).view(2, 2, 3)  # [T=2, H, D]
    v = -k
    loc = torch.tensor([1, 3])
    pool.set_kv_buffer(1, loc, k, v)
    kb, vb = pool.get_kv_buffer(1)
    assert torch.equal(kb[loc], k) and torch.equal(vb[loc], v)
    assert torch.count_nonzero(pool.get_kv_buffer(0)[0]) == 0
    assert kb.shape == (5, 2, 3)
    assert MHATokenToKVPool.bytes_per_token(torch.float16, 3, 64, 30) == 2 * 30 * 3 * 64 * 2
