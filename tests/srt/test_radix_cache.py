"""Tests of the radix prefix cache against a token-level reference model."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sglang.srt.mem_cache.memory_pool import TokenToKVPoolAllocator
from sglang.srt.mem_cache.radix_cache import RadixCache, TreeNode

# ---- helpers -----------------------------------------------------------------------------


class CheckedAllocator(TokenToKVPoolAllocator):
    """The real allocator plus a ledger that fails on double frees and foreign slots."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.live: set[int] = set()

    def alloc(self, n: int):
        out = super().alloc(n)
        if out is not None:
            got = set(out.tolist())
            assert not got & self.live, f"slots {got & self.live} handed out twice"
            assert 0 not in got
            self.live |= got
        return out

    def free(self, slots: torch.Tensor) -> None:
        freed = slots.tolist()
        assert len(freed) == len(set(freed)), f"duplicate slots in one free: {freed}"
        missing = set(freed) - self.live
        assert not missing, f"double free / foreign slots: {missing}"
        self.live -= set(freed)
        super().free(slots)


def path_key(node: TreeNode) -> list[int]:
    """The token sequence spelled by the path root..node."""
    parts = []
    while node.parent is not None:
        parts.append(node.key)
        node = node.parent
    return [t for part in reversed(parts) for t in part]


def tree_tokens(cache: RadixCache) -> dict[tuple[int, ...], tuple[int, int, int]]:
    """Every cached prefix -> (slot of its last token, lock_ref, last_access_time)."""
    out: dict[tuple[int, ...], tuple[int, int, int]] = {}
    stack = [(child, ()) for child in cache.root.children.values()]
    while stack:
        node, prefix = stack.pop()
        for i, slot in enumerate(node.value.tolist()):
            out[prefix + tuple(node.key[: i + 1])] = (slot, node.lock_ref, node.last_access_time)
        full = prefix + tuple(node.key)
        stack.extend((c, full) for c in node.children.values())
    return out


def check_structure(cache: RadixCache) -> None:
    stack = list(cache.root.children.items())
    while stack:
        first, node = stack.pop()
        assert len(node.key) > 0 and len(node.key) == len(node.value)
        assert node.key[0] == first
        parent = node.parent
        assert parent.children[first] is node
        if parent is not cache.root:
            assert parent.lock_ref >= node.lock_ref
            assert parent.last_access_time >= node.last_access_time
        stack.extend(node.children.items())


@dataclass
class Pending:
    """A request between its prefix match (and lock) and its insert."""

    key: list[int]
    cached: torch.Tensor  # [cached_len] slots from the tree
    new: torch.Tensor  # [len(key) - cached_len] slots the request allocated itself
    node: TreeNode


# ---- the reference model and the state machine -------------------------------------------


class RadixModel:
    """Token-level model: every cached prefix with its last token's slot, locks and time."""

    def __init__(self) -> None:
        self.slot: dict[tuple[int, ...], int] = {}
        self.lock: dict[tuple[int, ...], int] = {}
        self.time: dict[tuple[int, ...], int] = {}
        self.clock = 0

    def longest(self, key: list[int]) -> int:
        n = 0
        while n < len(key) and tuple(key[: n + 1]) in self.slot:
            n += 1
        return n

    def touch(self, key: list[int], n: int) -> None:
        self.clock += 1
        for j in range(1, n + 1):
            self.time[tuple(key[:j])] = self.clock

    def is_evictable_leaf(self, p: tuple[int, ...]) -> bool:
        parents = {q[:-1] for q in self.slot}
        return self.lock[p] == 0 and p not in parents


POOL = 24
keys = st.lists(st.integers(0, 3), max_size=8)


class RadixMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.alloc = CheckedAllocator(POOL)
        self.cache = RadixCache(self.alloc)
        self.model = RadixModel()
        self.pending: list[Pending] = []

    def _match(self, key: list[int]):
        res = self.cache.match_prefix(key)
        n = self.model.longest(key)
        assert res.indices.tolist() == [self.model.slot[tuple(key[:j])] for j in range(1, n + 1)]
        assert path_key(res.last_node) == key[:n]
        if key:
            self.model.touch(key, n)
        return res, n

    def _lock(self, key: list[int], n: int, delta: int) -> None:
        for j in range(1, n + 1):
            self.model.lock[tuple(key[:j])] += delta

    @rule(key=keys)
    def lookup(self, key):
        self._match(key)

    @rule(key=keys)
    def start_request(self, key):
        res, n = self._match(key)
        self.cache.inc_lock_ref(res.last_node)
        self._lock(key, n, +1)
        need = len(key) - n
        if self.alloc.available_size() < need:
            self._evict(need - self.alloc.available_size())
        new = self.alloc.alloc(need)
        if new is None:  # the pool is full of locked prefixes: give up like a real scheduler
            self.cache.dec_lock_ref(res.last_node)
            self._lock(key, n, -1)
            return
        self.pending.append(Pending(key, res.indices, new, res.last_node))

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def finish_request(self, data):
        req = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        value = torch.cat([req.cached, req.new])
        expect_already = self.model.longest(req.key)
        already = self.cache.insert(req.key, value)
        assert already == expect_already
        cached_len = len(req.cached)
        assert already >= cached_len, "a locked prefix vanished from the tree"
        for j in range(1, len(req.key) + 1):
            p = tuple(req.key[:j])
            if p not in self.model.slot:
                self.model.slot[p] = int(value[j - 1])
                self.model.lock[p] = 0
        self.model.touch(req.key, len(req.key))
        self.alloc.free(value[cached_len:already])  # the insert contract
        self.cache.dec_lock_ref(req.node)
        self._lock(req.key, cached_len, -1)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def abort_request(self, data):
        req = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        self.alloc.free(req.new)
        self.cache.dec_lock_ref(req.node)
        self._lock(req.key, len(req.cached), -1)

    @rule(n=st.integers(0, POOL + 4))
    def evict(self, n):
        self._evict(n)

    def _evict(self, n: int) -> None:
        model = self.model
        before = dict(model.slot)
        evictable_leaves = [p for p in before if model.is_evictable_leaf(p)]
        freed = self.cache.evict(n)
        after = tree_tokens(self.cache)
        removed = set(before) - set(after)
        assert set(after) <= set(before)
        assert freed == len(removed)
        for p in removed:
            assert model.lock[p] == 0, f"locked prefix {p} was evicted"
            del model.slot[p], model.lock[p]
        if n > 0 and freed < n:
            assert all(model.lock[p] > 0 for p in model.slot), "gave up with evictable tokens"
        if removed:
            assert evictable_leaves
            last = max(model.time[p] for p in removed)
            # LRU: nothing still evictable is older than what was evicted
            assert all(model.time[p] >= last for p in model.slot if model.is_evictable_leaf(p))
            # whole nodes are freed, but no node beyond the one that reached n
            assert sum(model.time[p] < last for p in removed) < max(n, 1)
        for p in removed:
            del model.time[p]

    @precondition(lambda self: not self.pending)
    @rule()
    def reset(self):
        self.cache.reset()
        self.model = RadixModel()
        self.model.clock = 0
        assert self.alloc.live == set()
        assert self.alloc.available_size() == POOL

    @invariant()
    def tree_matches_model(self):
        check_structure(self.cache)
        got = tree_tokens(self.cache)
        want = {
            p: (self.model.slot[p], self.model.lock[p], self.model.time[p]) for p in self.model.slot
        }
        assert got == want

    @invariant()
    def sizes_and_slots_are_consistent(self):
        locked = sum(1 for c in self.model.lock.values() if c > 0)
        assert self.cache.protected_size() == locked
        assert self.cache.evictable_size() == len(self.model.slot) - locked
        assert self.cache.total_size() == len(self.model.slot)
        in_tree = list(self.model.slot.values())
        outstanding = [s for r in self.pending for s in r.new.tolist()]
        assert len(set(in_tree)) == len(in_tree), "a slot is held by two tree tokens"
        assert set(in_tree) | set(outstanding) == self.alloc.live
        assert len(in_tree) + len(outstanding) == len(self.alloc.live)
        assert self.alloc.available_size() == POOL - len(self.alloc.live)

    def teardown(self):
        for req in self.pending:
            self.cache.dec_lock_ref(req.node)
        assert self.cache.protected_size() == 0


RadixMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRadixAgainstModel = RadixMachine.TestCase


# ---- plain unit tests --------------------------------------------------------------------


def _cache(size: int = 64) -> tuple[RadixCache, CheckedAllocator]:
    alloc = CheckedAllocator(size)
    return RadixCache(alloc), alloc


def _insert_fresh(cache: RadixCache, alloc: CheckedAllocator, key: list[int]) -> torch.Tensor:
    """Insert key as a request with no cached prefix would; return its slots."""
    value = alloc.alloc(len(key))
    already = cache.insert(key, value)
    alloc.free(value[:already])
    return value


def test_match_splits_a_node_inside_and_returns_exact_slots():
    cache, alloc = _cache()
    value = _insert_fresh(cache, alloc, [1, 2, 3, 4, 5])
    assert len(cache.root.children) == 1 and len(cache.root.children[1].key) == 5

    res = cache.match_prefix([1, 2, 3, 9])
    assert res.indices.tolist() == value[:3].tolist()
    assert res.last_node.key == [1, 2, 3]
    assert list(res.last_node.children) == [4]
    assert res.last_node.children[4].key == [4, 5]
    assert cache.total_size() == 5


def test_insert_returns_already_cached_length_and_branches():
    cache, alloc = _cache()
    first = _insert_fresh(cache, alloc, [1, 2, 3, 4])
    second = alloc.alloc(5)
    already = cache.insert([1, 2, 7, 8, 9], second)
    assert already == 2
    alloc.free(second[:2])  # this caller matched nothing earlier, so it frees the duplicate
    assert cache.total_size() == 7
    node = cache.root.children[1]
    assert node.key == [1, 2] and sorted(node.children) == [3, 7]
    assert cache.match_prefix([1, 2, 7, 8, 9]).indices.tolist() == (
        first[:2].tolist() + second[2:].tolist()
    )
    assert cache.insert([1, 2], first[:2]) == 2  # fully present: nothing new is owned


def test_insert_clones_the_value():
    cache, alloc = _cache()
    row = torch.zeros(8, dtype=torch.int64)  # like a req_to_token row that gets reused
    row[:3] = alloc.alloc(3)
    expected = row[:3].tolist()
    cache.insert([5, 6, 7], row[:3])
    row.fill_(0)
    assert cache.match_prefix([5, 6, 7]).indices.tolist() == expected


def test_evict_takes_least_recently_used_leaf_first():
    cache, alloc = _cache()
    _insert_fresh(cache, alloc, [1, 1, 1])
    b = _insert_fresh(cache, alloc, [2, 2, 2])
    _insert_fresh(cache, alloc, [3, 3, 3])
    cache.match_prefix([1, 1, 1])  # [1,1,1] is now newer than [2,2,2] and [3,3,3]
    assert cache.evict(1) == 3
    assert cache.match_prefix([2, 2, 2]).indices.numel() == 0
    assert b.tolist()[0] not in alloc.live
    assert cache.evict(1) == 3  # [3,3,3] next
    assert cache.match_prefix([3]).indices.numel() == 0
    assert cache.match_prefix([1, 1, 1]).indices.numel() == 3


