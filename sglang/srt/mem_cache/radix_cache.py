"""RadixAttention's prefix cache: a radix tree from token-id prefixes to their KV slots."""

from __future__ import annotations

import heapq
import itertools
import sys
from typing import NamedTuple, Optional, TextIO

import torch

from sglang.srt.mem_cache.memory_pool import TokenToKVPoolAllocator


class TreeNode:
    """One compressed edge of the tree: `key` tokens whose KV lives in the slots `value`.

    NOTE: len(key) == len(value) for every node but the root (empty key and value).
    `lock_ref` counts the requests whose locked path runs through this node; a node with
    lock_ref > 0 is never evicted. A parent is locked at least as often as each child.
    """

    __slots__ = ("key", "value", "children", "parent", "lock_ref", "last_access_time", "node_id")

    _ids = itertools.count()

    def __init__(
        self,
        key: list[int],
        value: torch.Tensor,
        parent: Optional[TreeNode],
        last_access_time: int = 0,
    ) -> None:
        self.key = key
        self.value = value  # [len(key)] int64 KV slot indices
        self.children: dict[int, TreeNode] = {}  # keyed by the child's first token
        self.parent = parent
        self.lock_ref = 0
        self.last_access_time = last_access_time
        self.node_id = next(TreeNode._ids)  # tie-breaker for the eviction heap

    def __len__(self) -> int:
        return len(self.key)

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def __repr__(self) -> str:
        return f"TreeNode(id={self.node_id}, len={len(self.key)}, lock_ref={self.lock_ref})"


class MatchResult(NamedTuple):
    indices: torch.Tensor  # [L] int64 KV slots of the longest cached prefix of the key
    last_node: TreeNode  # the node whose path spells exactly that prefix (root if L == 0)


def _common_prefix_len(node_key: list[int], key: list[int], start: int) -> int:
    """Length of the common prefix of node_key and key[start:]."""
    n = min(len(node_key), len(key) - start)
    for i in range(n):
        if node_key[i] != key[start + i]:
            return i
    return n


