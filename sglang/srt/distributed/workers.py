"""Tensor-parallel worker processes: how they are started, what they run, and how they end.

Rank 0 is the scheduler's ModelRunner (node 0). Ranks 1..N-1 are worker processes, each a
`python -m sglang.srt.distributed.workers` with its rank and the server's flags: on node 0 the
scheduler's runner starts ranks 1..N/nnodes-1; on node k > 0, `launch_server --node-rank k`
starts ranks k N/nnodes .. (k+1) N/nnodes - 1 (run_node_workers) and serves nothing else.

A worker loads its shard, sizes its KV pool as rank 0 says, then runs every forward pass
rank 0 sends (batch_link.py) until rank 0 sends stop (exit 0). A broken group (rank 0 or
another rank gone) or a parent that exits ends it with exit code 1; rank 0 ends its process
with exit code 1 when one of its local workers exits (see ModelRunner), so a dying worker
takes the server down rather than leaving it hanging in a collective.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

from sglang.srt.server_args import ServerArgs

logger = logging.getLogger(__name__)

# How often a process checks that its parent (or its local workers) are still there.
_WATCH_INTERVAL_S = 0.5


def local_tp_size(args: ServerArgs) -> int:
    """Ranks per node."""
    return args.tp_size // args.nnodes


def rank_threads(args: ServerArgs) -> int:
    """Torch threads of one rank: --num-threads, else this node's cores shared by its ranks."""
    return args.num_threads or max(1, (os.cpu_count() or 1) // local_tp_size(args))


def worker_args(args: ServerArgs, init_addr: str) -> ServerArgs:
    """The flags every rank of this node runs with (resolved model path, group address,
    thread count)."""
    return dataclasses.replace(args, dist_init_addr=init_addr, num_threads=rank_threads(args))


def spawn_workers(args: ServerArgs, ranks: list[int]) -> list[subprocess.Popen]:
    """Start one worker process per rank (args: see worker_args)."""
    fields = json.dumps(dataclasses.asdict(args))
    procs = []
    for rank in ranks:
        cmd = [sys.executable, "-m", "sglang.srt.distributed.workers", str(rank), fields]
        procs.append(subprocess.Popen(cmd))
    logger.info("started tensor-parallel workers: %s", ", ".join(f"rank {r}" for r in ranks))
    return procs


class WorkerMonitor:
    """Calls on_exit(rank, code) (from a thread) when one of procs exits before stop()."""

    def __init__(
        self, procs: dict[int, subprocess.Popen], on_exit: Callable[[int, int], None]
    ) -> None:
        self.procs = procs
        self.on_exit = on_exit
        self.stopped = False
        threading.Thread(target=self._watch, name="tp-worker-monitor", daemon=True).start()

    def _watch(self) -> None:
        while not self.stopped:
            for rank, proc in self.procs.items():
                code = proc.poll()
                if code is not None and not self.stopped:
                    self.on_exit(rank, code)
                    return
            time.sleep(_WATCH_INTERVAL_S)

    def stop(self, grace_s: float = 10.0) -> None:
        """Wait up to grace_s for the workers to exit (after rank 0 sent stop), then kill."""
        self.stopped = True
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def exit_on_worker_exit(rank: int, code: int) -> None:
    logger.error("tensor-parallel worker rank %d exited (code %d); the scheduler exits", rank, code)
    sys.stderr.flush()
    os._exit(1)  # the main thread may be blocked in a collective that never completes


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_WATCH_INTERVAL_S)
    logger.error("parent process %d exited; tensor-parallel worker exits", parent)
    os._exit(1)


def run_worker(args: ServerArgs, rank: int) -> int:
    """A worker's life: join the group, load its shard, run rank 0's passes; its exit code."""
    from sglang.srt.distributed.parallel_state import TensorParallelError
    from sglang.srt.model_executor.model_runner import ModelRunner

    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        runner = ModelRunner(args, tp_rank=rank)
        runner.init_memory_pool()
    except Exception:
        logger.exception("tensor-parallel worker rank %d failed to start", rank)
        return 1
    try:
        runner.serve_rank0()
    except TensorParallelError as e:
        logger.error("rank %d: the tensor-parallel group broke (%s); exiting", rank, e)
        return 1
    logger.info("rank %d: stop from rank 0", rank)
    return 0


def run_node_workers(args: ServerArgs) -> int:
    """`launch_server --node-rank k` (k > 0): this node's ranks and nothing else; returns 0 when
    rank 0 stopped them, 1 when one failed (the others are then ended too)."""
    from sglang.srt.model_loader.loader import resolve_model_path

    local = local_tp_size(args)
    args = dataclasses.replace(args, model_path=resolve_model_path(args.model_path))
    first = args.node_rank * local
    procs = spawn_workers(worker_args(args, args.dist_init_addr), list(range(first, first + local)))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _wait_all(procs)
    except KeyboardInterrupt:
        _terminate(procs)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt()


def _wait_all(procs: list[subprocess.Popen]) -> int:
    while True:
        codes = [p.poll() for p in procs]
        if any(c not in (None, 0) for c in codes):
            _terminate(procs)
            return 1
        if all(c == 0 for c in codes):
            return 0
        time.sleep(_WATCH_INTERVAL_S)


def _terminate(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rank = int(argv[0])
    args = ServerArgs(**json.loads(argv[1]))
    logging.basicConfig(
        level=args.logging_level(),
        format=f"%(asctime)s [tp{rank}] %(levelname)s %(message)s",
    )
    return run_worker(args, rank)


if __name__ == "__main__":
    sys.exit(main())
