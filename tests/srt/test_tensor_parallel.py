"""Tensor parallelism (--tp-size): a tp-2 ModelRunner (rank 0 here, rank 1 a worker process it
starts, gloo on 127.0.0.1) gives the logits of the tp-1 runner on the same weights.

Tiny float32 models: logits agree within TOL (only the order of float32 sums differs: the
row-parallel layers add per-rank partial products). The default model (int4 GGUF weights,
bf16) at tp 3: each rank's quantized forms are exactly its slices of the tp-1 forms.
"""

from __future__ import annotations

import pytest
import torch
from conftest import save_tiny_model
from model_families import Driver, make_runner, random_ids

from sglang.srt.distributed.parallel_state import valid_tp_sizes
from sglang.srt.layers.linear import MergedLinear, RowParallelLinear, VocabParallelEmbedding
from sglang.srt.server_args import ServerArgs

TOL = 1e-5


def _same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, atol=TOL, rtol=TOL, msg=lambda m: f"{what}: {m}")


def _both(runners, step):
    """step(driver) on a fresh driver of each runner; returns both outputs."""
    single, parallel, _ = runners
    return step(Driver(single)), step(Driver(parallel))


class TestTinyModels:
    """Each tiny model at tp 1 and tp 2 side by side (one tp-2 group at a time per process:
    the class's fixtures end with it)."""

    @pytest.fixture(scope="class", params=["llama", "qwen2-tied", "llama-odd-vocab"])
    def tiny(self, request, tmp_path_factory):
        """(path, vocab): untied Llama; Qwen2 with q/k/v biases and tied embeddings; a vocabulary
        of 127, padded to 128 at tp 2."""
        folder = str(tmp_path_factory.mktemp(request.param))
        if request.param == "llama":
            return save_tiny_model(folder, "llama"), 128
        if request.param == "qwen2-tied":
            return save_tiny_model(folder, "qwen2", seed=3, tie_word_embeddings=True), 128
        return save_tiny_model(folder, "llama", seed=5, vocab_size=127), 127

    @pytest.fixture(scope="class")
    def runners(self, tiny):
        path, vocab = tiny
        single = make_runner(path)
        parallel = make_runner(path, tp_size=2)
        yield single, parallel, vocab
        parallel.shutdown()

    def test_rank0_holds_half_of_every_parallel_layer(self, runners):
        single, parallel, vocab = runners
        attn = parallel.model.model.layers[0].self_attn
        assert (attn.attn.num_heads, attn.attn.num_kv_heads) == (2, 1)
        assert parallel.token_to_kv_pool.k_buffer[0].shape[1] == 1  # 1 of 2 KV heads
        for name, module in parallel.model.named_modules():
            full = single.model.get_submodule(name)
            if isinstance(module, MergedLinear):
                assert module.weight.shape[0] * 2 == full.weight.shape[0], name
            elif isinstance(module, RowParallelLinear):
                assert module.weight.shape[1] * 2 == full.weight.shape[1], name
                _same(module.weight, full.weight[:, : module.weight.shape[1]], name)
            elif isinstance(module, VocabParallelEmbedding):
                assert module.weight.shape[0] == (vocab + 1) // 2, name

    def test_prefill_batch(self, runners):
        _, _, vocab = runners
        prompts = {"a": random_ids(5, 0, vocab), "b": random_ids(40, 1, vocab), "c": [7]}
        one, two = _both(runners, lambda d: d.extend(prompts))
        assert two.next_token_logits.shape == (3, vocab)
        _same(two.next_token_logits, one.next_token_logits, "prefill")

    def test_extend_on_cached_prefix(self, runners):
        _, _, vocab = runners
        a, b = random_ids(30, 3, vocab), random_ids(9, 4, vocab)

        def step(driver):
            driver.extend({"a": a[:-8]})
            return driver.extend({"b": b, "a": a[-8:]})

        one, two = _both(runners, step)
        _same(two.next_token_logits, one.next_token_logits, "cached prefix")

    def test_batched_decode_with_a_request_leaving(self, runners):
        _, _, vocab = runners
        seqs = {
            "a": random_ids(3, 5, vocab),
            "b": random_ids(11, 6, vocab),
            "c": random_ids(25, 7, vocab),
        }

        def step(driver):
            outs = [driver.extend(seqs).next_token_logits]
            for i in range(5):
                running = [rid for rid in seqs if not (rid == "b" and i >= 2)]
                tokens = {
                    rid: random_ids(1, 100 + 10 * i + j, vocab)[0] for j, rid in enumerate(running)
                }
                outs.append(driver.decode(tokens).next_token_logits)
            return outs

        one, two = _both(runners, step)
        for i, (x, y) in enumerate(zip(one, two)):
            _same(y, x, f"decode step {i}")

    def test_input_logprobs(self, runners):
        _, _, vocab = runners
        ids = random_ids(20, 9, vocab)
        args = dict(return_logprob=True, extend_logprob_start_lens_cpu=[0], top_logprobs_nums=[3])
        one, two = _both(runners, lambda d: d.extend({"a": ids}, **args))
        _same(
            torch.tensor(two.input_token_logprobs[0]),
            torch.tensor(one.input_token_logprobs[0]),
            "lp",
        )
        assert [[t for _, t in row] for row in two.input_top_logprobs[0]] == [
            [t for _, t in row] for row in one.input_top_logprobs[0]
        ]

    def test_kv_pool_is_split_by_heads(self, runners):
        """Each rank holds half the KV heads: half the bytes a token, out of a memory budget shared
        by the 2 ranks of this node (the servers of tests/e2e/test_tensor_parallel_server.py size theirs
        this way, the smallest over the ranks)."""
        single, parallel, _ = runners
        assert parallel.kv_heads == 1
        assert parallel._kv_bytes_per_token() * 2 == single._kv_bytes_per_token()
        assert parallel._ranks_sharing_memory() == 2

    def test_one_group_per_process(self, runners):
        path = runners[0].model_path
        with pytest.raises(RuntimeError, match="already holds a tensor-parallel group"):
            make_runner(path, tp_size=2)


