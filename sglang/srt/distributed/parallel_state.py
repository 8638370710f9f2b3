"""The tensor-parallel group of this process: its rank, its size, and the collectives the
parallel layers run (all-reduce of partial sums, all-gather of vocabulary shards).

torch.distributed runs them: gloo on CPU, NCCL on CUDA. A model is built inside
`building_with(group)`, so each parallel layer keeps the group it was built for; a process
that is not part of a group (tp_size 1) builds its layers with the trivial group SINGLE.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import socket
from typing import Iterator, Optional

import torch

logger = logging.getLogger(__name__)

# Architectures whose layers are the parallel ones (the Llama decoder and its subclasses).
TP_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


class TensorParallelError(RuntimeError):
    """A collective of the tensor-parallel group failed: a rank died or its link broke."""


@dataclasses.dataclass(frozen=True)
class TpGroup:
    """This process's place in the tensor-parallel group (rank 0 runs the scheduler)."""

    rank: int = 0
    size: int = 1

    @property
    def enabled(self) -> bool:
        return self.size > 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of x over the ranks (same shape); reduced in float32, returned in x's dtype."""
        if self.size == 1:
            return x
        y = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x.contiguous()
        _collective(torch.distributed.all_reduce, y)
        return y.to(x.dtype)

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., N] of every rank, concatenated in rank order along the last dim: [..., size N]."""
        if self.size == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)]
        _collective(torch.distributed.all_gather, parts, x)
        return torch.cat(parts, dim=-1)

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's x into every rank's x (in place; same shape and dtype on every rank)."""
        if self.size > 1:
            _collective(torch.distributed.broadcast, x, 0)
        return x

    def all_reduce_min(self, value: int) -> int:
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
        _collective(torch.distributed.all_reduce, t, torch.distributed.ReduceOp.MIN)
        return int(t.item())

    def shard_range(self, total: int) -> tuple[int, int]:
        """(start, size) of this rank's equal part of `total` (a multiple of size)."""
        part = total // self.size
        return self.rank * part, part


SINGLE = TpGroup()
_building: TpGroup = SINGLE


def building_group() -> TpGroup:
    """The group the layers being constructed belong to (SINGLE outside building_with)."""
    return _building


@contextlib.contextmanager
def building_with(group: TpGroup) -> Iterator[None]:
    """Layers constructed inside this block are this rank's shards of `group`."""
    global _building
    previous, _building = _building, group
    try:
        yield
    finally:
        _building = previous


def _comm_device() -> torch.device:
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(op, *args) -> None:
    try:
        op(*args)
    except Exception as e:  # gloo: "Connection closed by peer", timeouts, ...
        raise TensorParallelError(f"tensor-parallel collective failed: {e}") from e


def init_group(
    rank: int, size: int, init_addr: str, device: torch.device, timeout_s: float
) -> TpGroup:
    """Join the process group at init_addr ("host:port"; rank 0 listens there): gloo on CPU,
    NCCL on CUDA (each rank on cuda:<local rank>, set by the caller)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(
        backend,
        init_method=f"tcp://{init_addr}",
        world_size=size,
        rank=rank,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    logger.info("tensor-parallel rank %d of %d joined %s (%s)", rank, size, init_addr, backend)
    return TpGroup(rank, size)


def destroy_group() -> None:
    if torch.distributed.is_initialized():
        with contextlib.suppress(Exception):
            torch.distributed.destroy_process_group()


def free_local_address() -> str:
    """127.0.0.1:<a free port>, for a group whose ranks all run on this machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def valid_tp_sizes(num_heads: int, num_kv_heads: int) -> list[int]:
    """The sizes that split both the query heads and the KV heads evenly."""
    return [n for n in range(1, num_heads + 1) if num_heads % n == 0 and num_kv_heads % n == 0]


def check_tp_size(tp_size: int, config, is_embedding: bool) -> Optional[str]:
    """Why the model of `config` (a ModelConfig) cannot run at tp_size (a message naming it), or
    None."""
    if tp_size == 1:
        return None
    arch, heads, kv_heads = config.architecture, config.num_heads, config.num_kv_heads
    if is_embedding:
        return f"tp_size={tp_size}: embedding models ({arch}) run at --tp-size 1 only"
    if arch not in TP_ARCHITECTURES:
        return (
            f"tp_size={tp_size}: tensor parallelism supports the Llama family "
            f"({', '.join(TP_ARCHITECTURES)}), not {arch}"
        )
    if heads % tp_size or kv_heads % tp_size:
        return (
            f"tp_size={tp_size}: {arch} has {heads} attention heads and {kv_heads} KV heads, "
            f"which {tp_size} ranks cannot split evenly; valid --tp-size values: "
            f"{valid_tp_sizes(heads, kv_heads)}"
        )
    if config.intermediate_size % tp_size:
        return (
            f"tp_size={tp_size}: {arch}'s intermediate size {config.intermediate_size} does "
            f"not split into {tp_size} equal parts"
        )
    return None
