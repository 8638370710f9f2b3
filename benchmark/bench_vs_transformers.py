"""Serving speed of our server vs Hugging Face transformers on the same weights (bf16, CPU).

Three figures, each against a baseline measured in the same command:
  (a) prefill: a 512-token prompt, /generate with max_new_tokens=1, distinct prompts so the
      radix cache cannot help; tokens/s = prompt_tokens / latency (median of trials).
  (b) decode, one stream: max_new_tokens=256, ignore_eos, greedy; tokens/s from the
      streaming timestamps (first to last event), so prefill is not counted.
  (c) 64 concurrent streams: ~300-token prompts, 128 new tokens each, ignore_eos;
      total output tokens / wall time (prefill included).
Baseline: transformers `AutoModelForCausalLM` in bf16 on the same GGUF weights (dequantized
once and cached as safetensors under ~/.cache/sglang-bench/), `generate` with left padding.

    python benchmark/bench_vs_transformers.py                    # ours + baseline
    python benchmark/bench_vs_transformers.py --skip-baseline    # ours only
    python benchmark/bench_vs_transformers.py --url http://127.0.0.1:30000 --skip-baseline
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    BENCH_CACHE,
    Row,
    attach_or_start,
    default_gguf_path,
    generate,
    print_env,
    print_table,
    prompt_of_tokens,
    run_concurrently,
    stream_generate,
)

HF_COPY = BENCH_CACHE / "smollm2-135m-instruct-bf16"
TARGETS = {"prefill": 1500.0, "decode1": 60.0, "decode64": 800.0}


@dataclass
class Workload:
    """The prompts of the three measurements, made once so both sides see the same text."""

    prefill_prompts: list[str]  # warm-up first, then one per trial
    decode_prompt: str
    batch_prompts: list[str]
    decode_tokens: int
    batch_new_tokens: int


@dataclass
class Figures:
    prefill_tok_s: float
    decode1_tok_s: float
    decode64_tok_s: float


def load_tokenizer() -> Any:
    """The model's tokenizer, from the cached HF copy when there is one (fast)."""
    from transformers import AutoTokenizer

    if (HF_COPY / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(HF_COPY))
    gguf = Path(default_gguf_path())
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def make_workload(args: argparse.Namespace) -> Workload:
    tok = load_tokenizer()
    rng = random.Random(args.seed)
    prefill = [prompt_of_tokens(tok, rng, args.prefill_len) for _ in range(args.trials + 1)]
    decode = prompt_of_tokens(tok, rng, 64)
    batch = [prompt_of_tokens(tok, rng, args.batch_prompt_len) for _ in range(args.num_streams)]
    return Workload(prefill, decode, batch, args.decode_len, args.batch_new_tokens)


# ---------------------------------------------------------------- our server


def _greedy(max_new_tokens: int) -> dict[str, Any]:
    return {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True}


def ours_prefill(url: str, w: Workload) -> float:
    rates = []
    for i, prompt in enumerate(w.prefill_prompts):
        start = time.perf_counter()
        out = generate(url, {"text": prompt, "sampling_params": _greedy(1)})
        elapsed = time.perf_counter() - start
        if i > 0:  # the first is a warm-up
            rates.append(out["meta_info"]["prompt_tokens"] / elapsed)
    return statistics.median(rates)


def ours_decode1(url: str, w: Workload) -> float:
    """Decode rate of one stream: tokens between the first and last event over that time."""
    generate(url, {"text": w.decode_prompt[:50], "sampling_params": _greedy(8)})  # warm-up
    times, counts, _ = stream_generate(
        url, {"text": w.decode_prompt, "sampling_params": _greedy(w.decode_tokens)}
    )
    if len(times) < 2:
        raise RuntimeError("the stream returned fewer than 2 events")
    produced = counts[-1] - counts[0]
    return produced / (times[-1] - times[0])


def ours_decode64(url: str, w: Workload) -> float:
    def one(prompt: str) -> int:
        out = generate(url, {"text": prompt, "sampling_params": _greedy(w.batch_new_tokens)})
        return out["meta_info"]["completion_tokens"]

    start = time.perf_counter()
    produced = run_concurrently(one, w.batch_prompts, len(w.batch_prompts))
    return sum(produced) / (time.perf_counter() - start)


