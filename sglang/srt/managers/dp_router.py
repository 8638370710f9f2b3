"""CacheAwareRouter: picks the data-parallel replica for a request by longest cached prefix,
falling back to the least loaded replica when the load is out of balance.

Each replica's cache is approximated by a token trie of the prompts recently routed to it (the
replica's own radix cache is in another process); the trie is capped in size and forgets its
least recently used branches, as the replica's cache evicts.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from typing import Optional, Sequence


@dataclasses.dataclass
class RouterConfig:
    """Knobs of the policy (the same ideas as sglang-router's cache_aware policy)."""

    # A match shorter than this share of the prompt does not count as a cache hit: the
    # request goes to the replica with the least cached (the most room), as a new prefix.
    cache_threshold: float = 0.3
    # The load is out of balance when max - min pending requests exceeds abs_threshold and
    # max exceeds rel_threshold * min; then requests go to the least loaded replica.
    balance_abs_threshold: int = 4
    balance_rel_threshold: float = 1.5
    max_tree_tokens: int = 1 << 18  # per replica; beyond it the oldest branches are forgotten


class _Node:
    __slots__ = ("children", "last_used", "parent", "token")

    def __init__(self, last_used: int, parent: Optional[_Node] = None, token: int = -1) -> None:
        self.children: dict[int, _Node] = {}
        self.last_used = last_used
        self.parent = parent  # None only for the root
        self.token = token  # the key of this node in parent.children


class PrefixTrie:
    """The token prefixes routed to one replica, one node per token, with LRU eviction."""

    def __init__(self, max_tokens: int) -> None:
        assert max_tokens > 0, f"max_tokens={max_tokens}: must be positive"
        self.max_tokens = max_tokens
        self.size = 0  # nodes below the root = tokens held
        self._root = _Node(0)
        self._clock = itertools.count(1)

    def match(self, tokens: Sequence[int]) -> int:
        """Length of the longest prefix of `tokens` held here."""
        node, depth = self._root, 0
        for t in tokens:
            child = node.children.get(t)
            if child is None:
                break
            node, depth = child, depth + 1
        return depth

    def insert(self, tokens: Sequence[int]) -> None:
        """Hold `tokens` (marking the whole path as just used), then evict down to the cap."""
        now = next(self._clock)
        node = self._root
        for t in tokens:
            child = node.children.get(t)
            if child is None:
                child = node.children[t] = _Node(now, node, t)
                self.size += 1
            child.last_used = now
            node = child
        if self.size > self.max_tokens:
            self._evict(self.size - self.max_tokens * 9 // 10)

    def clear(self) -> None:
        self._root.children.clear()
        self.size = 0

    def _evict(self, count: int) -> None:
        """Remove `count` nodes, least recently used leaves first (a parent left childless
        becomes a leaf in turn)."""
        heap = [(n.last_used, id(n), n) for n in self._nodes() if not n.children]
        heapq.heapify(heap)
        while count > 0 and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None, "the root is never a candidate"
            del parent.children[leaf.token]
            self.size -= 1
            count -= 1
            if not parent.children and parent is not self._root:
                heapq.heappush(heap, (parent.last_used, id(parent), parent))

    def _nodes(self) -> list[_Node]:
        out, stack = [], [self._root]
        while stack:
            node = stack.pop()
            out.extend(node.children.values())
            stack.extend(node.children.values())
        return out


class CacheAwareRouter:
    """Replica choice for data parallelism: `pick(tokens)` -> rank, `release(rank)` when done."""

    def __init__(self, num_replicas: int, config: Optional[RouterConfig] = None) -> None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas={num_replicas}: must be at least 1")
        self.config = config or RouterConfig()
        self.tries = [PrefixTrie(self.config.max_tree_tokens) for _ in range(num_replicas)]
        self.pending = [0] * num_replicas  # requests routed and not yet released
        self.routed = [0] * num_replicas  # requests routed since start (for server info)
        self._turn = itertools.count()  # rotates ties, so no replica is always passed over

    @property
    def num_replicas(self) -> int:
        return len(self.tries)

    def pick(self, tokens: Sequence[int]) -> int:
        """Choose the replica for a prompt, count it as pending there and remember its prefix."""
        rank = self._choose(tokens)
        self.tries[rank].insert(tokens)
        self.pending[rank] += 1
        self.routed[rank] += 1
        return rank

    def release(self, rank: int) -> None:
        """A request routed to `rank` finished (or was aborted)."""
        assert self.pending[rank] > 0, f"replica {rank} has no pending request to release"
        self.pending[rank] -= 1

    def clear(self) -> None:
        """Forget every cached prefix (the replicas' caches were flushed)."""
        for trie in self.tries:
            trie.clear()

    def _choose(self, tokens: Sequence[int]) -> int:
        if self.is_imbalanced():
            return self._least_loaded()
        matches = [trie.match(tokens) for trie in self.tries]
        best = max(matches)
        if tokens and best > self.config.cache_threshold * len(tokens):
            return self._rotate([r for r, m in enumerate(matches) if m == best], self.pending)
        sizes = [trie.size for trie in self.tries]
        return self._rotate(_argmins(sizes), self.pending)

    def is_imbalanced(self) -> bool:
        low, high = min(self.pending), max(self.pending)
        cfg = self.config
        return high - low > cfg.balance_abs_threshold and high > cfg.balance_rel_threshold * low

    def _least_loaded(self) -> int:
        return self._rotate(_argmins(self.pending), [t.size for t in self.tries])

    def _rotate(self, ranks: list[int], tiebreak: list[int]) -> int:
        """The rank with the lowest tiebreak value; among equals, take turns."""
        low = min(tiebreak[r] for r in ranks)
        tied = [r for r in ranks if tiebreak[r] == low]
        return tied[next(self._turn) % len(tied)]


def _argmins(values: list[int]) -> list[int]:
    low = min(values)
    return [i for i, v in enumerate(values) if v == low]
