"""The SGLang paper's workloads and a serving sweep: ours vs llama.cpp's llama-server, one run.

Runs, on our server and then on llama-server (same GGUF, same prompts; built on demand by
benchmark/llama_cpp.py):

- the workloads of benchmark/paper_workloads.py (mmlu with four interleaved few-shot subjects,
  hellaswag `select`, multi-turn chat, tree of thought on GSM8K, JSON with a schema): items/s,
  output tok/s, the cache hit rate (cached / prompt tokens, as each server reports them),
  accuracy where there is a right answer, and the share of well-formed answers;
- `python -m sglang.bench_serving` at each concurrency of --concurrency-list (random prompts,
  our `sglang` backend vs llama-server's OpenAI route): throughput, TTFT and ITL;
- with --all, also our `bench_one_batch` and `bench_offline_throughput` (ours only), once the
  servers are stopped.

Writes to --out-dir (default benchmark/results/): paper_suite.json (every figure, per-request
TTFT/ITL of the sweep included), paper_suite_workloads.csv, paper_suite_sweep.csv,
paper_suite.md (the table) and, with --plot, paper_suite.png (benchmark/paper_plots.py draws it;
`python benchmark/paper_plots.py` redraws it from the JSON).

    python benchmark/paper_suite.py --all --plot          # the README's figures
    python benchmark/paper_suite.py --workloads mmlu,json --no-llama --no-sweep
    python benchmark/paper_suite.py --sizes mmlu=8,tot=2 --concurrency-list 1,4
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    REPO_ROOT,
    ServerProcess,
    attach_or_start,
    flush_cache,
    free_port,
    print_env,
    run_concurrently,
)
from paper_workloads import (  # noqa: E402
    WORKLOADS,
    Ask,
    Client,
    ItemResult,
    LlamaClient,
    OursClient,
    Workload,
)

RESULTS_DIR = REPO_ROOT / "benchmark" / "results"
# bench_serving figures kept per sweep point (its per-request arrays are kept as well).
SWEEP_FIELDS = [
    "completed", "duration", "request_throughput", "input_throughput", "output_throughput",
    "total_throughput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_itl_ms",
    "median_itl_ms", "p99_itl_ms", "mean_e2e_latency_ms", "median_e2e_latency_ms",
    "p99_e2e_latency_ms", "cache_hit_rate",
]  # fmt: skip


@dataclass
class WorkloadResult:
    """One workload on one server."""

    workload: str
    server: str
    unit: str
    items: int
    seconds: float
    throughput: float  # items/s
    output_tok_s: float
    prompt_tokens: int
    cached_tokens: int
    cache_hit_rate: float
    accuracy: Optional[float]
    valid_rate: float


def summarize(
    workload: Workload, server: str, results: list[ItemResult], seconds: float
) -> WorkloadResult:
    outs = [c for r in results for c in r.completions]
    prompt = sum(c.prompt_tokens for c in outs)
    cached = sum(c.cached_tokens for c in outs)
    graded = [r.correct for r in results if r.correct is not None]
    return WorkloadResult(
        workload.name,
        server,
        workload.unit,
        len(results),
        seconds,
        len(results) / seconds,
        sum(c.output_tokens for c in outs) / seconds,
        prompt,
        cached,
        cached / prompt if prompt else 0.0,
        sum(graded) / len(graded) if graded else None,
        sum(r.valid for r in results) / max(len(results), 1),
    )


def run_workload(client: Client, workload: Workload, size: int, concurrency: int) -> WorkloadResult:
    """All items of one workload, `concurrency` at a time, timed as a whole."""
    items = workload.make(size)
    start = time.perf_counter()
    results = run_concurrently(lambda item: workload.run(client, item), items, concurrency)
    result = summarize(workload, client.name, results, time.perf_counter() - start)
    print(_describe(result), flush=True)
    return result


def _describe(r: WorkloadResult) -> str:
    acc = "-" if r.accuracy is None else f"{r.accuracy:.1%}"
    return (
        f"# {r.workload} [{r.server}]: {r.items} {r.unit} in {r.seconds:.1f}s = "
        f"{r.throughput:.2f} {r.unit}/s, {r.output_tok_s:.0f} output tok/s; cache hit "
        f"{r.cache_hit_rate:.1%}; accuracy {acc}; well-formed {r.valid_rate:.0%}"
    )


# ---------------------------------------------------------------- the serving sweep


def sweep_point(url: str, backend: str, concurrency: int, args: argparse.Namespace) -> dict:
    """One `python -m sglang.bench_serving` run at `concurrency`; its record, trimmed."""
    from sglang import bench_serving

    flags = [
        "--backend", backend, "--base-url", url, "--dataset-name", "random",
        "--num-prompts", str(max(8, 2 * concurrency)), "--max-concurrency", str(concurrency),
        "--random-input-len", str(args.sweep_input_len),
        "--random-output-len", str(args.sweep_output_len), "--random-range-ratio", "1.0",
        "--output-file", str(Path(args.out_dir) / "bench_serving.jsonl"),
        "--output-details", "--disable-tqdm", "--tokenizer", args.tokenizer,
    ]  # fmt: skip
    record = bench_serving.main(flags)
    kept = {k: record[k] for k in SWEEP_FIELDS}
    kept["ttfts_ms"] = [1000 * t for t in record["ttfts"]]
    kept["itls_ms"] = [1000 * x for per_req in record["itls"] for x in per_req]
    return {"concurrency": concurrency, **kept}


def run_sweep(url: str, backend: str, server: str, args: argparse.Namespace) -> list[dict]:
    points = []
    for c in _ints(args.concurrency_list):
        flush_cache(url)
        points.append({"server": server, **sweep_point(url, backend, c, args)})
    return points


# ---------------------------------------------------------------- one server, every section


def run_server(client: Client, backend: str, args: argparse.Namespace) -> dict[str, list]:
    """The selected workloads, then the sweep, on one running server."""
    client.complete(Ask("Warm-up: the sky is", 2))
    workloads = []
    for name in _names(args.workloads):
        if isinstance(client, OursClient):
            flush_cache(client.url)  # each workload starts from an empty cache
        size = _sizes(args.sizes).get(name, WORKLOADS[name].default_size)
        workloads.append(run_workload(client, WORKLOADS[name], size, args.concurrency))
    sweep = [] if args.no_sweep else run_sweep(client.url, backend, client.name, args)
    return {"workloads": [asdict(w) for w in workloads], "sweep": sweep}


def run_ours(args: argparse.Namespace) -> dict[str, list]:
    extra = args.server_args.split() if args.server_args else []
    with attach_or_start(args.url, extra) as server:
        if not args.tokenizer:
            args.tokenizer = _server_tokenizer(server.url)
        return run_server(OursClient(server.url), "sglang", args)


def run_llama(args: argparse.Namespace) -> dict[str, list]:
    with _llama_server(args) as server:
        return run_server(LlamaClient(server.url), "llama.cpp", args)


def _llama_server(args: argparse.Namespace) -> ServerProcess:
    """The running llama-server at --llama-url, or one started (and built if need be)."""
    if args.llama_url:
        return attach_or_start(args.llama_url)
    import llama_cpp

    if llama_cpp.binary_path() is None:
        print("# llama-server is not built yet: building it (once, ~15 min)", flush=True)
        llama_cpp.build()
    n = args.llama_np
    flags = ["-t", str(args.threads), "-np", str(n), "-c", str(n * args.llama_ctx_per_slot)]
    # an HTTP thread per slot and then some: by default it takes fewer connections than the
    # sweep keeps in flight, and refuses the rest
    flags += ["--threads-http", str(n + 4)]
    flags += args.llama_args.split() if args.llama_args else []
    return llama_cpp.start_llama_server(free_port(), flags)


def _server_tokenizer(url: str) -> str:
    import requests

    return requests.get(f"{url}/get_model_info", timeout=30).json()["tokenizer_path"]


# ---------------------------------------------------------------- the CLIs at real size (ours)


def run_clis(args: argparse.Namespace) -> dict[str, list]:
    """bench_one_batch and bench_offline_throughput, each its own process; their JSON lines."""
    out = Path(args.out_dir)
    runs = {
        "bench_one_batch": [
            "--batch-size", "1", "16", "64", "--input-len", "256", "--output-len", "32",
        ],
        "bench_offline_throughput": [
            "--dataset-name", "random", "--num-prompts", "64", "--random-input-len", "256",
            "--random-output-len", "64", "--random-range-ratio", "1.0",
        ],
    }  # fmt: skip
    records = {}
    for name, flags in runs.items():
        path = out / f"{name}.jsonl"
        path.unlink(missing_ok=True)
        key = "--result-filename"
        cmd = [sys.executable, "-m", f"sglang.{name}", *flags, key, str(path)]
        print("# " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO_ROOT)
        records[name] = [json.loads(line) for line in path.read_text().splitlines()]
    return records


# ---------------------------------------------------------------- output files


def write_outputs(results: dict, out_dir: Path) -> str:
    """paper_suite.json, the two CSVs and the markdown table; returns the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "paper_suite.json").write_text(json.dumps(results, indent=1) + "\n")
    _write_csv(out_dir / "paper_suite_workloads.csv", results["workloads"])
    sweep = [{k: v for k, v in p.items() if not k.endswith("s_ms")} for p in results["sweep"]]
    _write_csv(out_dir / "paper_suite_sweep.csv", sweep)
    table = markdown_table(results)
    (out_dir / "paper_suite.md").write_text(table + "\n")
    return table


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.unlink(missing_ok=True)
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _cell(row: Optional[dict], key: str, fmt: str) -> str:
    if row is None or row.get(key) is None:
        return "-"
    return format(row[key], fmt)


