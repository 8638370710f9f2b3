"""Load and soak: many concurrent clients for a few minutes on a small KV pool; nothing lost.

Starts our server on loopback with a KV pool small enough to force retraction (or uses a
loopback `--url`), then runs `--clients` concurrent clients for `--minutes`: each loops over
/generate requests of mixed prompt and output lengths, streamed or not, and now and then goes
away mid-request (a disconnect). Then it reports:

- served: a 200 with a finish reason (streamed: ending with [DONE]);
- failed: an error status (e.g. 503 with Retry-After under overload) or an error event;
- lost: a 200 without a finish reason, an aborted one, or a stream cut without [DONE] that the
  client did not drop itself (must be 0);
- p50/p99 time to first token (streamed requests) and latency (unstreamed ones);
- retractions, from /get_server_info;
- KV slots leaked: max_total_tokens - available_kv_tokens after /flush_cache (must be 0);
- the server's resident memory (its processes together) over time.

Bounded: at most 1024 clients and 60 minutes; requests still running `--drain-s` seconds after
the end are cancelled and counted as cut at the end. Exit status 1 if anything was lost or
leaked.

    python benchmark/soak.py                            # 256 clients, 3 minutes (~4 min)
    python benchmark/soak.py --clients 32 --minutes 0.5
    python benchmark/soak.py --url http://127.0.0.1:30000 --json-out soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import attach_or_start, print_env, random_words  # noqa: E402

MAX_CLIENTS = 1024
MAX_MINUTES = 60.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PROMPT_WORDS = (8, 40, 150, 400)
OUTPUT_TOKENS = (4, 16, 64, 200)
DROP_SHARE = 0.1  # of requests, the client goes away before the end


@dataclass
class Tally:
    """What the clients saw, all together."""

    served: int = 0
    failed: int = 0
    lost: int = 0
    dropped: int = 0  # disconnects the clients made on purpose
    cut_at_end: int = 0  # still running when the run was cut (after --drain-s)
    ttft_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    lost_examples: list[str] = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1

    def lose(self, what: str) -> None:
        self.lost += 1
        if len(self.lost_examples) < 5:
            self.lost_examples.append(what[:300])


def request_body(rng: random.Random, stream: bool) -> dict[str, Any]:
    """A /generate body of a random prompt and output length."""
    return {
        "text": random_words(rng, rng.choice(PROMPT_WORDS)),
        "stream": stream,
        "sampling_params": {
            "max_new_tokens": rng.choice(OUTPUT_TOKENS),
            "temperature": rng.choice((0.0, 0.8)),
            "ignore_eos": True,
        },
    }


async def plain_request(session: Any, url: str, body: dict[str, Any], tally: Tally) -> None:
    start = time.perf_counter()
    async with session.post(url + "/generate", json=body) as resp:
        text = await resp.text()
    if resp.status != 200:
        tally.fail(f"HTTP {resp.status}")
        return
    finish = json.loads(text)["meta_info"].get("finish_reason")
    if not finish or finish.get("type") == "abort":
        tally.lose(text)
        return
    tally.served += 1
    tally.latency_s.append(time.perf_counter() - start)


async def streamed_request(
    session: Any, url: str, body: dict[str, Any], tally: Tally, drop_after: Optional[int]
) -> None:
    """Read the SSE stream to [DONE]; with `drop_after`, go away after that many events."""
    start, first, events = time.perf_counter(), None, 0
    async with session.post(url + "/generate", json=body) as resp:
        if resp.status != 200:
            tally.fail(f"HTTP {resp.status}")
            return
        async for raw in resp.content:
            line = raw.strip()
            if line == b"data: [DONE]":
                tally.served += 1
                tally.ttft_s.append((first or time.perf_counter()) - start)
                return
            if not line.startswith(b"data:"):
                continue
            if line.startswith(b'data: {"error"'):
                tally.fail("error event")
                return
            events += 1
            first = first or time.perf_counter()
            if drop_after is not None and events >= drop_after:
                tally.dropped += 1
                return  # leaving the block closes the connection mid-stream
    tally.lose(f"stream ended without [DONE] after {events} events")


async def one_request(session: Any, url: str, rng: random.Random, tally: Tally) -> None:
    """A streamed or unstreamed request; some are dropped part-way by the client."""
    drop = rng.random() < DROP_SHARE
    if rng.random() < 0.5:
        drop_after = rng.randint(1, 8) if drop else None
        await streamed_request(session, url, request_body(rng, True), tally, drop_after)
        return
    call = plain_request(session, url, request_body(rng, False), tally)
    if not drop:
        await call
        return
    try:  # an unstreamed client that gives up waiting: its connection closes
        await asyncio.wait_for(call, timeout=rng.uniform(0.05, 2.0))
    except asyncio.TimeoutError:
        tally.dropped += 1


async def client(i: int, url: str, deadline: float, tally: Tally, seed: int) -> None:
    import aiohttp

    rng = random.Random(seed * 100_003 + i)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as session:
        while time.monotonic() < deadline:
            try:
                await one_request(session, url, rng, tally)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                tally.fail(type(e).__name__)


# -------------------------------------------------------------------- resident memory


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants, MiB."""
    total_kib = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            pass
    return total_kib / 1024


