"""Our engine vs llama.cpp's `llama-bench` / `llama-batched-bench` on the same GGUF, one command.

Rows (each llama.cpp figure measured in the same command, same thread count):
  prefill 512:   ours ModelRunner.forward of one 512-token prompt vs llama-bench pp512
  decode 1:      ours 128 decode steps of one stream (from an empty context, as tg128 does)
                 vs llama-bench tg128
  decode B:      ours B streams, 128-token prompts then 128 decode steps, output tok/s
                 vs llama-batched-bench -npp 128 -ntg 128 -npl B (its S_TG column)
  server 1 / B:  the same decode through our HTTP server (/generate, streaming), so the
                 scheduler's per-step work outside the forward is counted; the share of a step
                 spent outside ModelRunner.forward is printed from the two.

Build the llama.cpp tools first: `python benchmark/llama_cpp.py build`.

    python benchmark/bench_vs_llama_bench.py                  # --threads 2, B = 64
    python benchmark/bench_vs_llama_bench.py --server-args "--quantization none"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    default_gguf_path,
    generate,
    run_concurrently,
    start_sglang_server,
    stream_generate,
)
from llama_cpp import run_tool, tool_path  # noqa: E402


def llama_bench(threads: int, reps: int) -> dict[str, float]:
    """{"pp512": tok/s, "tg128": tok/s} from llama-bench."""
    binary = tool_path("llama-bench")
    if binary is None:
        raise SystemExit("llama-bench is not built: python benchmark/llama_cpp.py build")
    cmd = [str(binary), "-m", default_gguf_path(), "-t", str(threads), "-p", "512", "-n", "128"]
    out = run_tool([*cmd, "-r", str(reps), "-o", "json"], ["--repack", "0"]).stdout
    result = {}
    for entry in json.loads(out):
        key = f"pp{entry['n_prompt']}" if entry["n_gen"] == 0 else f"tg{entry['n_gen']}"
        result[key] = float(entry["avg_ts"])
    return result


def llama_batched_bench(threads: int, batches: list[int]) -> dict[int, float]:
    """{B: S_TG tok/s} from llama-batched-bench -npp 128 -ntg 128."""
    binary = tool_path("llama-batched-bench")
    if binary is None:
        raise SystemExit("llama-batched-bench is not built: python benchmark/llama_cpp.py build")
    ctx = max(batches) * 256 + 256
    cmd = [str(binary), "-m", default_gguf_path(), "-t", str(threads), "-c", str(ctx)]
    cmd += ["-b", "2048", "-ub", "512", "-npp", "128", "-ntg", "128"]
    cmd += ["-npl", ",".join(map(str, batches))]
    out = run_tool(cmd, ["--no-repack"])
    result = {}
    for line in (out.stdout + out.stderr).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and all(re.fullmatch(r"[0-9.]+", c) for c in cells[:8]):
            # PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | ...
            result[int(cells[2])] = float(cells[7])
    return result


class Engine:
    """Ours: ModelRunner.forward alone, fed the way the scheduler feeds it."""

    def __init__(self, threads: int, server_args: list[str]) -> None:
        from sglang.srt.model_executor.model_runner import ModelRunner
        from sglang.srt.server_args import prepare_server_args

        args = prepare_server_args([*server_args, "--num-threads", str(threads)])
        self.runner = ModelRunner(args)
        self.runner.init_memory_pool(max_total_tokens=80_000, max_running_requests=128)
        print(f"# ours: {self.runner.quant_report.summary()}", flush=True)

    def run(self, batch: int, prompt: int, steps: int) -> tuple[float, float]:
        """(prefill seconds, decode seconds) of `batch` streams: prompt tokens, then steps.
        Without a prompt (tg128 starts from an empty context) the first token is a 1-token
        extend, not counted as prefill."""
        from bench_forward import Requests, fresh

        from sglang.srt.model_executor.forward_batch import ForwardMode

        fresh(self.runner)
        reqs = Requests(self.runner, batch, 0)
        t0 = time.perf_counter()
        self.runner.forward(reqs.batch(ForwardMode.EXTEND, [prompt or 1] * batch))
        t1 = time.perf_counter()
        for _ in range(steps):
            self.runner.forward(reqs.batch(ForwardMode.DECODE, [1] * batch))
        return (t1 - t0 if prompt else 0.0), time.perf_counter() - t1


def server_decode(url: str, batch: int, prompt_words: int, steps: int) -> float:
    """Output tok/s of `batch` concurrent greedy streams of `steps` tokens each (decode only:
    from each stream's first token to its last)."""
    prompts = [f"Story {i}: " + "once upon a time " * (prompt_words // 4) for i in range(batch)]

    def one(p: str) -> tuple[float, float]:
        times, _, _ = stream_generate(
            url,
            {
                "text": p,
                "sampling_params": {"max_new_tokens": steps, "temperature": 0, "ignore_eos": True},
                "stream": True,
            },
        )
        return times[0], times[-1]

    generate(url, {"text": "warm-up", "sampling_params": {"max_new_tokens": 4}})
    spans = run_concurrently(one, prompts, batch)
    start = statistics.median(s for s, _ in spans)
    end = max(e for _, e in spans)
    return batch * (steps - 1) / (end - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--server-args", default="", help="extra launch_server / engine arguments")
    p.add_argument("--no-server", action="store_true", help="skip the HTTP server rows")
    args = p.parse_args()
    extra = shlex.split(args.server_args)

    lb = llama_bench(args.threads, args.reps)
    lbb = llama_batched_bench(args.threads, [1, args.batch])
    engine = Engine(args.threads, extra)
    engine.run(1, 16, 4)  # warm-up
    pre = min(engine.run(1, 512, 0)[0] for _ in range(args.reps))
    dec1 = min(engine.run(1, 0, 128)[1] for _ in range(args.reps))
    _, dec_b = engine.run(args.batch, 128, 128)
    del engine
    rows = [
        ("prefill 512, tok/s (llama-bench pp512)", 512 / pre, lb.get("pp512")),
        ("decode 1 stream, tok/s (llama-bench tg128)", 128 / dec1, lb.get("tg128")),
        (
            f"decode {args.batch} streams, tok/s (batched-bench S_TG, B={args.batch})",
            args.batch * 128 / dec_b,
            lbb.get(args.batch),
        ),
        ("decode 1 stream, tok/s (batched-bench S_TG, B=1)", 128 / dec1, lbb.get(1)),
    ]
    if not args.no_server:
        with start_sglang_server([*extra, "--num-threads", str(args.threads)]) as server:
            s1 = server_decode(server.url, 1, 16, 128)
            sb = server_decode(server.url, args.batch, 100, 128)
        rows.append(("server: decode 1 stream, tok/s (llama-bench tg128)", s1, lb.get("tg128")))
        rows.append(
            (f"server: decode {args.batch} streams, tok/s (batched-bench)", sb, lbb.get(args.batch))
        )
        engine_1, engine_b = 128 / dec1, args.batch * 128 / dec_b
        print(
            f"# share of a decode step outside ModelRunner.forward (server vs engine): "
            f"1 stream {1 - s1 / engine_1:.0%}, {args.batch} streams {1 - sb / engine_b:.0%}"
        )
    print("\n| what | ours | llama.cpp | ratio |\n|---|---:|---:|---:|")
    for name, ours, theirs in rows:
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"
        print(f"| {name} | {ours:,.1f} | {theirs or float('nan'):,.1f} | {ratio} |")


if __name__ == "__main__":
    main()