class RadixCache:
    """Shares KV slots between requests whose token sequences share a prefix.

    Typical use by the scheduler, per request:
      1. `match_prefix(prompt)` -> cached slots and `last_node`; `inc_lock_ref(last_node)`.
      2. Allocate slots for the uncached rest (calling `evict` first when the pool is short).
      3. When the request finishes (or a chunk is done), `insert(tokens, slots)`, free the
         duplicate slots the insert contract names, then `dec_lock_ref(old last_node)` (and lock
         the new last node if the request continues).

    Invariants:
      NOTE: the indices returned by `match_prefix` may only be used while their node is locked;
      an unlocked node may be evicted by any later `evict` call and its slots reused.
      NOTE: every slot in the tree was handed to it by `insert` and is freed exactly once, by
      `evict` or `reset`. `evictable_size() + protected_size() == total_size()`.
    """

    def __init__(self, allocator: TokenToKVPoolAllocator, disable: bool = False) -> None:
        self.allocator = allocator
        self.disable = disable
        self._init_tree()

    # ---- sizes and statistics ------------------------------------------------------------

    def evictable_size(self) -> int:
        """Tokens in unlocked nodes (what `evict` could free)."""
        return self._evictable_size

    def protected_size(self) -> int:
        """Tokens in locked nodes."""
        return self._protected_size

    def total_size(self) -> int:
        """All tokens (and KV slots) held by the tree."""
        return self._evictable_size + self._protected_size

    def record_lookup(self, prompt_tokens: int, cached_tokens: int) -> None:
        """Accumulate one request's prompt length and how much of it came from the cache."""
        self._lookup_prompt_tokens += prompt_tokens
        self._lookup_cached_tokens += cached_tokens

    def hit_rate(self) -> float:
        """Cached tokens / prompt tokens over all recorded lookups since the last reset."""
        if self._lookup_prompt_tokens == 0:
            return 0.0
        return self._lookup_cached_tokens / self._lookup_prompt_tokens

    # ---- lifecycle -------------------------------------------------------------------------

    def reset(self) -> None:
        """Drop every node and free all its slots. Only valid while nothing is locked."""
        assert self._protected_size == 0, (
            f"reset() with {self._protected_size} locked tokens in the tree"
        )
        for node in self._iter_nodes():
            self.allocator.free(node.value)
        self._init_tree()

    def _init_tree(self) -> None:
        self.root = TreeNode([], self._empty(), parent=None)
        self.root.lock_ref = 1  # the root is never evicted
        self._clock = 0
        self._evictable_size = 0
        self._protected_size = 0
        self._lookup_prompt_tokens = 0
        self._lookup_cached_tokens = 0
        # Bumped whenever a prefix is added or removed: a cached prefix length computed at an
        # older version may be stale (splits do not change any prefix length).
        self.version = getattr(self, "version", 0) + 1

    # ---- lookup and insertion --------------------------------------------------------------

    def match_prefix(self, key: list[int]) -> MatchResult:
        """The longest cached prefix of `key`: its KV slots and the node ending exactly there.

        A match ending inside a node splits it, so `last_node` spells exactly the match.
        Every node on the path becomes the most recently used.
        """
        if self.disable or not key:
            return MatchResult(self._empty(), self.root)
        now = self._tick()
        node, pos, parts = self.root, 0, []
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                break
            common = _common_prefix_len(child.key, key, pos)
            if common < len(child):
                child = self._split(child, common)
            child.last_access_time = now
            parts.append(child.value)
            node, pos = child, pos + common
        indices = torch.cat(parts) if parts else self._empty()
        return MatchResult(indices, node)

    def peek_prefix_len(self, key: list[int]) -> int:
        """Length of the longest cached prefix of `key`, leaving the tree as it is: no split,
        no access-time refresh (for ranking requests that may not be admitted)."""
        if self.disable or not key:
            return 0
        node, pos = self.root, 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                break
            common = _common_prefix_len(child.key, key, pos)
            pos += common
            if common < len(child):
                break
            node = child
        return pos

    def insert(self, key: list[int], value: torch.Tensor) -> int:
        """Cache `key` -> `value` (its KV slots); return how much of `key` was already cached.

        Ownership contract: with `already_len` the returned value, the tree takes ownership of
        value[already_len:]; value[:already_len] duplicates slots the tree already holds for
        that prefix, and the CALLER frees value[cached_len_of_caller:already_len] - i.e. the
        part of the duplicate that the caller allocated itself (the caller knows its own
        cached_len from its earlier match and must not free slots it got from the tree).

        With `disable=True` nothing is cached: the return is 0 and the slots are freed at once.
        """
        # value: [len(key)] int64
        assert len(value) == len(key), f"key has {len(key)} tokens but value {len(value)} slots"
        if self.disable:
            self.allocator.free(value)
            return 0
        now = self._tick()
        node, pos = self.root, 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                self._add_leaf(node, key[pos:], value[pos:], now)
                self.version += 1
                break
            common = _common_prefix_len(child.key, key, pos)
            if common < len(child):
                child = self._split(child, common)
            child.last_access_time = now
            node, pos = child, pos + common
        return pos

    # ---- locking ---------------------------------------------------------------------------

    def inc_lock_ref(self, node: TreeNode) -> None:
        """Lock the path root..node: none of its nodes can be evicted until unlocked."""
        while node is not self.root:
            if node.lock_ref == 0:
                self._evictable_size -= len(node)
                self._protected_size += len(node)
            node.lock_ref += 1
            node = node.parent

    def dec_lock_ref(self, node: TreeNode) -> None:
        """Undo one `inc_lock_ref(node)`."""
        while node is not self.root:
            assert node.lock_ref > 0, f"dec_lock_ref on unlocked {node!r}"
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable_size += len(node)
                self._protected_size -= len(node)
            node = node.parent

    # ---- eviction --------------------------------------------------------------------------

    def evict(self, num_tokens: int) -> int:
        """Free least-recently-used unlocked leaves until `num_tokens` slots are freed.

        A parent left childless and unlocked becomes a leaf and a candidate in turn. Whole
        nodes are freed, so the result may exceed `num_tokens`; it is smaller only when
        nothing evictable is left. Returns the number of slots freed.
        """
        if self.disable or num_tokens <= 0:
            return 0
        heap = [self._heap_entry(n) for n in self._iter_nodes() if self._is_evictable_leaf(n)]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            node = heapq.heappop(heap)[2]
            freed += self._delete_leaf(node)
            parent = node.parent
            if parent is not self.root and self._is_evictable_leaf(parent):
                heapq.heappush(heap, self._heap_entry(parent))
        return freed

    # ---- debugging -------------------------------------------------------------------------

    def pretty_print(self, file: Optional[TextIO] = None) -> None:
        """Print the tree, one node a line, indented by depth."""
        out = file if file is not None else sys.stdout
        stack = [(self.root, 0)]
        while stack:
            node, depth = stack.pop()
            head = node.key[:8]
            more = "..." if len(node.key) > 8 else ""
            print(
                f"{'  ' * depth}{head}{more} len={len(node)} lock={node.lock_ref} "
                f"t={node.last_access_time}",
                file=out,
            )
            stack.extend((c, depth + 1) for c in node.children.values())
        print(
            f"total={self.total_size()} evictable={self.evictable_size()} "
            f"protected={self.protected_size()}",
            file=out,
        )

    # ---- internals -------------------------------------------------------------------------

    def _empty(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64, device=self.allocator.device)

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _iter_nodes(self):
        """Every node but the root."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def _split(self, child: TreeNode, at: int) -> TreeNode:
        """Cut `child` after `at` tokens; return the new upper node (its parent now)."""
        assert 0 < at < len(child), f"split of {child!r} at {at}"
        upper = TreeNode(child.key[:at], child.value[:at], child.parent, child.last_access_time)
        upper.lock_ref = child.lock_ref  # every locked path through child runs through upper
        upper.children[child.key[at]] = child
        child.parent.children[child.key[0]] = upper
        child.key, child.value, child.parent = child.key[at:], child.value[at:], upper
        return upper

    def _add_leaf(self, parent: TreeNode, key: list[int], value: torch.Tensor, now: int) -> None:
        # clone: the caller's tensor may be a view of a row that will be overwritten
        leaf = TreeNode(list(key), value.to(torch.int64).clone(), parent, now)
        parent.children[key[0]] = leaf
        self._evictable_size += len(leaf)

    def _is_evictable_leaf(self, node: TreeNode) -> bool:
        return node.is_leaf and node.lock_ref == 0

    @staticmethod
    def _heap_entry(node: TreeNode) -> tuple[int, int, TreeNode]:
        return (node.last_access_time, node.node_id, node)

    def _delete_leaf(self, node: TreeNode) -> int:
        assert node.is_leaf and node.lock_ref == 0, f"cannot evict {node!r}"
        self.version += 1
        self.allocator.free(node.value)
        del node.parent.children[node.key[0]]
        self._evictable_size -= len(node)
        return len(node)
