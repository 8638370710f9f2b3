"""Draw the paper suite's figure from its results: `python benchmark/paper_plots.py [JSON]`.

Four panels from benchmark/results/paper_suite.json (written by benchmark/paper_suite.py):
output throughput vs concurrency (bench_serving, ours and llama-server), items/s per workload,
cache hit rate per workload, and the distributions (CDF) of TTFT and ITL at the highest
concurrency. Saves paper_suite.png beside the JSON. Needs matplotlib
(`pip install -e .[bench]`), imported only here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "paper_suite.json"
COLORS = {"sglang": "tab:blue", "llama.cpp": "tab:orange"}


def _servers(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["server"] for r in rows))


def plot_sweep(ax: Any, sweep: list[dict]) -> None:
    for server in _servers(sweep):
        points = sorted(
            (p["concurrency"], p["output_throughput"]) for p in sweep if p["server"] == server
        )
        ax.plot(*zip(*points), marker="o", label=server, color=COLORS.get(server))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("output tokens/s")
    ax.set_title("bench_serving: throughput vs concurrency")
    ax.legend()


def plot_bars(ax: Any, workloads: list[dict], key: str, title: str, scale: float = 1.0) -> None:
    """Grouped bars: one group per workload, one bar per server."""
    names = list(dict.fromkeys(w["workload"] for w in workloads))
    servers = _servers(workloads)
    width = 0.8 / max(len(servers), 1)
    for k, server in enumerate(servers):
        values = [
            next(
                (scale * w[key] for w in workloads if w["workload"] == n and w["server"] == server),
                0.0,
            )
            for n in names
        ]
        xs = [i + k * width for i in range(len(names))]
        ax.bar(xs, values, width, label=server, color=COLORS.get(server))
    ax.set_xticks([i + width * (len(servers) - 1) / 2 for i in range(len(names))], names)
    ax.set_title(title)
    ax.legend()


def plot_cdfs(ax: Any, sweep: list[dict]) -> None:
    """TTFT and ITL CDFs at the highest concurrency of the sweep."""
    top = max(p["concurrency"] for p in sweep)
    for p in (p for p in sweep if p["concurrency"] == top):
        for key, style in (("ttfts_ms", "-"), ("itls_ms", "--")):
            values = sorted(p[key])
            if values:
                ys = [(i + 1) / len(values) for i in range(len(values))]
                label = f"{p['server']} {key[:-4].upper()}"
                ax.plot(values, ys, style, label=label, color=COLORS.get(p["server"]))
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of requests / tokens")
    ax.set_title(f"TTFT (solid) and ITL (dashed) CDF, concurrency {top}")
    ax.legend(fontsize="small")


def plot(json_path: Path) -> Path:
    """Draw the four panels from json_path; return the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(json_path).read_text())
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    if results["sweep"]:
        plot_sweep(axes[0][0], results["sweep"])
        plot_cdfs(axes[1][1], results["sweep"])
    plot_bars(axes[0][1], results["workloads"], "throughput", "workload items/s")
    plot_bars(axes[1][0], results["workloads"], "cache_hit_rate", "cache hit rate (%)", 100.0)
    machine = results.get("machine", {})
    fig.suptitle(
        f"sglang vs llama.cpp, default model, {machine.get('cpus', '?')} CPUs "
        f"({machine.get('date', '')})"
    )
    fig.tight_layout()
    out = Path(json_path).with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="?", default=str(DEFAULT_JSON))
    args = parser.parse_args()
    if not Path(args.json).is_file():
        raise SystemExit(f"{args.json}: no results yet (run benchmark/paper_suite.py first)")
    print(plot(Path(args.json)))


if __name__ == "__main__":
    main()
