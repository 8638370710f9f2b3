"""`python -m sglang.bench_offline_throughput`: the in-process Engine on a dataset, no HTTP.

All prompts of the dataset (bench_serving's: random, sharegpt from a local file,
generated-shared-prefix) go to `Engine.generate` as one batch; the runtime schedules them with
continuous batching. Prints SGLang's offline summary (request and token throughput) and the
prefix cache's hit rate; `--result-filename` appends it as one JSON line.

    python -m sglang.bench_offline_throughput --dataset-name random --num-prompts 64 \\
        --random-input-len 256 --random-output-len 64

Every `launch_server` flag (`--model-path`, `--quantization`, `--max-running-requests`, ...)
configures the engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any, Optional

from sglang.bench_serving import (
    DatasetRow,
    add_dataset_args,
    add_request_args,
    get_dataset,
    validate_dataset_args,
)
from sglang.srt.server_args import ServerArgs

_LINE = "{:<40} {:<10}"
_NUM = "{:<40} {:<10.2f}"


def sampling_params(rows: list[DatasetRow], args: argparse.Namespace) -> list[dict]:
    """Greedy, each request's own output length, EOS ignored unless --disable-ignore-eos."""
    common = {"temperature": 0.0, "ignore_eos": not args.disable_ignore_eos}
    return [{**common, "max_new_tokens": r.output_len, **args.extra_request_body} for r in rows]


def throughput_run(engine: Any, rows: list[DatasetRow], args: argparse.Namespace) -> dict:
    """Generate every row in one call; the figures SGLang reports."""
    start = time.perf_counter()
    outs = engine.generate([r.prompt for r in rows], sampling_params(rows, args))
    seconds = time.perf_counter() - start
    metas = [o["meta_info"] for o in outs]
    total_in = sum(m["prompt_tokens"] for m in metas)
    total_out = sum(m["completion_tokens"] for m in metas)
    cached = sum(m.get("cached_tokens", 0) for m in metas)
    return {
        "backend": "engine",
        "successful_requests": len(outs),
        "total_latency": seconds,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(outs) / seconds,
        "input_throughput": total_in / seconds,
        "output_throughput": total_out / seconds,
        "total_throughput": (total_in + total_out) / seconds,
        "total_cached_tokens": cached,
        "cache_hit_rate": cached / total_in if total_in else 0.0,
    }


def format_summary(r: dict) -> str:
    """SGLang's offline summary block (plus the prefix cache's lines)."""
    return "\n".join(
        [
            "\n{s:{c}^{n}}".format(s=" Offline Throughput Benchmark Result ", n=50, c="="),
            _LINE.format("Backend:", r["backend"]),
            _LINE.format("Successful requests:", r["successful_requests"]),
            _NUM.format("Benchmark duration (s):", r["total_latency"]),
            _LINE.format("Total input tokens:", r["total_input_tokens"]),
            _LINE.format("Total generated tokens:", r["total_output_tokens"]),
            _NUM.format("Request throughput (req/s):", r["request_throughput"]),
            _NUM.format("Input token throughput (tok/s):", r["input_throughput"]),
            _NUM.format("Output token throughput (tok/s):", r["output_throughput"]),
            _NUM.format("Total token throughput (tok/s):", r["total_throughput"]),
            _LINE.format("Cached prompt tokens:", r["total_cached_tokens"]),
            _NUM.format("Cache hit rate (%):", 100 * r["cache_hit_rate"]),
            "=" * 50,
        ]
    )


def _warm_up(engine: Any, rows: list[DatasetRow], args: argparse.Namespace) -> None:
    """A few short requests first, then an empty cache, so the run starts cold but loaded."""
    warm = [dataclasses.replace(r, output_len=min(r.output_len, 4)) for r in rows[:4]]
    engine.generate([r.prompt for r in warm], sampling_params(warm, args))
    engine.flush_cache()


def run(server_args: ServerArgs, args: argparse.Namespace) -> dict:
    """Start the engine, run the dataset through it, print and return the result."""
    from sglang.srt.entrypoints.engine import Engine

    with Engine(**dataclasses.asdict(server_args)) as engine:
        rows = get_dataset(args, engine.tokenizer_manager.tokenizer)
        if not args.skip_warmup:
            _warm_up(engine, rows, args)
        result = throughput_run(engine, rows, args)
    print(format_summary(result))
    if args.result_filename:
        with open(args.result_filename, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sglang.bench_offline_throughput", description=__doc__.split("\n\n")[0]
    )
    ServerArgs.add_cli_args(parser)
    parser.add_argument("--backend", default="engine", choices=["engine"])
    add_dataset_args(parser)
    parser.add_argument("--result-filename", default="", help="append the result as a JSON line")
    parser.add_argument("--skip-warmup", action="store_true")
    add_request_args(parser)
    return parser


def parse_args(argv: Optional[list[str]] = None) -> tuple[ServerArgs, argparse.Namespace]:
    """(the engine's ServerArgs, the bench flags); bad values exit naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate_dataset_args(args)
        server_args = ServerArgs.from_cli_args(args)
    except ValueError as e:
        parser.error(str(e))
    return server_args, args


def main(argv: Optional[list[str]] = None) -> dict:
    return run(*parse_args(argv))


if __name__ == "__main__":
    main()
