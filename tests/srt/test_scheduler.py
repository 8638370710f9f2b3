"""Scheduler: continuous batching, chunked prefill, radix reuse and retraction give the same tokens."""

from __future__ import annotations

import os
import time

import pytest
import torch

from sglang.srt.managers.io_struct import AbortReq, TokenizedGenerateReqInput
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    return save_tiny_llama(str(tmp_path_factory.mktemp("tiny-llama")))


def save_tiny_llama(path: str) -> str:
    """A 2-layer random Llama with the default model's tokenizer (so text decoding is real)."""
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
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_scheduler(model_dir: str, **overrides) -> Scheduler:
    args = dict(model_path=model_dir, dtype="float32", device="cpu", grammar_backend="none")
    args.update(overrides)
    return Scheduler(ServerArgs(**args))


def request(rid: str, ids: list[int], max_new: int = 12, **kw) -> TokenizedGenerateReqInput:
    params = SamplingParams.from_dict(
        {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True, **kw.pop("params", {})}
    )
    return TokenizedGenerateReqInput(rid, None, ids, params, **kw)


def run_all(scheduler: Scheduler, msgs: list, max_steps: int = 2000) -> dict[str, dict]:
    """Feed messages, step until every request finished; gather each request's output."""
    for m in msgs:
        scheduler.handle_message(m)
    results: dict[str, dict] = {}
    deadline = time.monotonic() + 300
    steps = 0
    while steps < max_steps:
        if not (scheduler.running or scheduler.waiting) and scheduler.grammar_queue:
            # only grammars compiling in the background: wait for them without using up steps
            assert time.monotonic() < deadline, "grammars still compiling after 300 s"
            time.sleep(0.005)
        else:
            steps += 1
        for req in scheduler.step():
            out = scheduler.make_output(req)
            r = results.setdefault(out.rid, {"ids": [], "text": "", "input_lp": None, "out_lp": []})
            r["ids"] += out.output_ids
            r["text"] += out.text_delta
            r["finish"] = out.finish_reason.to_json() if out.finish_reason else None
            r["cached"] = out.cached_tokens
            if out.input_token_logprobs is not None:
                r["input_lp"] = [tuple(e) for e in out.input_token_logprobs]
            r["out_lp"] += [tuple(e) for e in out.output_token_logprobs or []]
        if not scheduler.has_work() and all(r.get("finish") for r in results.values()):
            break
    return results


def prompts(n: int, length: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(100, 40000, (length + 3 * i,), generator=g).tolist() for i in range(n)]


def test_batched_equals_one_at_a_time(tiny_model_dir):
    ps = prompts(4, 20)
    alone = {}
    for i, p in enumerate(ps):
        s = make_scheduler(tiny_model_dir, disable_radix_cache=True)
        alone.update(run_all(s, [request(f"r{i}", p)]))
    together = run_all(
        make_scheduler(tiny_model_dir), [request(f"r{i}", p) for i, p in enumerate(ps)]
    )
    for rid in alone:
        assert together[rid]["ids"] == alone[rid]["ids"]
        assert len(together[rid]["ids"]) == 12
        assert together[rid]["finish"] == {"type": "length", "length": 12}


def test_chunked_prefill_gives_the_same_tokens(tiny_model_dir):
    ps = prompts(3, 40, seed=1)
    whole = run_all(make_scheduler(tiny_model_dir), [request(f"r{i}", p) for i, p in enumerate(ps)])
    chunked = run_all(
        make_scheduler(tiny_model_dir, chunked_prefill_size=7),
        [request(f"r{i}", p) for i, p in enumerate(ps)],
    )
    for rid in whole:
        assert chunked[rid]["ids"] == whole[rid]["ids"]


def test_radix_cache_reuses_prefix_and_keeps_output(tiny_model_dir):
    s = make_scheduler(tiny_model_dir)
    (p,) = prompts(1, 30, seed=2)
    first = run_all(s, [request("a", p)])["a"]
    second = run_all(s, [request("b", p)])["b"]
    assert first["cached"] == 0
    assert second["cached"] == len(p) - 1
    assert second["ids"] == first["ids"]
    extended = run_all(s, [request("c", p + first["ids"][:5])])["c"]
    assert extended["cached"] >= len(p)
    assert s.tree_cache.hit_rate() > 0


