"""CacheAwareRouter and PrefixTrie: prefix affinity, load balance, no starvation, eviction."""

from __future__ import annotations

import random

import pytest

from sglang.srt.managers.dp_router import CacheAwareRouter, PrefixTrie, RouterConfig
from sglang.srt.server_args import ServerArgs


def test_trie_matches_longest_prefix() -> None:
    trie = PrefixTrie(max_tokens=100)
    trie.insert([1, 2, 3, 4])
    assert trie.match([1, 2, 3, 4, 5]) == 4
    assert trie.match([1, 2, 9]) == 2
    assert trie.match([7]) == 0
    trie.insert([1, 2, 5])
    assert trie.size == 5  # the shared [1, 2] is held once


def test_trie_evicts_least_recently_used_first() -> None:
    trie = PrefixTrie(max_tokens=10)
    trie.insert([1, 2, 3, 4, 5])  # older
    trie.insert([6, 7, 8, 9, 10])
    trie.insert([11, 12])  # 12 > 10: evicts down to 9, the oldest branch's tail first
    assert trie.size <= 10
    assert trie.match([6, 7, 8, 9, 10]) == 5 and trie.match([11, 12]) == 2
    assert trie.match([1, 2, 3, 4, 5]) < 5


def test_trie_eviction_keeps_size_bounded() -> None:
    rng = random.Random(0)
    trie = PrefixTrie(max_tokens=200)
    for _ in range(100):
        trie.insert([rng.randrange(50) for _ in range(rng.randrange(1, 30))])
        assert trie.size <= 200
    assert trie.size == len(trie._nodes())


def test_shared_prefix_requests_go_to_the_same_replica() -> None:
    router = CacheAwareRouter(2)
    prefix_a, prefix_b = list(range(100, 150)), list(range(200, 250))
    first_a = router.pick(prefix_a + [1])
    first_b = router.pick(prefix_b + [1])
    assert first_a != first_b  # a new prefix goes to the replica with the least cached
    for i in range(2, 8):  # interleaved, and released, so load stays balanced
        assert router.pick(prefix_a + [i]) == first_a
        assert router.pick(prefix_b + [i]) == first_b
        router.release(first_a)
        router.release(first_b)


def test_short_match_counts_as_a_new_prefix() -> None:
    router = CacheAwareRouter(2, RouterConfig(cache_threshold=0.5))
    rank = router.pick([1, 2, 3, 4, 5, 6, 7, 8])
    # 2 of 8 tokens match: under the threshold, so the empty replica takes it
    assert router.pick([1, 2, 30, 40, 50, 60, 70, 80]) != rank


def test_imbalance_sends_requests_to_the_least_loaded() -> None:
    router = CacheAwareRouter(2, RouterConfig(balance_abs_threshold=2, balance_rel_threshold=1.5))
    prefix = list(range(10, 60))
    hot = router.pick(prefix + [0])
    for i in range(1, 3):  # up to pending 2 vs 0 the load is within the threshold
        assert router.pick(prefix + [i]) == hot
    assert router.is_imbalanced()
    assert router.pick(prefix + [99]) != hot  # the cache affinity gives way to the load
    assert sorted(router.pending) == [1, 3]


def test_no_replica_starves_under_one_hot_prefix() -> None:
    router = CacheAwareRouter(3, RouterConfig(balance_abs_threshold=1))
    prefix = list(range(50))
    used = {router.pick(prefix + [i]) for i in range(12)}  # none released: load grows
    assert used == {0, 1, 2}
    assert max(router.pending) - min(router.pending) <= 2


def test_ties_rotate_between_replicas() -> None:
    router = CacheAwareRouter(2)
    ranks = []
    for _ in range(4):  # the same empty-prompt request, released each time
        ranks.append(router.pick([]))
        router.release(ranks[-1])
    assert set(ranks) == {0, 1}


def test_release_and_clear() -> None:
    router = CacheAwareRouter(2)
    rank = router.pick([1, 2, 3])
    router.release(rank)
    assert router.pending == [0, 0] and router.routed[rank] == 1
    with pytest.raises(AssertionError, match="no pending request"):
        router.release(rank)
    router.clear()
    assert all(t.size == 0 for t in router.tries)


def test_bad_replica_count() -> None:
    with pytest.raises(ValueError, match="num_replicas=0"):
        CacheAwareRouter(0)


@pytest.mark.parametrize(
    "field, value",
    [("nnodes", 2), ("node_rank", 1), ("dist_init_addr", "10.0.0.1:5000")],
)
def test_multi_node_flags_without_tensor_parallelism_say_so(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field}="):
        ServerArgs(**{field: value})
    assert ServerArgs(tp_size=2).tp_size == 2  # tests/srt/test_tensor_parallel.py


def test_dp_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="dp_size=0"):
        ServerArgs(dp_size=0)
    assert ServerArgs(dp_size=2, tp_size=1, nnodes=1).dp_size == 2
