"""Data parallelism (--dp-size N): N scheduler replicas behind one tokenizer manager.

Each replica is a scheduler process of its own (its own model copy and a share of the cores)
with its own pair of sockets, so the HTTP process knows which replica every message comes
from. DataParallelLink is what the tokenizer manager talks to instead of one scheduler:
requests go to the replica CacheAwareRouter picks, aborts follow their request, and control
requests (flush_cache, get_server_info) go to every replica and their replies are merged.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Optional

import zmq
import zmq.asyncio

from sglang.srt.managers.dp_router import CacheAwareRouter
from sglang.srt.managers.io_struct import (
    AbortReq,
    FlushCacheReply,
    GetServerInfoReply,
    Heartbeat,
    SchedulerReady,
    TokenizedEmbeddingReqInput,
    TokenizedGenerateReqInput,
)
from sglang.srt.server_args import PortArgs, ServerArgs

logger = logging.getLogger(__name__)

_ROUTED = (TokenizedGenerateReqInput, TokenizedEmbeddingReqInput)
# /get_server_info fields that are per-replica values; the total is their sum
_SUMMED = (
    "num_running_reqs",
    "num_waiting_reqs",
    "max_running_requests",
    "max_total_tokens",
    "available_kv_tokens",
    "cached_tokens_in_tree",
    "num_decode_steps",
    "num_generated_tokens",
    "num_jump_forward_tokens",
    "num_retractions",
)


@dataclasses.dataclass
class Replica:
    """One scheduler replica: its rank, its sockets' addresses and its process."""

    rank: int
    port_args: PortArgs
    process: Any  # multiprocessing.process.BaseProcess
    num_threads: int  # torch threads of its scheduler