def run_ours(args: argparse.Namespace, w: Workload) -> Figures:
    extra = ["--dtype", args.dtype] + (args.server_args.split() if args.server_args else [])
    with attach_or_start(args.url, extra) as server:
        prefill = ours_prefill(server.url, w)
        print(f"# ours prefill: {prefill:.0f} tok/s", flush=True)
        decode1 = ours_decode1(server.url, w)
        print(f"# ours decode (1 stream): {decode1:.1f} tok/s", flush=True)
        decode64 = ours_decode64(server.url, w)
        print(f"# ours decode ({len(w.batch_prompts)} streams): {decode64:.1f} tok/s", flush=True)
    return Figures(prefill, decode1, decode64)


# ---------------------------------------------------------------- the transformers baseline


def load_hf_model(dtype: str) -> tuple[Any, Any]:
    """transformers model + tokenizer on the GGUF weights; a safetensors copy makes reloads fast."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if not (HF_COPY / "config.json").is_file():
        gguf = Path(default_gguf_path())
        print(f"# dequantizing {gguf.name} once (slow); caching it in {HF_COPY}", flush=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
        )
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _save_plain_copy(model, tok)
    model = AutoModelForCausalLM.from_pretrained(str(HF_COPY), dtype=torch_dtype)
    tok = AutoTokenizer.from_pretrained(str(HF_COPY), padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok


def _save_plain_copy(model: Any, tok: Any) -> None:
    """Write config, tokenizer and safetensors weights; transformers refuses `save_pretrained`
    on a model loaded from GGUF, although its weights are plain tensors by now."""
    from safetensors.torch import save_model

    HF_COPY.mkdir(parents=True, exist_ok=True)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(str(HF_COPY))
    tok.save_pretrained(str(HF_COPY))
    save_model(model, str(HF_COPY / "model.safetensors"))


def _hf_generate(model: Any, tok: Any, prompts: list[str], new_tokens: int) -> tuple[float, int]:
    """Greedy generate exactly `new_tokens` per prompt; return (seconds, prompt tokens)."""
    import torch

    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            **enc,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    return time.perf_counter() - start, int(enc["attention_mask"].sum())


def run_hf(args: argparse.Namespace, w: Workload) -> Figures:
    import torch

    torch.manual_seed(0)
    model, tok = load_hf_model(args.dtype)
    rates = []
    for i, prompt in enumerate(w.prefill_prompts):
        seconds, n = _hf_generate(model, tok, [prompt], 1)
        if i > 0:
            rates.append(n / seconds)
    prefill = statistics.median(rates)
    print(f"# transformers prefill: {prefill:.0f} tok/s", flush=True)
    t_prefill, _ = _hf_generate(model, tok, [w.decode_prompt], 1)
    t_total, _ = _hf_generate(model, tok, [w.decode_prompt], w.decode_tokens)
    decode1 = (w.decode_tokens - 1) / max(t_total - t_prefill, 1e-6)
    print(f"# transformers decode (batch 1): {decode1:.1f} tok/s", flush=True)
    n = len(w.batch_prompts)
    seconds, _ = _hf_generate(model, tok, w.batch_prompts, w.batch_new_tokens)
    decode64 = n * w.batch_new_tokens / seconds
    print(f"# transformers decode (batch {n}): {decode64:.1f} tok/s", flush=True)
    return Figures(prefill, decode1, decode64)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="use a running server instead of starting ours")
    parser.add_argument("--skip-baseline", action="store_true", help="skip transformers")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--server-args", default="", help="extra launch_server arguments")
    parser.add_argument("--prefill-len", type=int, default=512)
    parser.add_argument("--trials", type=int, default=5, help="prefill trials (median)")
    parser.add_argument("--decode-len", type=int, default=256)
    parser.add_argument("--num-streams", type=int, default=64)
    parser.add_argument("--batch-prompt-len", type=int, default=300)
    parser.add_argument("--batch-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print_env()
    w = make_workload(args)
    ours = run_ours(args, w)
    theirs = None if args.skip_baseline else run_hf(args, w)
    n = args.num_streams
    print_table(
        f"Serving speed ({args.dtype}, CPU): ours vs transformers",
        [
            Row(
                f"prefill {args.prefill_len}-token prompt",
                ours.prefill_tok_s,
                theirs and theirs.prefill_tok_s,
                TARGETS["prefill"],
                "tok/s",
            ),
            Row(
                "decode, 1 stream",
                ours.decode1_tok_s,
                theirs and theirs.decode1_tok_s,
                TARGETS["decode1"],
                "tok/s",
            ),
            Row(
                f"decode, {n} streams (total)",
                ours.decode64_tok_s,
                theirs and theirs.decode64_tok_s,
                TARGETS["decode64"] if n == 64 else None,
                "tok/s",
            ),
        ],
        "sglang",
        "transformers",
    )


if __name__ == "__main__":
    main()
