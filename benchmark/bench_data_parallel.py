"""Data parallelism: the interleaved shared-prefix few-shot workload on four set-ups.

The workload is paper_workloads' MMLU-style one: several subjects, each with its own few-shot
prefix, consecutive requests from different subjects (so every prefix is in use at once), a
few greedy tokens each. It runs against
  1. one server (all cores),
  2. sglang-router --policy round_robin in front of two servers (half the cores each),
  3. sglang-router --policy cache_aware in front of the same two servers,
  4. one server with --dp-size 2 (its own cache-aware routing between two replicas),
and reports throughput (requests/s, prompt tokens/s) and the cache hit rate (cached prompt
tokens / prompt tokens, from every answer's meta_info) of each.

The router is SGLang's (PyPI sglang-router, run from its own venv: it pulls its own web stack);
tests/e2e/test_real_clients.py leaves one at ~/.cache/sglang-test-venvs/sglang-router-0.3.2.

    python benchmark/bench_data_parallel.py                      # the default model, 256 requests
    python benchmark/bench_data_parallel.py --num 16 --model-path /path/to/tiny   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    ServerProcess,
    flush_cache,
    free_port,
    generate,
    print_env,
    run_concurrently,
    start_sglang_server,
)
from paper_workloads import mmlu_items  # noqa: E402

DEFAULT_ROUTER_PYTHON = (
    Path.home() / ".cache" / "sglang-test-venvs" / "sglang-router-0.3.2" / "bin" / "python"
)
ANSWER_TOKENS = 3


@dataclass
class Outcome:
    """One set-up's figures."""

    setup: str
    seconds: float
    requests: int
    prompt_tokens: int
    cached_tokens: int

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.seconds

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def prompts(num: int) -> list[str]:
    return [prefix + q.render(with_answer=False) for prefix, q in mmlu_items(num)]


def run_workload(setup: str, url: str, texts: list[str], concurrency: int) -> Outcome:
    """Send every prompt (greedy, ANSWER_TOKENS each) with `concurrency` in flight."""

    def one(text: str) -> dict[str, Any]:
        params = {"max_new_tokens": ANSWER_TOKENS, "temperature": 0}
        return generate(url, {"text": text, "sampling_params": params})["meta_info"]

    start = time.perf_counter()
    metas = run_concurrently(one, texts, concurrency)
    seconds = time.perf_counter() - start
    prompt = sum(m["prompt_tokens"] for m in metas)
    cached = sum(m.get("cached_tokens", 0) for m in metas)
    return Outcome(setup, seconds, len(metas), prompt, cached)


def server_args(model_path: str | None, threads: int, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["--num-threads", str(threads), *extra]
    return args + (["--model-path", model_path] if model_path else [])


@contextlib.contextmanager
def router(python: Path, workers: list[str], policy: str) -> Iterator[str]:
    """sglang-router in front of `workers`; yields its URL once it answers."""
    if not python.exists():
        raise SystemExit(
            f"no sglang-router at {python}: make a venv with `pip install sglang-router==0.3.2` "
            "and pass its python with --router-python"
        )
    port = free_port()
    cmd = [
        str(python), "-m", "sglang_router.launch_router", "--worker-urls", *workers,
        "--policy", policy, "--host", "127.0.0.1", "--port", str(port),
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
    ]  # fmt: skip
    server = ServerProcess.start(cmd, f"http://127.0.0.1:{port}")
    try:
        _wait_for_workers(server.url, len(workers))
        yield server.url
    finally:
        server.stop()


def _wait_for_workers(url: str, count: int, timeout: float = 120.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException, ValueError):
            if len(requests.get(url + "/workers", timeout=5).json().get("workers", [])) >= count:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the router at {url} did not register {count} workers")


def measure(setup: str, url: str, texts: list[str], concurrency: int, flush: list[str]) -> Outcome:
    for _ in range(4):  # warm-up (compiled kernels), spread over the workers
        generate(url, {"text": "Warm up.", "sampling_params": {"max_new_tokens": 2}})
    for u in flush:  # every set-up starts from cold caches
        flush_cache(u)
    outcome = run_workload(setup, url, texts, concurrency)
    print(f"# {setup}: {outcome.seconds:.1f}s", flush=True)
    return outcome


def run_all(args: argparse.Namespace) -> list[Outcome]:
    texts = prompts(args.num)
    cores = args.cores or os.cpu_count() or 1
    half = max(1, cores // 2)
    outcomes = []
    with start_sglang_server(server_args(args.model_path, cores)) as one:
        outcomes.append(measure("one server", one.url, texts, args.concurrency, [one.url]))
    with (
        start_sglang_server(server_args(args.model_path, half)) as a,
        start_sglang_server(server_args(args.model_path, half)) as b,
    ):
        for policy in ("round_robin", "cache_aware"):
            with router(args.router_python, [a.url, b.url], policy) as url:
                setup = f"router {policy}, 2 servers"
                outcomes.append(measure(setup, url, texts, args.concurrency, [a.url, b.url]))
    dp_args = server_args(args.model_path, half, ("--dp-size", "2"))
    with start_sglang_server(dp_args) as dp:
        outcomes.append(measure("--dp-size 2", dp.url, texts, args.concurrency, [dp.url]))
    return outcomes


def print_outcomes(outcomes: list[Outcome], args: argparse.Namespace) -> None:
    print(f"\n## Interleaved shared-prefix few-shot: {args.num} requests, "
          f"{args.concurrency} in flight, {ANSWER_TOKENS} tokens each\n")  # fmt: skip
    print("| set-up | requests/s | prompt tokens/s | cache hit rate |")
    print("|---|---:|---:|---:|")
    for o in outcomes:
        print(
            f"| {o.setup} | {o.requests_per_s:.2f} | {o.prompt_tokens_per_s:,.0f} | "
            f"{o.cache_hit_rate:.1%} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=256, help="requests per set-up")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--model-path", default=None, help="None: the embedded default model")
    parser.add_argument("--cores", type=int, default=None, help="None: os.cpu_count()")
    parser.add_argument("--router-python", type=Path, default=DEFAULT_ROUTER_PYTHON)
    args = parser.parse_args(argv)
    for name in ("num", "concurrency"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    print_env()
    print_outcomes(run_all(args), args)


if __name__ == "__main__":
    main()
