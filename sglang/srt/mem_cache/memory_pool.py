"""Memory pools: request -> token-slot table, token-slot allocator, and the per-layer KV buffers.

A KV "slot" holds the key and value of one token in every layer. Slot 0 is never handed out:
it is the padding slot that batched attention may read (and that padded writes may hit).
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang.srt.layers import cpu_kernels


class ReqToTokenPool:
    """Rows of KV slot indices, one row per running request."""

    def __init__(self, size: int, max_context_len: int, device: str = "cpu") -> None:
        self.size = size
        self.max_context_len = max_context_len
        # [size, max_context_len] int64; row r, column p: the KV slot of token p of request r
        self.req_to_token = torch.zeros((size, max_context_len), dtype=torch.int64, device=device)
        self._free: list[int] = list(range(size))

    def available_size(self) -> int:
        return len(self._free)

    def alloc(self) -> Optional[int]:
        return self._free.pop() if self._free else None

    def free(self, row: int) -> None:
        assert row not in self._free, f"row {row} freed twice"
        self._free.append(row)

    def clear(self) -> None:
        self._free = list(range(self.size))


class TokenToKVPoolAllocator:
    """Hands out KV slots 1..size (slot 0 is the padding slot)."""

    def __init__(self, size: int, device: str = "cpu") -> None:
        self.size = size
        self.device = device
        self.clear()

    def clear(self) -> None:
        self._free = torch.arange(1, self.size + 1, dtype=torch.int64)
        self._free_count = self.size
        self._released: list[torch.Tensor] = []

    def available_size(self) -> int:
        return self._free_count + sum(int(t.numel()) for t in self._released)

    def can_alloc(self, n: int) -> bool:
        return n <= self.available_size()

    def alloc(self, n: int) -> Optional[torch.Tensor]:
        """n free slots as an int64 tensor on the device, or None if fewer than n are free."""
        if n > self._free_count and self._released:
            self._free = torch.cat([self._free[: self._free_count], *self._released])
            self._free_count = int(self._free.numel())
            self._released = []
        if n > self._free_count:
            return None
        self._free_count -= n
        out = self._free[self._free_count : self._free_count + n]
        return out.to(self.device, copy=True)

    def free(self, slots: torch.Tensor) -> None:
        if slots.numel() == 0:
            return
        assert int(slots.min()) > 0, "slot 0 is the padding slot and is never freed"
        self._released.append(slots.to("cpu", torch.int64).clone())


class MHATokenToKVPool:
    """Per-layer K and V buffers: [size + 1, num_kv_heads, head_dim] each (row 0 is padding)."""

    def __init__(
        self,
        size: int,
        dtype: torch.dtype,
        num_kv_heads: int,
        head_dim: int,
        num_layers: int,
        device: str = "cpu",
    ) -> None:
        self.size = size
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (size + 1, num_kv_heads, head_dim)
        self.k_buffer = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffer = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        # loc: [T] int64, k/v: [T, num_kv_heads, head_dim]
        kernels = cpu_kernels.for_tensor(k)
        if kernels is not None and k.dtype == v.dtype == self.dtype:  # one call, no index_put
            kernels.store_kv(self.k_buffer[layer_id], self.v_buffer[layer_id], loc, k, v)
            return
        self.k_buffer[layer_id][loc] = k.to(self.dtype)
        self.v_buffer[layer_id][loc] = v.to(self.dtype)

    def get_kv_buffer(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k_buffer[layer_id], self.v_buffer[layer_id]

    @staticmethod
    def bytes_per_token(dtype: torch.dtype, num_kv_heads: int, head_dim: int, num_layers: int) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()