def replica_args(server_args: ServerArgs) -> ServerArgs:
    """The scheduler's args for each replica: its share of the cores unless --num-threads."""
    threads = server_args.num_threads or max(1, (os.cpu_count() or 1) // server_args.dp_size)
    return dataclasses.replace(server_args, num_threads=threads)


def start_replicas(
    ctx: Any, target: Callable[..., None], scheduler_args: ServerArgs, port_args: PortArgs
) -> list[Replica]:
    """Spawn dp_size scheduler processes, each on its own sockets (see PortArgs.for_replica)."""
    args = replica_args(scheduler_args)
    replicas = []
    for rank in range(scheduler_args.dp_size):
        ports = port_args.for_replica(rank)
        proc = ctx.Process(
            target=target, args=(args, ports), name=f"sglang-scheduler-dp{rank}", daemon=True
        )
        proc.start()
        replicas.append(Replica(rank, ports, proc, args.num_threads or 1))
    return replicas


class DataParallelLink:
    """The HTTP process's sockets to every replica, the routing of messages, and the merging
    of replies. Owned by the tokenizer manager; all methods run on its event loop."""

    def __init__(self, replicas: list[Replica], router: Optional[CacheAwareRouter] = None) -> None:
        assert len(replicas) > 1, "one replica needs no link"
        self.replicas = replicas
        self.router = router or CacheAwareRouter(len(replicas))
        self.rid_to_rank: dict[str, int] = {}
        self.ready: dict[int, SchedulerReady] = {}
        self.heartbeats: dict[int, tuple[float, Heartbeat]] = {}  # rank -> (arrival, last)
        self._replies: dict[tuple[int, type], collections.deque[asyncio.Future]] = {
            (r.rank, t): collections.deque()
            for r in replicas
            for t in (FlushCacheReply, GetServerInfoReply)
        }
        self._send_socks: list[Any] = []
        self._recv_socks: list[Any] = []

    # ---------------------------------------------------------------- sockets

    def open(self, ctx: zmq.asyncio.Context) -> None:
        for replica in self.replicas:
            recv = ctx.socket(zmq.PULL)
            recv.bind(replica.port_args.tokenizer_ipc)
            send = ctx.socket(zmq.PUSH)
            send.setsockopt(zmq.SNDHWM, 0)
            send.connect(replica.port_args.scheduler_input_ipc)
            self._recv_socks.append(recv)
            self._send_socks.append(send)

    def recv_tasks(self, handle: Callable[[Any], None]) -> list[asyncio.Task]:
        """One receive loop a replica; messages for the tokenizer manager go to `handle`."""
        return [
            asyncio.create_task(self._recv_loop(rank, sock, handle))
            for rank, sock in enumerate(self._recv_socks)
        ]

    async def _recv_loop(self, rank: int, sock: Any, handle: Callable[[Any], None]) -> None:
        while True:
            msg = await sock.recv_pyobj()
            try:
                passed = self.accept(rank, msg)
                if passed is not None:
                    handle(passed)
            except Exception:  # one bad message must not stop the loop
                logger.exception("failed to handle a message of replica %d", rank)

    # ---------------------------------------------------------------- incoming

    def accept(self, rank: int, msg: Any) -> Optional[Any]:
        """Take what is per replica (heartbeats, replies, readiness); return what the tokenizer
        manager handles as from one scheduler (outputs, failures, the merged readiness)."""
        if isinstance(msg, Heartbeat):
            self.heartbeats[rank] = (time.monotonic(), msg)
            return None
        if isinstance(msg, (FlushCacheReply, GetServerInfoReply)):
            waiters = self._replies[(rank, type(msg))]
            if waiters:
                future = waiters.popleft()
                if not future.done():
                    future.set_result(msg)
            return None
        if isinstance(msg, SchedulerReady):
            return self._on_ready(rank, msg)
        return msg

    def _on_ready(self, rank: int, msg: SchedulerReady) -> Optional[SchedulerReady]:
        self.ready[rank] = msg
        self.heartbeats[rank] = (time.monotonic(), Heartbeat(0.0))
        logger.info("replica %d of %d is ready", rank, len(self.replicas))
        if len(self.ready) < len(self.replicas):
            return None
        first = self.ready[0]
        return dataclasses.replace(
            first,
            max_total_tokens=sum(r.max_total_tokens for r in self.ready.values()),
            max_running_requests=sum(r.max_running_requests for r in self.ready.values()),
        )

    @property
    def heartbeat(self) -> Optional[tuple[float, Heartbeat]]:
        """The worst replica's: the oldest arrival, and the longest running step."""
        if not self.heartbeats:
            return None
        oldest = min(arrived for arrived, _ in self.heartbeats.values())
        longest = max(beat.step_running_s for _, beat in self.heartbeats.values())
        return oldest, Heartbeat(longest)

    # ---------------------------------------------------------------- outgoing

    def send(self, msg: Any) -> None:
        """Route a request (or a batch of them) to its replica; an abort to its request's."""
        if isinstance(msg, list):
            for rank, part in self._split(msg).items():
                self._send_socks[rank].send_pyobj(part)
        elif isinstance(msg, _ROUTED):
            self._send_socks[self._route(msg)].send_pyobj(msg)
        elif isinstance(msg, AbortReq):
            rank = self.rid_to_rank.get(msg.rid)
            for r in range(len(self._send_socks)) if rank is None else (rank,):
                self._send_socks[r].send_pyobj(msg)
        else:
            raise TypeError(f"no route for {type(msg).__name__}; use request_all")

    def _split(self, reqs: list[Any]) -> dict[int, list[Any]]:
        parts: dict[int, list[Any]] = {}
        for req in reqs:
            parts.setdefault(self._route(req), []).append(req)
        return parts

    def _route(self, req: Any) -> int:
        rank = self.router.pick(req.input_ids)
        self.rid_to_rank[req.rid] = rank
        return rank

    def release(self, rid: str) -> None:
        """The tokenizer manager is done with a request: it no longer loads its replica."""
        rank = self.rid_to_rank.pop(rid, None)
        if rank is not None:
            self.router.release(rank)

    async def request_all(self, msg: Any, reply_type: type) -> list[Any]:
        """Send a control request to every replica; their replies, in rank order."""
        loop = asyncio.get_running_loop()
        futures = []
        for rank, sock in enumerate(self._send_socks):
            future = loop.create_future()
            self._replies[(rank, reply_type)].append(future)
            futures.append(future)
            sock.send_pyobj(msg)
        return list(await asyncio.gather(*futures))

    async def request_merged(self, msg: Any, reply_type: type) -> Any:
        """request_all, its replies merged into one (see merge_flush, merge_info)."""
        replies = await self.request_all(msg, reply_type)
        if reply_type is FlushCacheReply:
            return self.merge_flush(replies)
        assert reply_type is GetServerInfoReply, f"no merge for {reply_type.__name__}"
        return self.merge_info(replies)

    def fail_waiters(self, message: str) -> None:
        for waiters in self._replies.values():
            while waiters:
                future = waiters.popleft()
                if not future.done():
                    future.set_exception(RuntimeError(message))

    # ---------------------------------------------------------------- merged replies

    def merge_flush(self, replies: list[FlushCacheReply]) -> FlushCacheReply:
        """Success when every replica flushed; the tries of those that did are cleared."""
        for rank, reply in enumerate(replies):
            if reply.success:
                self.router.tries[rank].clear()
        failed = [f"replica {r}: {x.message}" for r, x in enumerate(replies) if not x.success]
        if failed:
            return FlushCacheReply(False, "; ".join(failed))
        return FlushCacheReply(True, replies[0].message)

    def merge_info(self, replies: list[GetServerInfoReply]) -> GetServerInfoReply:
        """Totals at the top level (sums; the cache hit rate weighted by routed requests) and
        each replica's own statistics under "replicas"."""
        infos = [dict(r.info) for r in replies]
        total: dict[str, Any] = dict(infos[0])
        for key in _SUMMED:
            if all(isinstance(i.get(key), (int, float)) for i in infos):
                total[key] = sum(i[key] for i in infos)
        routed = self.router.routed
        weight = sum(routed) or 1
        total["cache_hit_rate"] = (
            sum((i.get("cache_hit_rate") or 0.0) * n for i, n in zip(infos, routed)) / weight
        )
        for rank, info in enumerate(infos):
            info["dp_rank"] = rank
            info["pid"] = self.replicas[rank].process.pid
            info["num_threads"] = self.replicas[rank].num_threads
            info["num_routed_requests"] = routed[rank]
            info["num_pending_requests"] = self.router.pending[rank]
        total["replicas"] = infos
        return GetServerInfoReply(total)
