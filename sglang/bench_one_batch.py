"""`python -m sglang.bench_one_batch`: one static batch through the model runner, no server.

For each batch size and input length: prefill the whole batch in one pass, then decode it
greedily one step at a time, and report prefill and decode latency and throughput as SGLang's
tool prints them. Prompts are random token ids (seeded). `--result-filename` appends one JSON
line per (batch size, input length, output length).

    python -m sglang.bench_one_batch --batch-size 1 8 32 --input-len 256 1024 --output-len 16

Every `launch_server` flag (`--model-path`, `--dtype`, `--quantization`, ...) is accepted.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.server_args import ServerArgs


class StaticBatch:
    """Rows and KV slots of a fixed set of requests on one runner; builds each pass's batch.

    NOTE: the caller owns the runner's pools while a StaticBatch lives; `release()` clears them.
    """

    def __init__(self, runner: ModelRunner, batch_size: int) -> None:
        self.runner = runner
        pool = runner.req_to_token_pool
        assert pool is not None, "call runner.init_memory_pool() first"
        self.rows = [pool.alloc() for _ in range(batch_size)]
        self.lens = [0] * batch_size

    def forward_batch(self, mode: ForwardMode, new_ids: list[list[int]]) -> ForwardBatch:
        """A ForwardBatch appending new_ids[i] to request i (their KV slots allocated here)."""
        counts = [len(ids) for ids in new_ids]
        locs, positions = self.reserve(counts)
        pool = self.runner.req_to_token_pool
        device = self.runner.device
        ids = [t for row in new_ids for t in row]
        return ForwardBatch(
            mode=mode,
            batch_size=len(new_ids),
            input_ids=torch.tensor(ids, dtype=torch.int64, device=device),
            positions=torch.cat(positions).to(device),
            out_cache_loc=torch.cat(locs),
            req_pool_indices=torch.tensor(self.rows, dtype=torch.int64, device=device),
            seq_lens=torch.tensor(self.lens, dtype=torch.int64, device=device),
            req_to_token=pool.req_to_token,
            seq_lens_cpu=list(self.lens),
            extend_prefix_lens_cpu=[n - c for n, c in zip(self.lens, counts)],
            extend_seq_lens_cpu=counts,
        )

    def reserve(self, counts: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Allocate counts[i] KV slots after request i's tokens (no forward pass fills them);
        (slots, positions) per request."""
        pool, alloc = self.runner.req_to_token_pool, self.runner.token_to_kv_pool_allocator
        locs, positions = [], []
        for i, n in enumerate(counts):
            slots = alloc.alloc(n)
            assert slots is not None, "KV pool too small for this batch"
            pool.req_to_token[self.rows[i], self.lens[i] : self.lens[i] + n] = slots
            locs.append(slots)
            positions.append(torch.arange(self.lens[i], self.lens[i] + n))
            self.lens[i] += n
        return locs, positions

    def release(self) -> None:
        """Free every row and slot of the runner's pools."""
        self.runner.req_to_token_pool.clear()
        self.runner.token_to_kv_pool_allocator.clear()


# ---------------------------------------------------------------- one measured run


@dataclass
class BatchResult:
    """One (batch size, input length, output length) run; latencies in seconds."""

    run_name: str
    batch_size: int
    input_len: int
    output_len: int
    prefill_latency: float
    prefill_throughput: float
    median_decode_latency: float
    median_decode_throughput: float
    total_latency: float
    overall_throughput: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _greedy(runner: ModelRunner, fb: ForwardBatch) -> tuple[list[list[int]], float]:
    """Run one pass; (the next token of each request as a one-token row, seconds)."""
    _sync(runner.device)
    start = time.perf_counter()
    logits = runner.forward(fb).next_token_logits  # [B, V]
    next_ids = logits.argmax(dim=-1).tolist()
    _sync(runner.device)
    return [[t] for t in next_ids], time.perf_counter() - start


def random_prompts(batch_size: int, input_len: int, vocab_size: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab_size, (batch_size, input_len), generator=gen).tolist()