def test_match_inside_a_node_leaves_the_unmatched_tail_older():
    cache, alloc = _cache()
    _insert_fresh(cache, alloc, [1, 1, 1])
    _insert_fresh(cache, alloc, [2, 2])
    cache.match_prefix([1, 1])  # splits [1,1] (now newest) from the old tail [1]
    assert cache.evict(1) == 1  # the tail [1] is the least recently used leaf
    assert cache.match_prefix([1, 1, 1]).indices.numel() == 2
    assert cache.match_prefix([2, 2]).indices.numel() == 2


def test_evict_cascades_to_parents_and_skips_locked_paths():
    cache, alloc = _cache()
    _insert_fresh(cache, alloc, [1, 2, 3])
    _insert_fresh(cache, alloc, [1, 2, 4])
    _insert_fresh(cache, alloc, [9, 9])
    locked = cache.match_prefix([9, 9]).last_node
    cache.inc_lock_ref(locked)
    assert cache.protected_size() == 2 and cache.evictable_size() == 4
    assert cache.evict(100) == 4  # both leaves, then their parent [1, 2]
    assert cache.total_size() == 2 and list(cache.root.children) == [9]
    cache.dec_lock_ref(locked)
    assert cache.evictable_size() == 2
    assert cache.evict(1) == 2
    assert alloc.live == set()


def test_locks_nest_and_split_nodes_inherit_them():
    cache, alloc = _cache()
    _insert_fresh(cache, alloc, [1, 2, 3, 4])
    node = cache.match_prefix([1, 2, 3, 4]).last_node
    cache.inc_lock_ref(node)
    cache.inc_lock_ref(node)
    upper = cache.match_prefix([1, 2]).last_node  # splits the locked node
    assert upper.lock_ref == 2 and node.lock_ref == 2
    cache.dec_lock_ref(node)
    assert cache.evict(4) == 0
    cache.dec_lock_ref(node)
    assert cache.evictable_size() == 4 and cache.protected_size() == 0
    with pytest.raises(AssertionError):
        cache.dec_lock_ref(node)


def test_reset_frees_everything_and_refuses_when_locked():
    cache, alloc = _cache()
    _insert_fresh(cache, alloc, [1, 2])
    cache.record_lookup(10, 4)
    node = cache.match_prefix([1, 2]).last_node
    cache.inc_lock_ref(node)
    with pytest.raises(AssertionError):
        cache.reset()
    cache.dec_lock_ref(node)
    cache.reset()
    assert alloc.live == set() and cache.total_size() == 0 and cache.hit_rate() == 0.0
    assert cache.match_prefix([1, 2]).last_node is cache.root


def test_hit_rate_accumulates():
    cache, _ = _cache()
    assert cache.hit_rate() == 0.0
    cache.record_lookup(10, 0)
    cache.record_lookup(30, 20)
    assert cache.hit_rate() == pytest.approx(0.5)


def test_disabled_cache_caches_nothing_and_frees_inserted_slots():
    alloc = CheckedAllocator(8)
    cache = RadixCache(alloc, disable=True)
    value = alloc.alloc(3)
    assert cache.insert([1, 2, 3], value) == 0
    assert alloc.live == set()
    res = cache.match_prefix([1, 2, 3])
    assert res.indices.numel() == 0 and res.last_node is cache.root
    assert cache.total_size() == 0 and cache.evict(5) == 0


def test_empty_key_matches_root():
    cache, alloc = _cache()
    _insert_fresh(cache, alloc, [1])
    res = cache.match_prefix([])
    assert res.last_node is cache.root and res.indices.dtype == torch.int64
    assert res.indices.numel() == 0


def test_pretty_print_lists_nodes():
    cache, alloc = _cache()
    _insert_fresh(cache, alloc, [1, 2, 3])
    _insert_fresh(cache, alloc, [1, 5])
    buf = io.StringIO()
    cache.pretty_print(file=buf)
    text = buf.getvalue()
    assert "[1] len=1" in text and "[2, 3] len=2" in text and "total=4" in text
