"""The scheduler's own CPU time per step, without the model.

64 requests decode at ~4k-token contexts while 256 more wait in the queue (max_running_requests
is 64, so every step looks at the whole queue). Only the model runner's forward is replaced: it
returns precomputed logits, so what is timed is admission and queue order, KV bookkeeping,
building the ForwardBatch, sampling, detokenization, stop checks and output building.

    python benchmark/bench_scheduler.py [--steps 100] [--context 4096] [--running 64] [--waiting 256]

The model is a 2-layer random Llama with the default model's tokenizer (so detokenization is
real); its KV pool is small enough for 64 x 4k tokens.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_model_dir(context: int) -> str:
    import transformers

    from sglang.srt.model_loader.default_model import default_model_file

    gguf = default_model_file()
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(gguf), gguf_file=os.path.basename(gguf)
    )
    config = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2 * context,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    path = tempfile.mkdtemp(prefix="bench-scheduler-")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class StubForward:
    """Stands in for ModelRunner.forward: a view of precomputed logits, different every step."""

    def __init__(self, vocab_size: int, max_rows: int, variety: int = 97) -> None:
        g = torch.Generator().manual_seed(0)
        self.table = torch.randn(max_rows + variety, vocab_size, generator=g)
        self.variety = variety
        self.calls = 0

    def __call__(self, batch):  # ForwardBatch -> LogitsOutput
        from sglang.srt.model_executor.forward_batch import LogitsOutput

        k = self.calls % self.variety
        self.calls += 1
        return LogitsOutput(next_token_logits=self.table[k : k + batch.batch_size])


def make_requests(n: int, context: int, groups: int, seed: int, prefix: str) -> list:
    """n prompts of `context` tokens; each starts with one of `groups` shared 1k-token prefixes."""
    from sglang.srt.managers.io_struct import TokenizedGenerateReqInput
    from sglang.srt.sampling.sampling_params import SamplingParams

    g = torch.Generator().manual_seed(seed)
    shared = [torch.randint(100, 40000, (1024,), generator=g).tolist() for _ in range(groups)]
    reqs = []
    for i in range(n):
        tail = torch.randint(100, 40000, (context - 1024,), generator=g).tolist()
        params = {"max_new_tokens": 100000, "temperature": 0, "ignore_eos": True, "stop": "<<END>>"}
        if i % 4 == 0:
            params["frequency_penalty"] = 0.1
        sp = SamplingParams.from_dict(params)
        reqs.append(
            TokenizedGenerateReqInput(f"{prefix}{i}", None, shared[i % groups] + tail, sp, stream=True)
        )
    return reqs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--running", type=int, default=64)
    parser.add_argument("--waiting", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.server_args import ServerArgs

    model_dir = make_model_dir(args.context)
    extra = args.steps + args.warmup_steps + 64
    server_args = ServerArgs(
        model_path=model_dir,
        dtype="float32",
        device="cpu",
        grammar_backend="none",
        max_running_requests=args.running,
        max_total_tokens=args.running * (args.context + extra) + 8192,
        chunked_prefill_size=8192,
        context_length=2 * args.context,
        num_threads=args.threads,
    )
    scheduler = Scheduler(server_args)
    stub = StubForward(scheduler.vocab_size, max(args.running, 64))
    scheduler.runner.forward = stub

    for msg in make_requests(args.running, args.context, 8, 0, "run"):
        scheduler.handle_message(msg)
    fill_steps = 0
    while len(scheduler.running) < args.running or any(
        r.pending_len > 1 for r in scheduler.running
    ):
        for req in scheduler.step():
            scheduler.make_output(req)
        fill_steps += 1
    for msg in make_requests(args.waiting, args.context, 8, 1, "wait"):
        scheduler.handle_message(msg)

    profiler = cProfile.Profile() if args.profile else None
    times = []
    for i in range(args.warmup_steps + args.steps):
        if profiler is not None and i == args.warmup_steps:
            profiler.enable()
        t0 = time.perf_counter()
        outs = [scheduler.make_output(r) for r in scheduler.step()]
        dt = time.perf_counter() - t0
        if i >= args.warmup_steps:
            times.append(dt)
        assert len(outs) == args.running, f"{len(outs)} outputs in a step"
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    assert len(scheduler.waiting) == args.waiting, "the waiting requests stay queued"
    ctx = statistics.mean(r.seq_len for r in scheduler.running)
    print(
        f"scheduler step, {args.running} running at ~{ctx:.0f} tokens, "
        f"{len(scheduler.waiting)} waiting ({fill_steps} fill steps, {args.steps} timed):"
    )
    print(
        f"  mean {1e3 * statistics.mean(times):.2f} ms   median {1e3 * statistics.median(times):.2f} ms"
        f"   p90 {1e3 * sorted(times)[int(0.9 * len(times))]:.2f} ms"
    )


if __name__ == "__main__":
    main()
