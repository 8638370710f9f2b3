"""The scheduler process: its sockets, its event loop, and the watchdog over its steps."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

import zmq

from sglang.srt.distributed.parallel_state import TensorParallelError
from sglang.srt.managers.io_struct import BatchReqOutput, Heartbeat, SchedulerFailed
from sglang.srt.managers.output_processor import error_output
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.server_args import PortArgs, ServerArgs

logger = logging.getLogger(__name__)

# Exit code of a scheduler process that its watchdog ended (a step stuck too long).
WATCHDOG_EXIT_CODE = 3


def run_scheduler_process(server_args: ServerArgs, port_args: PortArgs) -> None:
    """Entry point of the scheduler process (started with multiprocessing spawn)."""
    logging.basicConfig(
        level=server_args.logging_level(),
        format="%(asctime)s [scheduler] %(levelname)s %(message)s",
    )
    parent = os.getppid()
    ctx = zmq.Context(2)
    recv = ctx.socket(zmq.PULL)
    recv.bind(port_args.scheduler_input_ipc)
    send = ctx.socket(zmq.PUSH)
    send.connect(port_args.tokenizer_ipc)
    try:
        scheduler = Scheduler(server_args)
    except Exception as e:
        logger.exception("scheduler failed to start")
        send.send_pyobj(SchedulerFailed(f"{type(e).__name__}: {e}"))
        time.sleep(0.5)
        return
    send.send_pyobj(scheduler.ready_message())
    watchdog = Watchdog(scheduler, server_args.watchdog_timeout, ctx, port_args.tokenizer_ipc)
    watchdog.start()
    if server_args.tp_size == 1:
        event_loop(scheduler, recv, send, parent, watchdog)
        return
    # Tensor parallelism: SIGTERM ends the loop between steps, so the workers get a clean stop
    # rather than a collective cut in half; a broken group ends the process with exit code 1.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        event_loop(scheduler, recv, send, parent, watchdog, stop.is_set)
    except TensorParallelError as e:
        logger.error("the tensor-parallel group broke (%s); the scheduler exits", e)
        sys.stderr.flush()
        os._exit(1)
    scheduler.runner.shutdown()
    logger.info("scheduler and its tensor-parallel workers stopped")


class Watchdog:
    """Ends the process when one step runs longer than `timeout_s`, after logging what the step
    was doing and every thread's stack, so a supervisor can restart a wedged server.

    It also sends the HTTP process a Heartbeat about once a second (from a socket of its own:
    ZMQ sockets are not shared between threads), so a process that is frozen as a whole
    (stopped, swapped out, deadlocked) is noticed there.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        timeout_s: float,
        ctx: Optional[zmq.Context] = None,
        heartbeat_addr: Optional[str] = None,
    ) -> None:
        self.scheduler = scheduler
        self.timeout_s = timeout_s
        self._ctx, self._heartbeat_addr = ctx, heartbeat_addr
        self._step_started: Optional[float] = None
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def step_started(self) -> None:
        self._step_started = time.monotonic()

    def step_ended(self) -> None:
        self._step_started = None

    def _watch(self) -> None:
        interval = min(1.0, self.timeout_s / 4)
        sock = None
        if self._ctx is not None and self._heartbeat_addr is not None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.connect(self._heartbeat_addr)
        while True:
            time.sleep(interval)
            started = self._step_started
            running = 0.0 if started is None else time.monotonic() - started
            if running > self.timeout_s:
                self._fire(running)
            if sock is not None:
                sock.send_pyobj(Heartbeat(running))

    def _fire(self, elapsed: float) -> None:
        logger.error(
            "watchdog: a scheduler step has run for %.1fs (--watchdog-timeout %gs) while "
            "running %s; %d running, %d waiting; exiting",
            elapsed,
            self.timeout_s,
            self.scheduler.current_activity,
            len(self.scheduler.running),
            len(self.scheduler.waiting),
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(WATCHDOG_EXIT_CODE)  # the stuck thread cannot be interrupted


def event_loop(
    scheduler: Scheduler,
    recv: zmq.Socket,
    send: zmq.Socket,
    parent: int,
    watchdog: Optional[Watchdog] = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Receive, step, send until the parent exits or should_stop(); a TensorParallelError
    (a rank gone) leaves the loop: the group cannot run another pass."""
    poller = zmq.Poller()
    poller.register(recv, zmq.POLLIN)
    while not should_stop():
        if scheduler.running or scheduler.waiting:
            timeout = 0
        else:  # idle, or only grammars compiling in the background: no busy loop
            timeout = 2 if scheduler.grammar_queue else 1000
        if poller.poll(timeout):
            _drain(scheduler, recv, send)
        if os.getppid() != parent:  # a cheap syscall; no orphan keeps computing
            logger.info("parent process exited; scheduler stops")
            return
        if not scheduler.has_work() and not scheduler.has_outputs():
            scheduler.runner.ping_workers()  # idle tensor-parallel workers: still there?
            continue
        if watchdog is not None:
            watchdog.step_started()
        try:
            reqs = scheduler.step()
        except TensorParallelError:
            raise
        except Exception:
            logger.exception(
                "scheduler step failed during %s; aborting the running requests",
                scheduler.current_activity,
            )
            reqs = _abort_all(scheduler)
        if watchdog is not None:
            watchdog.step_ended()
        if reqs:
            send.send_pyobj(BatchReqOutput([scheduler.make_output(r) for r in reqs]))


def _drain(scheduler: Scheduler, recv: zmq.Socket, send: zmq.Socket) -> None:
    while True:
        try:
            msg = recv.recv_pyobj(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            reply = scheduler.handle_message(msg)
        except Exception as e:
            logger.exception("bad message for request %s", getattr(msg, "rid", None))
            reply = None
            rid = getattr(msg, "rid", None)
            if rid is not None:
                send.send_pyobj(BatchReqOutput([error_output(rid, str(e))]))
        if reply is not None:
            send.send_pyobj(reply)


def _abort_all(scheduler: Scheduler) -> list[Any]:
    try:
        return scheduler.abort_all("internal error in the scheduler")
    except Exception:
        logger.exception("release after error failed")
        scheduler.policy.running = []
        return []
