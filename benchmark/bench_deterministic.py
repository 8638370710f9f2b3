"""--enable-deterministic-inference: how often greedy outputs change with the batch without it,
and what it costs.

For each mode (default kernels, then deterministic) one server on the default model:
  1. each of N prompts alone (one at a time, empty cache): the reference outputs;
  2. the same N prompts all at once (continuous batching, chunked prefill, shared prefixes
     in the cache), twice: outputs that differ from the reference, in text or in logprobs;
  3. speed: one stream's decode tok/s and the N-concurrent run's output tok/s.

    python benchmark/bench_deterministic.py              # 64 prompts, 64 new tokens
    python benchmark/bench_deterministic.py --prompts 16 --new-tokens 16
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    Row,
    flush_cache,
    generate,
    print_env,
    print_table,
    random_words,
    run_concurrently,
    start_sglang_server,
    stream_generate,
)

SYSTEM = "You answer questions about everyday things in one short paragraph. "


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """Prompts of mixed lengths, half of them sharing a long system prefix."""
    rng = random.Random(seed)
    prefix = SYSTEM + random_words(rng, 120)
    return [
        (prefix if i % 2 else "") + random_words(rng, rng.randint(8, 200)) + " Answer:"
        for i in range(n)
    ]


def ask(url: str, prompt: str, new_tokens: int) -> tuple[str, list[float]]:
    body = {
        "text": prompt,
        "sampling_params": {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True},
        "return_logprob": True,
    }
    out = generate(url, body)
    return out["text"], [lp[0] for lp in out["meta_info"]["output_token_logprobs"]]


def measure(extra: list[str], prompts: list[str], new_tokens: int) -> dict[str, Any]:
    server = start_sglang_server(extra)
    try:
        url = server.url
        reference = []
        for p in prompts:
            flush_cache(url)
            reference.append(ask(url, p, new_tokens))
        differ_text = differ_lp = 0
        seconds = []
        for _ in range(2):
            flush_cache(url)
            start = time.perf_counter()
            batched = run_concurrently(lambda p: ask(url, p, new_tokens), prompts, len(prompts))
            seconds.append(time.perf_counter() - start)
            differ_text += sum(b[0] != r[0] for b, r in zip(batched, reference))
            differ_lp += sum(b[1] != r[1] for b, r in zip(batched, reference))
        times, counts, _ = stream_generate(
            url,
            {
                "text": prompts[0],
                "sampling_params": {"max_new_tokens": 256, "temperature": 0, "ignore_eos": True},
            },
        )
        decode = (counts[-1] - counts[0]) / (times[-1] - times[0])
        return {
            "differ_text": differ_text,
            "differ_logprobs": differ_lp,
            "runs": 2 * len(prompts),
            "batch_tok_s": len(prompts) * new_tokens / min(seconds),
            "decode_tok_s": decode,
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    print_env()
    prompts = make_prompts(args.prompts)
    default = measure([], prompts, args.new_tokens)
    det = measure(["--enable-deterministic-inference"], prompts, args.new_tokens)
    n = default["runs"]
    print_table(
        f"Deterministic inference ({args.prompts} prompts x {args.new_tokens} tokens, "
        f"batched twice, vs each alone)",
        [
            Row("outputs differing from alone, text", det["differ_text"], default["differ_text"], unit=f"of {n}"),
            Row("outputs differing, logprobs", det["differ_logprobs"], default["differ_logprobs"], unit=f"of {n}"),
            Row(f"{args.prompts} concurrent, output tok/s", det["batch_tok_s"], default["batch_tok_s"], unit="tok/s"),
            Row("1 stream decode", det["decode_tok_s"], default["decode_tok_s"], unit="tok/s"),
        ],
        ours_name="deterministic",
        theirs_name="default",
    )  # fmt: skip


if __name__ == "__main__":
    main()