async def sample_memory(pid: int, deadline: float, every_s: float, samples: list) -> None:
    start = time.monotonic()
    while True:
        samples.append((round(time.monotonic() - start), round(rss_mib(pid))))
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(min(every_s, max(0.0, deadline - time.monotonic())))


# -------------------------------------------------------------------- the run


async def run_clients(url: str, pid: Optional[int], args: argparse.Namespace) -> tuple:
    tally, memory = Tally(), []
    deadline = time.monotonic() + args.minutes * 60
    tasks = [
        asyncio.create_task(client(i, url, deadline, tally, args.seed)) for i in range(args.clients)
    ]
    sampler = None
    if pid is not None:
        every = min(10.0, args.minutes * 60 / 6)
        sampler = asyncio.create_task(sample_memory(pid, deadline, every, memory))
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    _, late = await asyncio.wait(tasks, timeout=args.drain_s)
    for task in late:
        task.cancel()
    tally.cut_at_end = len(late)
    await asyncio.gather(*late, return_exceptions=True)
    if sampler is not None:
        await sampler
    return tally, memory


def flush_and_count_leaks(url: str, wait_s: float = 120.0) -> tuple[bool, dict[str, Any]]:
    """Flush the cache once nothing runs (dropped requests are aborted a moment after the
    client goes); whether it flushed, and the server info after."""
    import requests

    deadline = time.monotonic() + wait_s
    flushed = False
    while not flushed and time.monotonic() < deadline:
        flushed = requests.post(url + "/flush_cache", timeout=30).status_code == 200
        if not flushed:
            time.sleep(1)
    return flushed, requests.get(url + "/get_server_info", timeout=30).json()


def percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def report(tally: Tally, memory: list, flushed: bool, info: dict, args: argparse.Namespace) -> dict:
    leaked = info["max_total_tokens"] - info["available_kv_tokens"] if flushed else None
    summary = {
        "clients": args.clients,
        "minutes": args.minutes,
        "max_total_tokens": info["max_total_tokens"],
        "served": tally.served,
        "failed": tally.failed,
        "lost": tally.lost,
        "dropped_by_clients": tally.dropped,
        "cut_at_end": tally.cut_at_end,
        "errors": tally.errors,
        "lost_examples": tally.lost_examples,
        "ttft_p50_s": percentile(tally.ttft_s, 0.5),
        "ttft_p99_s": percentile(tally.ttft_s, 0.99),
        "latency_p50_s": percentile(tally.latency_s, 0.5),
        "latency_p99_s": percentile(tally.latency_s, 0.99),
        "retractions": info.get("num_retractions"),
        "cache_flushed": flushed,
        "kv_slots_leaked_after_flush": leaked,
        "rss_mib_over_time": memory,
    }
    print(json.dumps(summary, indent=1), flush=True)
    return summary


def check_loopback(url: Optional[str]) -> None:
    if url and urlparse(url).hostname not in LOOPBACK:
        raise SystemExit(f"--url must be a loopback address ({', '.join(sorted(LOOPBACK))})")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running server on loopback (default: start one)")
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument(
        "--max-total-tokens", type=int, default=4096, help="KV pool of the server we start"
    )
    parser.add_argument("--drain-s", type=float, default=300.0, help="wait for running requests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", help="also write the report here")
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--clients must be in [1, {MAX_CLIENTS}], --minutes in (0, {MAX_MINUTES}]")
    check_loopback(args.url)
    return args


def main() -> int:
    args = parse_args()
    print_env()
    server = attach_or_start(args.url, ["--max-total-tokens", str(args.max_total_tokens)])
    try:
        pid = server.proc.pid if server.proc is not None else None
        tally, memory = asyncio.run(run_clients(server.url, pid, args))
        flushed, info = flush_and_count_leaks(server.url)
        summary = report(tally, memory, flushed, info, args)
    finally:
        server.stop()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1) + "\n")
    ok = summary["lost"] == 0 and summary["kv_slots_leaked_after_flush"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