def _pairs(rows: list[dict], key: str) -> Iterator[tuple[Any, Optional[dict], Optional[dict]]]:
    """(key value, our row, the peer's row) in first-seen order."""
    seen = list(dict.fromkeys(r[key] for r in rows))
    for value in seen:
        ours = next((r for r in rows if r[key] == value and r["server"] == "sglang"), None)
        peer = next((r for r in rows if r[key] == value and r["server"] != "sglang"), None)
        yield value, ours, peer


def _ratio(ours: Optional[dict], peer: Optional[dict], key: str) -> str:
    if not ours or not peer or not peer.get(key):
        return "-"
    return f"{ours[key] / peer[key]:.2f}x"


def markdown_table(results: dict) -> str:
    """The workloads and the sweep, ours vs the peer, side by side."""
    lines = [
        "| workload | sglang (items/s) | llama.cpp (items/s) | ratio | cache hit sglang / "
        "llama.cpp | accuracy sglang / llama.cpp | well-formed sglang / llama.cpp |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, ours, peer in _pairs(results["workloads"], "workload"):
        unit = (ours or peer)["unit"]
        lines.append(
            f"| {name} ({unit}) | {_cell(ours, 'throughput', '.2f')} | "
            f"{_cell(peer, 'throughput', '.2f')} | {_ratio(ours, peer, 'throughput')} | "
            f"{_cell(ours, 'cache_hit_rate', '.1%')} / {_cell(peer, 'cache_hit_rate', '.1%')} | "
            f"{_cell(ours, 'accuracy', '.1%')} / {_cell(peer, 'accuracy', '.1%')} | "
            f"{_cell(ours, 'valid_rate', '.0%')} / {_cell(peer, 'valid_rate', '.0%')} |"
        )
    if results["sweep"]:
        lines += ["", *_sweep_table(results["sweep"])]
    return "\n".join(lines)


def _sweep_table(sweep: list[dict]) -> list[str]:
    lines = [
        "| concurrency | output tok/s sglang | output tok/s llama.cpp | ratio | median TTFT ms "
        "sglang / llama.cpp | median ITL ms sglang / llama.cpp |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for c, ours, peer in _pairs(sweep, "concurrency"):
        lines.append(
            f"| {c} | {_cell(ours, 'output_throughput', '.1f')} | "
            f"{_cell(peer, 'output_throughput', '.1f')} | "
            f"{_ratio(ours, peer, 'output_throughput')} | "
            f"{_cell(ours, 'median_ttft_ms', '.0f')} / {_cell(peer, 'median_ttft_ms', '.0f')} | "
            f"{_cell(ours, 'median_itl_ms', '.1f')} / {_cell(peer, 'median_itl_ms', '.1f')} |"
        )
    return lines


# ---------------------------------------------------------------- command line


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload {unknown[0]!r}; known: {', '.join(WORKLOADS)}")
    return names


def _sizes(text: str) -> dict[str, int]:
    """'mmlu=8,tot=2' -> {'mmlu': 8, 'tot': 2}."""
    sizes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in WORKLOADS or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--sizes entry {part!r}: expected WORKLOAD=N with N >= 1")
        sizes[name] = int(value)
    return sizes


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise ValueError(f"--concurrency-list {text!r}: expected positive integers")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--all", action="store_true", help="also run bench_one_batch / bench_offline_throughput")
    add("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    add("--sizes", default="", help="items per workload, e.g. mmlu=8,tot=2")
    add("--concurrency", type=int, default=16, help="items in flight per workload")
    add("--no-sweep", action="store_true", help="skip the bench_serving sweep")
    add("--concurrency-list", default="1,4,16", help="bench_serving --max-concurrency values")
    add("--sweep-input-len", type=int, default=128)
    add("--sweep-output-len", type=int, default=64)
    add("--url", help="our running server (else one is started)")
    add("--server-args", default="", help="extra launch_server arguments")
    add("--no-llama", action="store_true", help="ours only")
    add("--llama-url", help="a running llama-server (else one is started)")
    add("--llama-np", type=int, default=16, help="llama-server -np (parallel slots)")
    add("--llama-ctx-per-slot", type=int, default=2048)
    add("--threads", type=int, default=2, help="llama-server -t")
    add("--llama-args", default="", help="extra llama-server arguments")
    add("--tokenizer", default="", help="tokenizer for bench_serving's counts (default: ours)")
    add("--out-dir", default=str(RESULTS_DIR))
    add("--plot", action="store_true", help="draw paper_suite.png (needs matplotlib)")
    return parser


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _names(args.workloads), _sizes(args.sizes), _ints(args.concurrency_list)
        if args.concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1, got {args.concurrency}")
    except ValueError as e:
        parser.error(str(e))
    return args


def _machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    print_env()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / "bench_serving.jsonl").unlink(missing_ok=True)
    results: dict[str, Any] = {"machine": _machine(), "command": " ".join(sys.argv)}
    sections: list[Callable[[argparse.Namespace], dict[str, list]]] = [run_ours]
    if not args.no_llama:
        sections.append(run_llama)
    parts = [section(args) for section in sections]
    results["workloads"] = [w for p in parts for w in p["workloads"]]
    results["sweep"] = [s for p in parts for s in p["sweep"]]
    if args.all:
        results["clis"] = run_clis(args)
    print(write_outputs(results, Path(args.out_dir)), flush=True)
    if args.plot:
        from paper_plots import plot

        print(f"# figure: {plot(Path(args.out_dir) / 'paper_suite.json')}")
    return results


if __name__ == "__main__":
    main()
