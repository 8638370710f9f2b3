"""Tiny random-weight models of each supported family, and the checks every family passes.

`save_tiny(path, "MistralConfig", "MistralForCausalLM", **overrides)` saves a float32 model of
transformers' classes; `check_family(path)` runs our ModelRunner against transformers' model
on the same weights: a batch of prompts of different lengths (prefill, both extend kernels),
an extend on a cached prefix, batched decode with requests leaving the batch, and (when the
model has a sliding window) prompts and decodes that run past the window.
"""

from __future__ import annotations

from typing import Any

import torch

from sglang.srt.layers import attention
from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode, LogitsOutput
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.server_args import ServerArgs

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    initializer_range=0.2,  # larger than default so the logits are far from uniform
    bos_token_id=1,
    eos_token_id=2,
)


def save_tiny(
    path: str,
    config_cls: str,
    model_cls: str,
    seed: int = 0,
    tokenizer: bool = False,
    **overrides: Any,
) -> str:
    """Save a random float32 model (transformers' `config_cls` / `model_cls` by name) to path.
    Biases and norm weights transformers initializes to constants get random values, so the
    checks reach them. `tokenizer`: add a byte-level tokenizer (~280 ids: give the model a
    vocab_size of at least 288), so that the folder can be served."""
    import transformers

    if tokenizer:
        from embedding_models import save_tokenizer

        save_tokenizer(path)

    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**TINY, **overrides})
    model = getattr(transformers, model_cls)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0, 0.3).add_(1.0 if "norm" in name else 0.0)
    model.to(torch.float32).save_pretrained(path)
    return path


class Driver:
    """Feeds requests to ModelRunner.forward the way the scheduler does: rows, slots, positions."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.rows: dict[str, int] = {}
        self.lens: dict[str, int] = {}

    def extend(self, chunks: dict[str, list[int]], **logprob_args: Any) -> LogitsOutput:
        return self._run(ForwardMode.EXTEND, chunks, **logprob_args)

    def decode(self, tokens: dict[str, int]) -> LogitsOutput:
        return self._run(ForwardMode.DECODE, {rid: [t] for rid, t in tokens.items()})

    def _run(
        self, mode: ForwardMode, chunks: dict[str, list[int]], **logprob_args: Any
    ) -> LogitsOutput:
        pool = self.runner.req_to_token_pool
        ids, positions, locs, prefix_lens, rows = [], [], [], [], []
        for rid, new in chunks.items():
            if rid not in self.rows:
                self.rows[rid], self.lens[rid] = pool.alloc(), 0
            start, row = self.lens[rid], self.rows[rid]
            slots = self.runner.token_to_kv_pool_allocator.alloc(len(new))
            pool.req_to_token[row, start : start + len(new)] = slots
            ids += new
            positions += range(start, start + len(new))
            locs.append(slots)
            prefix_lens.append(start)
            rows.append(row)
            self.lens[rid] = start + len(new)
        seq_lens = [self.lens[rid] for rid in chunks]
        batch = ForwardBatch(
            mode=mode,
            batch_size=len(chunks),
            input_ids=torch.tensor(ids),
            positions=torch.tensor(positions),
            out_cache_loc=torch.cat(locs),
            req_pool_indices=torch.tensor(rows),
            seq_lens=torch.tensor(seq_lens),
            req_to_token=pool.req_to_token,
            seq_lens_cpu=seq_lens,
            extend_prefix_lens_cpu=prefix_lens,
            extend_seq_lens_cpu=[len(c) for c in chunks.values()],
            **logprob_args,
        )
        return self.runner.forward(batch)


def make_runner(path: str, dtype: str = "float32", **args: Any) -> ModelRunner:
    """A runner on path; transformers is the reference, so the weights stay dense by default."""
    args.setdefault("quantization", "none")
    runner = ModelRunner(
        ServerArgs(model_path=path, dtype=dtype, device="cpu", num_threads=1, **args)
    )
    runner.init_memory_pool(max_total_tokens=8192, max_running_requests=64)
    return runner


def reference_model(path: str) -> Any:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def reference_logits(model: Any, ids: list[int]) -> torch.Tensor:
    """[L, V] float32: transformers' logits after each token of ids."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def random_ids(n: int, seed: int, vocab: int = 128) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _close(ours: torch.Tensor, expected: torch.Tensor, what: str, tol: float) -> None:
    torch.testing.assert_close(ours, expected, atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")


def check_family(path: str, long_len: int = 40, tol: float = 1e-4) -> None:
    """Our logits equal transformers' (float32, within tol) on the checks the module docstring
    lists. `long_len`: the longest prompt; make it longer than the model's sliding window."""
    ref = reference_model(path)
    runner = make_runner(path)
    vocab = runner.model_config.vocab_size
    old = attention.SHORT_EXTEND_TOKENS, attention.DECODE_CHUNK_TOKENS
    try:
        for short_extend in (0, 64):  # 64: the padded batched kernel for every extend below
            attention.SHORT_EXTEND_TOKENS = short_extend
            # prefill: a batch of different lengths, one past the window
            prompts = {"a": random_ids(5, 0, vocab), "b": random_ids(long_len, 1, vocab)}
            prompts["c"] = random_ids(1, 2, vocab)
            out = Driver(runner).extend(prompts)
            for i, (rid, ids) in enumerate(prompts.items()):
                expected = reference_logits(ref, ids)[-1]
                _close(out.next_token_logits[i], expected, f"prefill {rid}/{short_extend}", tol)
            # extend on a cached prefix: "a" adds 8 tokens, "c" one, "b" starts fresh
            a, b, c = (random_ids(long_len, 3, vocab), random_ids(9, 4, vocab),
                       random_ids(long_len - 5, 13, vocab))  # fmt: skip
            driver = Driver(runner)
            driver.extend({"a": a[:-8], "c": c[:-1]})
            out = driver.extend({"b": b, "a": a[-8:], "c": c[-1:]})
            for i, (rid, ids) in enumerate([("b", b), ("a", a), ("c", c)]):
                expected = reference_logits(ref, ids)[-1]
                _close(out.next_token_logits[i], expected, f"cached {rid}/{short_extend}", tol)
        # batched decode, requests split over chunks, "b" leaving the batch
        for chunk_tokens in (4096, 30):
            attention.DECODE_CHUNK_TOKENS = chunk_tokens
            seqs = {"a": random_ids(3, 5, vocab), "b": random_ids(11, 6, vocab),
                    "c": random_ids(long_len - 2, 7, vocab)}  # fmt: skip
            driver = Driver(runner)
            driver.extend(seqs)
            for step in range(5):
                running = [rid for rid in seqs if not (rid == "b" and step >= 2)]
                tokens = {rid: random_ids(1, 100 + 10 * step + i, vocab)[0]
                          for i, rid in enumerate(running)}  # fmt: skip
                out = driver.decode(tokens)
                for i, rid in enumerate(running):
                    seqs[rid] = seqs[rid] + [tokens[rid]]
                    expected = reference_logits(ref, seqs[rid])[-1]
                    _close(out.next_token_logits[i], expected, f"decode {rid}/{step}", tol)
    finally:
        attention.SHORT_EXTEND_TOKENS, attention.DECODE_CHUNK_TOKENS = old
