"""Quality of each --quantization beside llama.cpp's on the same GGUF: perplexity and accuracy.

Perplexity: the fixed text benchmark/data/gsm8k_60.txt, cut into chunks of --ctx tokens; as
llama.cpp's `llama-perplexity` does, each chunk is scored on its second half only. Ours runs
ModelRunner.forward (the prefill path, which multiplies by each low-bit form's exact
dequantization), llama.cpp runs `llama-perplexity -c <ctx> -b <ctx>` on the same text.

Accuracy: the MMLU-style few-shot questions of bench_prefix_cache.py (greedy, first letter of
the answer), asked of our server per --quantization and of `llama-server`.

    python benchmark/bench_quality.py                      # all modes, perplexity + accuracy
    python benchmark/bench_quality.py --no-accuracy --modes none auto
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_prefix_cache import ask_mmlu, mmlu_workload  # noqa: E402
from common import (  # noqa: E402
    default_gguf_path,
    free_port,
    post_json,
    run_concurrently,
    start_sglang_server,
)
from llama_cpp import run_tool, start_llama_server, tool_path  # noqa: E402

TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "gsm8k_60.txt")
MODES = ["none", "int8", "int4", "auto"]


def our_perplexity(mode: str, ctx: int, threads: int) -> tuple[float, int]:
    """(perplexity, scored tokens) of TEXT under our runtime with --quantization mode."""
    import torch

    from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode
    from sglang.srt.model_executor.model_runner import ModelRunner
    from sglang.srt.server_args import ServerArgs

    runner = ModelRunner(ServerArgs(quantization=mode, device="cpu", num_threads=threads))
    runner.init_memory_pool(max_total_tokens=2 * ctx + 16, max_running_requests=2)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(runner.tokenizer_path)
    ids = tok(open(TEXT, encoding="utf-8").read(), add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id if tok.bos_token_id is not None else ids[0]
    nll, count = 0.0, 0
    pool, alloc = runner.req_to_token_pool, runner.token_to_kv_pool_allocator
    for start in range(0, len(ids) - ctx + 1, ctx):
        chunk = [bos] + ids[start + 1 : start + ctx]
        row, slots = pool.alloc(), alloc.alloc(ctx)
        pool.req_to_token[row, :ctx] = slots
        fb = ForwardBatch(
            mode=ForwardMode.EXTEND,
            batch_size=1,
            input_ids=torch.tensor(chunk),
            positions=torch.arange(ctx),
            out_cache_loc=slots,
            req_pool_indices=torch.tensor([row]),
            seq_lens=torch.tensor([ctx]),
            req_to_token=pool.req_to_token,
            seq_lens_cpu=[ctx],
            extend_prefix_lens_cpu=[0],
            extend_seq_lens_cpu=[ctx],
            return_logprob=True,
            extend_logprob_start_lens_cpu=[0],
            top_logprobs_nums=[0],
        )
        lps = runner.forward(fb).input_token_logprobs[0]  # logprob of chunk[1:]
        scored = lps[ctx // 2 - 1 :]  # tokens ctx/2 .. ctx-1, as llama-perplexity
        nll -= sum(scored)
        count += len(scored)
        alloc.free(slots)
        pool.free(row)
    return math.exp(nll / count), count


def llama_perplexity(ctx: int, threads: int) -> float | None:
    binary = tool_path("llama-perplexity")
    if binary is None:
        print("# llama-perplexity is not built (python benchmark/llama_cpp.py build)")
        return None
    cmd = [str(binary), "-m", default_gguf_path(), "-f", TEXT, "-c", str(ctx), "-b", str(ctx)]
    out = run_tool([*cmd, "-t", str(threads)], ["--no-repack"]).stderr
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
    return float(found.group(1)) if found else None


def our_accuracy(mode: str, questions: int, concurrency: int) -> float:
    prefix, qs = mmlu_workload(questions)
    with start_sglang_server(["--quantization", mode]) as server:
        answers = run_concurrently(lambda q: ask_mmlu(server.url, prefix, q), qs, concurrency)
    return sum(a.correct for a in answers) / len(answers)


def llama_accuracy(questions: int, concurrency: int) -> float | None:
    if tool_path("llama-server") is None:
        return None
    prefix, qs = mmlu_workload(questions)

    def ask(q) -> bool:
        out = post_json(
            f"{server.url}/completion",
            {"prompt": prefix + q.render(with_answer=False), "n_predict": 3, "temperature": 0},
        )
        return out.get("content", "").strip()[:1] == q.answer

    slots = max(1, min(concurrency, 4))
    args = ["-t", "2", "-np", str(slots), "-c", str(slots * 2048)]
    with start_llama_server(free_port(), args) as server:
        correct = run_concurrently(ask, qs, concurrency)
    return sum(correct) / len(correct)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--questions", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--no-accuracy", action="store_true")
    args = p.parse_args()
    rows = []
    ref = llama_perplexity(args.ctx, args.threads)
    ref_acc = None if args.no_accuracy else llama_accuracy(args.questions, args.concurrency)
    for mode in args.modes:
        ppl, n = our_perplexity(mode, args.ctx, args.threads)
        acc = None if args.no_accuracy else our_accuracy(mode, args.questions, args.concurrency)
        rows.append((f"ours --quantization {mode}", ppl, acc, n))
    rows.append(("llama.cpp (the GGUF's Q4_1/Q8_0)", ref, ref_acc, None))
    print(f"\n| model weights | perplexity (ctx {args.ctx}) | vs llama.cpp | few-shot accuracy |")
    print("|---|---:|---:|---:|")
    for name, ppl, acc, _ in rows:
        rel = f"{ppl / ref:.3f}x" if ppl and ref else "-"
        acc_s = "-" if acc is None else f"{acc:.1%}"
        ppl_s = "-" if ppl is None else f"{ppl:.3f}"
        print(f"| {name} | {ppl_s} | {rel} | {acc_s} |")
    print(f"\n(scored tokens per run: {rows[0][3]}; accuracy over {args.questions} questions)")


if __name__ == "__main__":
    main()
