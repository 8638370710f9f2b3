"""Our model code + paged attention + logits layer against transformers' reference models."""

from __future__ import annotations

import pytest
import torch

from sglang.srt.layers import attention
from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode, LogitsOutput
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.server_args import ServerArgs

transformers = pytest.importorskip("transformers")

TINY_MODELS = ["tiny_llama_path", "tiny_qwen2_path", "tiny_llama3_rope_path"]


class Driver:
    """Feeds requests to ModelRunner.forward the way the scheduler does: rows, slots, positions."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.rows: dict[str, int] = {}
        self.lens: dict[str, int] = {}

    def extend(self, chunks: dict[str, list[int]], **logprob_args) -> LogitsOutput:
        return self._run(ForwardMode.EXTEND, chunks, **logprob_args)

    def decode(self, tokens: dict[str, int]) -> LogitsOutput:
        return self._run(ForwardMode.DECODE, {rid: [t] for rid, t in tokens.items()})

    def _run(self, mode: ForwardMode, chunks: dict[str, list[int]], **logprob_args) -> LogitsOutput:
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


def make_runner(path: str, dtype: str = "float32", **args) -> ModelRunner:
    """A runner on path; transformers is the reference, so the weights stay dense by default."""
    args.setdefault("quantization", "none")
    runner = ModelRunner(
        ServerArgs(model_path=path, dtype=dtype, device="cpu", num_threads=1, **args)
    )
    runner.init_memory_pool(max_total_tokens=8192, max_running_requests=64)
    return runner


def reference_logits(model, ids: list[int]) -> torch.Tensor:
    # [L, V] float32: transformers' logits after each token of ids
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def random_ids(n: int, seed: int, vocab: int = 128) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module", params=TINY_MODELS)
def tiny(request):
    """(our runner, transformers' model) on the same random weights."""
    path = request.getfixturevalue(request.param)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return make_runner(path), ref.eval()


@pytest.mark.parametrize("short_extend", [0, 32])  # 32: the padded batched kernel for all
def test_prefill_batch_of_different_lengths(tiny, short_extend, monkeypatch):
    monkeypatch.setattr(attention, "SHORT_EXTEND_TOKENS", short_extend)
    runner, ref = tiny
    prompts = {"a": random_ids(5, 0), "b": random_ids(17, 1), "c": random_ids(1, 2)}
    out = Driver(runner).extend(prompts)
    assert out.next_token_logits.shape == (3, runner.model_config.vocab_size)
    assert out.next_token_logits.dtype == torch.float32
    assert out.input_token_logprobs is None
    for i, ids in enumerate(prompts.values()):
        torch.testing.assert_close(
            out.next_token_logits[i], reference_logits(ref, ids)[-1], atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("short_extend", [0, 16])  # 16: the padded batched kernel
def test_extend_on_a_cached_prefix(tiny, short_extend, monkeypatch):
    monkeypatch.setattr(attention, "SHORT_EXTEND_TOKENS", short_extend)
    runner, ref = tiny
    a, b, c = random_ids(20, 3), random_ids(9, 4), random_ids(8, 13)
    driver = Driver(runner)
    driver.extend({"a": a[:12], "c": c[:7]})
    # in one pass: "b" starts fresh, "a" adds 8 tokens to its cached prefix, "c" adds one
    out = driver.extend({"b": b, "a": a[12:], "c": c[7:]})
    for i, ids in enumerate([b, a, c]):
        expected = reference_logits(ref, ids)[-1]
        torch.testing.assert_close(out.next_token_logits[i], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk_tokens", [4096, 30])  # 30: requests split over several chunks
def test_decode_steps_in_a_batch_of_different_lengths(tiny, chunk_tokens, monkeypatch):
    monkeypatch.setattr(attention, "DECODE_CHUNK_TOKENS", chunk_tokens)
    runner, ref = tiny
    seqs = {"a": random_ids(3, 5), "b": random_ids(11, 6), "c": random_ids(26, 7)}
    driver = Driver(runner)
    driver.extend(seqs)
    for step in range(4):
        running = [rid for rid in seqs if not (rid == "b" and step >= 2)]  # "b" leaves the batch
        tokens = {rid: random_ids(1, 100 + 10 * step + i)[0] for i, rid in enumerate(running)}
        out = driver.decode(tokens)
        for i, rid in enumerate(running):
            seqs[rid] = seqs[rid] + [tokens[rid]]
            expected = reference_logits(ref, seqs[rid])[-1]
            torch.testing.assert_close(out.next_token_logits[i], expected, atol=1e-4, rtol=1e-4)


def test_input_token_logprobs_match_log_softmax_of_reference(tiny):
    runner, ref = tiny
    a, b, c = random_ids(14, 8), random_ids(6, 9), random_ids(4, 10)
    driver = Driver(runner)
    out = driver.extend(
        {"a": a[:9], "b": b, "c": c},
        return_logprob=True,
        extend_logprob_start_lens_cpu=[0, 2, 3],  # c: 3 >= n - 1 -> nothing scored
        top_logprobs_nums=[3, 0, 2],
    )
    ref_a, ref_b = (reference_logits(ref, x).log_softmax(-1) for x in (a, b))
    # chunk offset j (j > k) is scored from the row before it
    expected_a = [ref_a[j - 1, a[j]].item() for j in range(1, 9)]
    expected_b = [ref_b[j - 1, b[j]].item() for j in range(3, 6)]
    assert out.input_token_logprobs[2] == []
    assert out.input_top_logprobs[1] == [] and out.input_top_logprobs[2] == []
    assert out.input_token_logprobs[0] == pytest.approx(expected_a, abs=1e-4)
    assert out.input_token_logprobs[1] == pytest.approx(expected_b, abs=1e-4)
    for j, top in enumerate(out.input_top_logprobs[0]):
        values, ids = ref_a[j].topk(3)
        assert [t for _, t in top] == ids.tolist()
        assert [v for v, _ in top] == pytest.approx(values.tolist(), abs=1e-4)
    # the second chunk of "a" scores its own offsets 1.. (offset 0 is the scheduler's to stitch)
    out = driver.extend({"a": a[9:]}, return_logprob=True, extend_logprob_start_lens_cpu=[0])
    expected = [ref_a[j - 1, a[j]].item() for j in range(10, 14)]
    assert out.input_token_logprobs[0] == pytest.approx(expected, abs=1e-4)
    assert out.input_top_logprobs == [[]]


def test_decode_chunks_cover_the_batch_within_the_budget():
    assert attention._chunk_bounds([10, 10, 30, 5], 40) == [(0, 2), (2, 3), (3, 4)]
    assert attention._chunk_bounds([100], 40) == [(0, 1)]  # a long request still gets a chunk
    assert attention._chunk_bounds([3] * 10, 4096) == [(0, 10)]


def test_decode_padding_slots_do_not_leak_into_attention(tiny_llama_path):
    # Garbage in every unused slot, the padding slot 0 included, must not change any logit.
    runner = make_runner(tiny_llama_path)
    seqs = {"a": random_ids(2, 11), "b": random_ids(30, 12)}
    clean = Driver(runner)
    clean.extend(seqs)
    expected = clean.decode({"a": 5, "b": 6}).next_token_logits
    runner.init_memory_pool(max_total_tokens=8192, max_running_requests=64)
    for buf in runner.token_to_kv_pool.k_buffer + runner.token_to_kv_pool.v_buffer:
        buf.normal_(0, 100.0)
    dirty = Driver(runner)
    dirty.extend(seqs)
    torch.testing.assert_close(dirty.decode({"a": 5, "b": 6}).next_token_logits, expected)


@pytest.fixture(scope="module")
def default_reference(default_model_path):
    ref = transformers.AutoModelForCausalLM.from_pretrained(default_model_path, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_path)
    questions = ["What is the capital of France?", "Write a haiku about rain.", "2+2="]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True
        )
        for q in questions
    ]
    prompts = [p["input_ids"] if isinstance(p, dict) or hasattr(p, "keys") else p for p in prompts]
    return ref.eval(), prompts


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_default_model_matches_transformers(default_model_path, default_reference, dtype):
    ref, prompts = default_reference
    runner = make_runner(default_model_path, dtype)
    ours = Driver(runner).extend({str(i): p for i, p in enumerate(prompts)}).next_token_logits
    expected = torch.stack([reference_logits(ref, p)[-1] for p in prompts])
    assert ours.argmax(-1).tolist() == expected.argmax(-1).tolist()
    if dtype == "float32":
        torch.testing.assert_close(ours, expected, atol=2e-3, rtol=1e-3)
        return
    # bf16 rounding: ours may stray from fp32 about as far as transformers' own bf16 does
    with torch.no_grad():
        ref_bf16 = [
            ref.to(torch.bfloat16)(torch.tensor([p])).logits[0, -1].float() for p in prompts
        ]
    ref.to(torch.float32)
    their_err = (torch.stack(ref_bf16) - expected).abs().max().item()
    our_err = (ours - expected).abs().max().item()
    assert our_err <= 2 * their_err + 0.05, (our_err, their_err)


def test_default_model_config(default_model_path):
    runner = make_runner(default_model_path, "bfloat16")
    cfg = runner.model_config
    assert (cfg.architecture, cfg.num_layers, cfg.hidden_size) == ("LlamaForCausalLM", 30, 576)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (9, 3, 64, 49152)
    assert cfg.tie_word_embeddings and 2 in cfg.eos_token_ids
    assert runner.dtype == torch.bfloat16
    assert runner.model.lm_head_weight.dtype == torch.bfloat16
    assert runner.tokenizer_path == runner.model_path == default_model_path