def test_retraction_under_a_small_pool_keeps_outputs(tiny_model_dir):
    ps = prompts(6, 16, seed=3)
    reference = run_all(
        make_scheduler(tiny_model_dir), [request(f"r{i}", p, 40) for i, p in enumerate(ps)]
    )
    small = make_scheduler(tiny_model_dir, max_total_tokens=160)
    squeezed = run_all(small, [request(f"r{i}", p, 40) for i, p in enumerate(ps)])
    for rid in reference:
        assert squeezed[rid]["ids"] == reference[rid]["ids"]
    assert small.allocator.available_size() + small.tree_cache.total_size() == 160


def test_input_logprobs_same_with_chunks_and_cache(tiny_model_dir):
    (p,) = prompts(1, 25, seed=4)
    kw = dict(return_logprob=True, logprob_start_len=0)
    plain = run_all(make_scheduler(tiny_model_dir), [request("a", p, 0, **kw)])["a"]
    chunked = run_all(
        make_scheduler(tiny_model_dir, chunked_prefill_size=6), [request("a", p, 0, **kw)]
    )["a"]
    assert plain["input_lp"][0] == (None, p[0])
    assert [t for _, t in plain["input_lp"]] == p
    for (x, _), (y, _) in zip(plain["input_lp"][1:], chunked["input_lp"][1:]):
        assert abs(x - y) < 1e-4
    # select-style: the prefix is cached, logprobs start near its end
    s = make_scheduler(tiny_model_dir)
    run_all(s, [request("prefix", p[:20], 0)])
    tail = run_all(s, [request("t", p, 0, return_logprob=True, logprob_start_len=18)])["t"]
    assert [t for _, t in tail["input_lp"]] == p[18:]
    for (x, _), (y, _) in zip(tail["input_lp"], plain["input_lp"][18:]):
        assert abs(x - y) < 1e-4


def test_output_logprobs_are_greedy_maxima(tiny_model_dir):
    (p,) = prompts(1, 10, seed=5)
    r = run_all(
        make_scheduler(tiny_model_dir),
        [request("a", p, 5, return_logprob=True, logprob_start_len=-1, top_logprobs_num=3)],
    )["a"]
    assert [t for _, t in r["out_lp"]] == r["ids"]


def test_max_new_tokens_zero_and_abort(tiny_model_dir):
    s = make_scheduler(tiny_model_dir)
    (p, q) = prompts(2, 12, seed=6)
    r = run_all(s, [request("zero", p, 0)])["zero"]
    assert r["ids"] == [] and r["finish"]["type"] == "length"
    s.handle_message(request("long", q, 500))
    s.step()
    results = run_all(s, [AbortReq("long")])
    assert results["long"]["finish"]["type"] == "abort"
    assert not s.running and s.tree_cache.protected_size() == 0


def test_stop_string_trims_text(tiny_model_dir):
    s = make_scheduler(tiny_model_dir)
    (p,) = prompts(1, 10, seed=7)
    free = run_all(s, [request("a", p, 20)])["a"]
    text = free["text"]
    assert len(text) > 4
    stop = text[3:5]
    cut = run_all(s, [request("b", p, 20, params={"stop": stop})])["b"]
    assert cut["finish"]["type"] == "stop" and cut["finish"]["matched"] == stop
    assert cut["text"] == text[: text.index(stop)]


def test_stream_interval_sends_that_many_tokens_per_output(tiny_model_dir):
    s = make_scheduler(tiny_model_dir, stream_interval=3)
    (p,) = prompts(1, 10, seed=8)
    s.handle_message(request("a", p, 10, stream=True))
    sizes = []
    while s.has_work() or s.has_outputs():
        sizes += [len(s.make_output(r).output_ids) for r in s.step()]
    assert sizes == [1, 3, 3, 3]  # the first token at once, then every 3