def test_sizes_that_do_not_split_the_heads_are_refused(tmp_path):
    path = save_tiny_model(str(tmp_path), "llama")
    with pytest.raises(ValueError, match=r"4 attention heads and 2 KV heads.*\[1, 2\]"):
        make_runner(path, tp_size=3)
    assert valid_tp_sizes(9, 3) == [1, 3]  # the default model (SmolLM2-135M)


def test_flags_are_validated():
    for kwargs, message in [
        (dict(tp_size=2, dp_size=2), "data and tensor parallelism together"),
        (dict(tp_size=3, nnodes=2, dist_init_addr="127.0.0.1:5000"), "multiple"),
        (dict(tp_size=2, nnodes=2), "--dist-init-addr host:port"),
        (dict(tp_size=2, node_rank=1), "node_rank=1"),
        (dict(tp_size=2, dist_init_addr="nohost"), "expected host:port"),
        (dict(dist_init_addr="127.0.0.1:5000"), "only used with --tp-size > 1"),
        (dict(tp_size=2, enable_torch_compile=True), "enable_torch_compile"),
        (dict(tp_size=0), "tp_size=0"),
    ]:
        with pytest.raises(ValueError, match=message):
            ServerArgs(**kwargs)
    ServerArgs(tp_size=2, nnodes=2, node_rank=1, dist_init_addr="127.0.0.1:5000")


def test_other_architectures_are_refused_by_name(tmp_path):
    from model_families import save_tiny

    path = save_tiny(str(tmp_path), "Qwen3Config", "Qwen3ForCausalLM", head_dim=16)
    with pytest.raises(ValueError, match="not Qwen3ForCausalLM"):
        make_runner(path, tp_size=2)


def test_default_model_gguf_forms_are_sharded(default_model_path):
    """tp 3 with --quantization auto (int4 Q4_1 blocks, int8 tied lm_head): each rank's dense
    weights are its exact slices of the tp-1 weights (both the dequantized low-bit forms), and
    greedy next tokens agree."""
    args = dict(dtype="auto", quantization="auto")
    single = make_runner(default_model_path, **args)
    parallel = make_runner(default_model_path, tp_size=3, **args)
    try:
        assert parallel.quant_report.forms.keys() == single.quant_report.forms.keys()
        layer, full = parallel.model.model.layers[5], single.model.model.layers[5]
        q, k = 192, 64  # this rank: 3 of 9 heads, 1 of 3 KV heads, head_dim 64
        qkv, fqkv = layer.self_attn.qkv_proj.weight, full.self_attn.qkv_proj.weight
        assert torch.equal(qkv[:q], fqkv[:q])
        assert torch.equal(qkv[q : q + k], fqkv[576 : 576 + k])
        assert torch.equal(layer.self_attn.o_proj.weight, full.self_attn.o_proj.weight[:, :q])
        assert torch.equal(layer.mlp.down_proj.weight, full.mlp.down_proj.weight[:, :512])
        assert layer.mlp.down_proj.quant is not None and layer.mlp.down_proj.quant.shape == (
            576,
            512,
        )
        lm = parallel.logits_processor.lm_head.quant
        assert lm is not None and lm.shape[0] == 49152 // 3
        prompts = {"a": random_ids(30, 0, 49152), "b": random_ids(7, 1, 49152)}
        one, two = _both((single, parallel, None), lambda d: d.extend(prompts))
        assert torch.equal(one.next_token_logits.argmax(-1), two.next_token_logits.argmax(-1))
        torch.testing.assert_close(two.next_token_logits, one.next_token_logits, atol=1.5, rtol=0)
    finally:
        parallel.shutdown()
