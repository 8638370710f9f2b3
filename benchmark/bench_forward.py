"""ModelRunner.forward alone: prefill and decode throughput, and where one decode step's time goes.

    PYTHONPATH=. python benchmark/bench_forward.py [--model-path PATH] [--dtype bfloat16] [--threads 2]

Times are medians of wall clock per pass; "cpu" is this process's CPU time over the same passes,
a steadier guide than wall time when other processes share the cores (with one thread it stays
close to what an idle machine would show). Decode runs over a synthetic context (KV slots
allocated, not computed): attention costs the same whatever the cached values are, and filling
64 x 300 tokens by prefill first would dominate the run. Findings: docs/profile-decode.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sglang.bench_one_batch import StaticBatch
from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.server_args import ServerArgs


class Requests(StaticBatch):
    """A StaticBatch of synthetic requests with `context` KV slots each, allocated, not computed."""

    def __init__(self, runner: ModelRunner, batch: int, context: int) -> None:
        super().__init__(runner, batch)
        if context:
            self.reserve([context] * batch)

    def batch(self, mode: ForwardMode, new: list[int]) -> ForwardBatch:
        """A ForwardBatch adding new[i] arbitrary tokens to request i."""
        return self.forward_batch(mode, [torch.randint(100, 1000, (n,)).tolist() for n in new])


def fresh(runner: ModelRunner) -> None:
    runner.req_to_token_pool.clear()
    runner.token_to_kv_pool_allocator.clear()


def timed_forward(runner: ModelRunner, fb: ForwardBatch) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward pass."""
    wall, cpu = time.perf_counter(), time.process_time()
    runner.forward(fb)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_prefill(runner: ModelRunner, length: int, repeats: int) -> tuple[float, float]:
    """(wall, CPU) median seconds of one `length`-token prefill, after one warm-up pass."""
    times = []
    for _ in range(repeats + 1):
        fresh(runner)
        times.append(
            timed_forward(runner, Requests(runner, 1, 0).batch(ForwardMode.EXTEND, [length]))
        )
    return _medians(times[1:])


def bench_decode(runner: ModelRunner, batch: int, context: int, steps: int) -> tuple[float, float]:
    """(wall, CPU) median seconds of one decode step of `batch` requests, after 3 warm-up steps."""
    fresh(runner)
    reqs = Requests(runner, batch, context)
    times = [
        timed_forward(runner, reqs.batch(ForwardMode.DECODE, [1] * batch)) for _ in range(steps + 3)
    ]
    return _medians(times[3:])


def _medians(times: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def report(label: str, tokens: int, wall: float, cpu: float) -> None:
    print(
        f"{label:28s} {tokens / wall:8.0f} tok/s  {wall * 1e3:7.1f} ms  (cpu {cpu * 1e3:7.1f} ms)"
    )


def profile_decode(runner: ModelRunner, batch: int, context: int, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    fresh(runner)
    reqs = Requests(runner, batch, context)
    for _ in range(3):
        runner.forward(reqs.batch(ForwardMode.DECODE, [1] * batch))
    fbs = [reqs.batch(ForwardMode.DECODE, [1] * batch) for _ in range(5)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for fb in fbs:
            runner.forward(fb)
    print(f"\n== decode step profile: batch {batch}, context {context} (5 steps) ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--prefill-len", type=int, default=512)
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--quantization",
        nargs="+",
        default=["auto"],
        help="one or more --quantization modes, run one after the other in this command",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()
    print(f"load average before: {_loadavg()}")
    for mode in args.quantization:
        runner = ModelRunner(
            ServerArgs(
                model_path=args.model_path,
                dtype=args.dtype,
                num_threads=args.threads,
                quantization=mode,
            )
        )
        most = max(args.batches)
        runner.init_memory_pool(
            max_total_tokens=most * (args.context + args.steps + 16) + 4096,
            max_running_requests=max(most, 8),
        )
        print(f"== quantization {mode}: {runner.quant_report.summary()}")
        print(f"device {runner.device}, dtype {runner.dtype}, threads {torch.get_num_threads()}")
        report(
            f"prefill {args.prefill_len}",
            args.prefill_len,
            *bench_prefill(runner, args.prefill_len, 3),
        )
        for batch in args.batches:
            wall, cpu = bench_decode(runner, batch, args.context, args.steps)
            report(f"decode batch {batch} @ ctx {args.context}", batch, wall, cpu)
        if not args.no_profile:
            profile_decode(runner, 1, args.context, rows=20)
            profile_decode(runner, most, args.context, rows=20)
    print(f"load average after: {_loadavg()}")


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