def test_max_prefill_tokens_caps_every_prefill_pass(tiny_model_dir):
    ps = prompts(4, 40, seed=9)
    reference = run_all(
        make_scheduler(tiny_model_dir), [request(f"r{i}", p) for i, p in enumerate(ps)]
    )
    s = make_scheduler(tiny_model_dir, chunked_prefill_size=16, max_prefill_tokens=24)
    passes = []
    forward = s.runner.forward

    def recording_forward(batch):
        passes.append(list(batch.extend_seq_lens_cpu))
        return forward(batch)

    s.runner.forward = recording_forward
    capped = run_all(s, [request(f"r{i}", p) for i, p in enumerate(ps)])
    # (decoding requests riding along a short extend add 1-token rows: not prefill)
    assert all(sum(n for n in p if n > 1) <= 24 and max(p) <= 16 for p in passes)
    assert any(len(p) > 1 and max(p) > 1 for p in passes)  # several requests share a pass
    for rid in reference:
        assert capped[rid]["ids"] == reference[rid]["ids"]


def test_min_new_tokens_holds_against_a_stop_string(tiny_model_dir):
    s = make_scheduler(tiny_model_dir)
    (p,) = prompts(1, 10, seed=7)
    text = run_all(s, [request("a", p, 20)])["a"]["text"]
    stop = text[:2]  # matches in the first tokens
    early = run_all(s, [request("b", p, 20, params={"stop": stop})])["b"]
    held = run_all(s, [request("c", p, 20, params={"stop": stop, "min_new_tokens": 8})])["c"]
    assert early["finish"]["matched"] == stop and len(early["ids"]) < 8
    assert len(held["ids"]) >= 8


def test_a_grammar_is_compiled_once_in_the_scheduler(tiny_model_dir, monkeypatch):
    from sglang.srt.constrained.llguidance_backend import LLGuidanceBackend

    compiled = []
    original = LLGuidanceBackend._compile

    def counting_compile(self, kind, text):
        compiled.append((kind, text))
        return original(self, kind, text)

    monkeypatch.setattr(LLGuidanceBackend, "_compile", counting_compile)
    s = make_scheduler(tiny_model_dir, grammar_backend="llguidance")
    (p,) = prompts(1, 10, seed=10)
    reqs = [request(f"g{i}", p, 8, params={"regex": "(yes|no)"}) for i in range(3)]
    results = run_all(s, reqs)
    assert compiled == [("regex", "(yes|no)")]
    assert all(r["text"] in ("yes", "no") for r in results.values())
    bad = run_all(s, [request("bad", p, 8, params={"regex": "(ab"})])["bad"]
    assert bad["finish"]["type"] == "abort" and "regex" in bad["finish"]["message"]


def test_memory_pressure_never_drops_an_accepted_request(tiny_model_dir):
    """A pool that cannot hold every running request: prefill chunks that do not fit while
    others decode are retracted and resume; none ends with an abort, outputs are unchanged."""
    ps = prompts(8, 100, seed=11)
    reqs = lambda: [request(f"r{i}", p, 50) for i, p in enumerate(ps)]  # noqa: E731
    reference = run_all(make_scheduler(tiny_model_dir), reqs())
    small = make_scheduler(tiny_model_dir, max_total_tokens=300, chunked_prefill_size=32)
    squeezed = run_all(small, reqs())
    for rid, ref in reference.items():
        assert squeezed[rid]["finish"] == {"type": "length", "length": 50}, rid
        assert squeezed[rid]["ids"] == ref["ids"]
    assert small.stats.retractions > 0
    assert small.allocator.available_size() + small.tree_cache.total_size() == 300


def test_a_request_alone_outgrowing_the_pool_ends_with_length(tiny_model_dir):
    s = make_scheduler(tiny_model_dir, max_total_tokens=64)
    (p,) = prompts(1, 20, seed=12)
    r = run_all(s, [request("big", p, 200)])["big"]
    assert r["finish"]["type"] == "length"
    assert 40 <= len(r["ids"]) <= 64 - 20 + 1
    assert s.allocator.available_size() + s.tree_cache.total_size() == 64
