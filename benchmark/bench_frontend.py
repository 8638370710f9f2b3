"""Frontend overhead per gen over a bare /generate call, and run_batch throughput with batching.

python benchmark/bench_frontend.py                      # starts a server on the default model
python benchmark/bench_frontend.py --url http://127.0.0.1:30000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from typing import Any, Callable, Optional

import requests

# sglang from this checkout, without installing it
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sglang as sgl  # noqa: E402
from sglang.lang.backend.base import BaseBackend  # noqa: E402

PROMPT = "Q: What is the capital of France?\nA:"


@sgl.function
def one_gen(s, prompt):
    s += prompt + sgl.gen("a", max_tokens=1)


@sgl.function
def short_qa(s, question):
    s += "Answer in a few words.\n"
    s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=16, ignore_eos=True)


class InstantBackend(BaseBackend):
    """Answers at once: what is left is the interpreter's own cost."""

    def generate(self, s: Any, sampling_params: Any) -> tuple[str, dict[str, Any]]:
        return " Paris", {}


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_overhead(url: str, n: int) -> dict[str, float]:
    """Median seconds of a bare /generate and of a one-gen program; calls are interleaved."""
    session = requests.Session()
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 1, "temperature": 0}}
    endpoint = sgl.RuntimeEndpoint(url)

    def bare() -> None:
        session.post(url + "/generate", json=body, timeout=600).raise_for_status()

    def program() -> None:
        one_gen.run(prompt=PROMPT, temperature=0, backend=endpoint)["a"]

    bare(), program()  # warm up connections and the prefix cache
    bare_s, prog_s = [], []
    for _ in range(n):
        bare_s.append(timed(bare))
        prog_s.append(timed(program))
    instant = InstantBackend()
    interp_s = [timed(lambda: one_gen.run(prompt=PROMPT, backend=instant)["a"]) for _ in range(n)]
    return {
        "bare_ms": 1e3 * statistics.median(bare_s),
        "program_ms": 1e3 * statistics.median(prog_s),
        "overhead_ms": 1e3 * statistics.median([p - b for p, b in zip(prog_s, bare_s)]),
        "interpreter_only_ms": 1e3 * statistics.median(interp_s),
    }


class BatchSizeSampler:
    """Polls /get_server_info for the number of running requests while a batch runs."""

    def __init__(self, url: str, period_s: float = 0.2) -> None:
        self.url, self.period_s = url, period_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        session = requests.Session()
        while not self._stop.wait(self.period_s):
            info = session.get(self.url + "/get_server_info", timeout=30).json()
            if "num_running_reqs" in info:
                self.samples.append(int(info["num_running_reqs"]))

    def __enter__(self) -> "BatchSizeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def window_mean_batch(before: dict[str, Any], after: dict[str, Any]) -> Optional[float]:
    """The server's mean decode batch size between two /get_server_info snapshots."""
    keys = ("mean_running_batch_size", "num_decode_steps")
    if not all(k in before and k in after for k in keys):
        return None
    steps = after["num_decode_steps"] - before["num_decode_steps"]
    if steps <= 0:
        return None
    total = after[keys[0]] * after[keys[1]] - before[keys[0]] * before[keys[1]]
    return total / steps


def bench_batch(url: str, size: int) -> dict[str, Any]:
    endpoint = sgl.RuntimeEndpoint(url)
    batch = [{"question": f"What is {i} plus {i}?"} for i in range(size)]
    before = endpoint.get_server_info()
    with BatchSizeSampler(url) as sampler:
        start = time.perf_counter()
        states = short_qa.run_batch(batch, temperature=0, backend=endpoint)
        tokens = sum(s.get_meta_info("answer")["completion_tokens"] for s in states)
        wall = time.perf_counter() - start
    after = endpoint.get_server_info()
    return {
        "programs": size,
        "wall_s": wall,
        "programs_per_s": size / wall,
        "output_tokens_per_s": tokens / wall,
        "server_mean_running_batch": window_mean_batch(before, after),
        "max_running_reqs_seen": max(sampler.samples, default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; without it one is started")
    parser.add_argument("--num-calls", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    runtime = None if args.url else sgl.Runtime(log_level="warning")
    url = args.url or runtime.url
    try:
        overhead = bench_overhead(url, args.num_calls)
        print(f"per-gen (median of {args.num_calls}, max_new_tokens=1):")
        for key, value in overhead.items():
            print(f"  {key:>22}: {value:8.2f}")
        result = bench_batch(url, args.batch_size)
        print(f"run_batch of {args.batch_size} short programs:")
        for key, value in result.items():
            print(f"  {key:>26}: {value if not isinstance(value, float) else round(value, 2)}")
    finally:
        if runtime is not None:
            runtime.shutdown()


if __name__ == "__main__":
    main()