def run_once(
    runner: ModelRunner,
    run_name: str,
    batch_size: int,
    input_len: int,
    output_len: int,
    log_decode_step: int = 0,
    verbose: bool = True,
) -> BatchResult:
    """Prefill one batch of random prompts, decode output_len - 1 steps, print as SGLang does."""
    say: Callable[[str], None] = print if verbose else (lambda _: None)
    batch = StaticBatch(runner, batch_size)
    prompts = random_prompts(batch_size, input_len, runner.model_config.vocab_size, seed=0)
    try:
        tokens, prefill = _greedy(runner, batch.forward_batch(ForwardMode.EXTEND, prompts))
        say(
            f"Prefill. latency: {prefill:6.5f} s, throughput: {batch_size * input_len / prefill:9.2f} token/s"
        )
        decodes = []
        for step in range(output_len - 1):
            tokens, seconds = _greedy(runner, batch.forward_batch(ForwardMode.DECODE, tokens))
            decodes.append(seconds)
            if step < 5 or (log_decode_step and step % log_decode_step == 0):
                say(
                    f"Decode {step}. Batch size: {batch_size}, latency: {seconds:6.5f} s, throughput: {batch_size / seconds:9.2f} token/s"
                )
    finally:
        batch.release()
    return _result(run_name, batch_size, input_len, output_len, prefill, decodes, say)


def _result(
    run_name: str,
    batch_size: int,
    input_len: int,
    output_len: int,
    prefill: float,
    decodes: list[float],
    say: Callable[[str], None],
) -> BatchResult:
    median = statistics.median(decodes) if decodes else 0.0
    total = prefill + sum(decodes)
    if decodes:
        say(
            f"Decode.  median latency: {median:6.5f} s, median throughput: {batch_size / median:9.2f} token/s"
        )
    overall = batch_size * (input_len + output_len) / total
    say(f"Total. latency: {total:6.3f} s, throughput: {overall:9.2f} token/s")
    return BatchResult(
        run_name,
        batch_size,
        input_len,
        output_len,
        prefill,
        batch_size * input_len / prefill,
        median,
        batch_size / median if median else 0.0,
        total,
        overall,
    )


# ---------------------------------------------------------------- command line


def make_runner(server_args: ServerArgs, bench_args: argparse.Namespace) -> ModelRunner:
    """A runner whose KV pool holds the largest batch of the sweep."""
    runner = ModelRunner(server_args)
    longest = max(bench_args.input_len) + max(bench_args.output_len)
    if longest > runner.model_config.context_len:
        raise SystemExit(
            f"input len + output len = {longest} is beyond the model's context length "
            f"{runner.model_config.context_len}"
        )
    most = max(bench_args.batch_size)
    tokens = most * (longest + 8)
    runner.init_memory_pool(max_total_tokens=tokens + 256, max_running_requests=max(most, 8))
    return runner


def run_sweep(runner: ModelRunner, args: argparse.Namespace) -> list[BatchResult]:
    """A short warm-up pass, then every (batch size, input length, output length)."""
    print("Warmup ...")
    run_once(
        runner, args.run_name, args.batch_size[0], min(args.input_len[0], 32), 4, verbose=False
    )
    results = []
    for bs, il, ol in itertools.product(args.batch_size, args.input_len, args.output_len):
        print(f"Benchmark ... batch size {bs}, input len {il}, output len {ol}")
        results.append(run_once(runner, args.run_name, bs, il, ol, args.log_decode_step))
    return results


def write_results(path: str, results: list[BatchResult]) -> None:
    with open(path, "a") as f:
        for r in results:
            f.write(json.dumps(dataclasses.asdict(r)) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sglang.bench_one_batch", description=__doc__.split("\n\n")[0]
    )
    ServerArgs.add_cli_args(parser)
    parser.add_argument("--run-name", default="default")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1])
    parser.add_argument("--input-len", type=int, nargs="+", default=[1024])
    parser.add_argument("--output-len", type=int, nargs="+", default=[16])
    parser.add_argument("--result-filename", default="result.jsonl", help="'' writes no file")
    parser.add_argument("--log-decode-step", type=int, default=0, help="log every N decode steps")
    return parser


def parse_args(argv: Optional[list[str]] = None) -> tuple[ServerArgs, argparse.Namespace]:
    """(the runner's ServerArgs, the bench flags); bad values exit naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("batch_size", "input_len", "output_len"):
        bad = [v for v in getattr(args, flag) if v < 1]
        if bad:
            parser.error(f"--{flag.replace('_', '-')} values must be at least 1, got {bad[0]}")
    try:
        server_args = ServerArgs.from_cli_args(args)
    except ValueError as e:
        parser.error(str(e))
    return server_args, args


def main(argv: Optional[list[str]] = None) -> list[BatchResult]:
    server_args, args = parse_args(argv)
    runner = make_runner(server_args, args)
    results = run_sweep(runner, args)
    if args.result_filename:
        write_results(args.result_filename, results)
    return results


if __name__ == "__main__":
    main()
