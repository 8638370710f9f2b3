"""The C++ CPU kernels (layers/cpu_kernels) against the torch ops they replace, and a model run
with them against one without them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_models import Driver, make_runner

from sglang.srt.layers import attention as attn_mod
from sglang.srt.layers import cpu_kernels
from sglang.srt.layers.norm import rms_norm
from sglang.srt.layers.rotary import RotaryEmbedding, apply_rotary

kernels = cpu_kernels.load()
pytestmark = pytest.mark.skipif(kernels is None, reason="CPU kernels not built (no compiler)")

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def assert_close_to_rounding(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to the storage dtype's rounding: a float sum taken in another order may land on
    the neighbouring value; anything wrong (a missed rounding, a wrong index) is far off."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    eps = torch.finfo(ref.dtype).eps
    tol = 2 * eps * ref.float().abs() + 1e-6
    assert bool(((ours.float() - ref.float()).abs() <= tol).all())
    if ref.dtype == torch.bfloat16:  # same rounding steps: nearly always the same bits
        assert (ours != ref).float().mean().item() < 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_rms_norm_and_residual_add(dtype, rows):
    g = torch.Generator().manual_seed(rows)
    x, r = (torch.randn(rows, 576, generator=g).to(dtype) for _ in range(2))
    w = torch.randn(576, generator=g).to(dtype)
    assert_close_to_rounding(kernels.rms_norm(x, w, 1e-5), rms_norm(x, w, 1e-5))
    out, total = kernels.add_rms_norm(x, r, w, 1e-5)
    assert torch.equal(total, x + r)
    assert_close_to_rounding(out, rms_norm(x + r, w, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 33])
def test_silu_and_mul(dtype, rows):
    x = (torch.randn(rows, 2 * 1536, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    assert_close_to_rounding(kernels.silu_and_mul(x), F.silu(x[:, :1536]) * x[:, 1536:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_of_q_and_k_heads(dtype):
    g = torch.Generator().manual_seed(2)
    rope = RotaryEmbedding(64, 4096, 10000.0, None, dtype)
    positions = torch.randint(0, 4096, (37,), generator=g)
    qkv = torch.randn(37, 15 * 64, generator=g).to(dtype)  # 9 q, 3 k, 3 v heads
    cos, sin = rope.cos[positions].unsqueeze(1), rope.sin[positions].unsqueeze(1)
    ref = apply_rotary(qkv[:, : 12 * 64].view(37, 12, 64), cos, sin)
    ours = kernels.rotary(qkv, rope.cos, rope.sin, positions, 12, 64)
    if dtype == torch.float32:  # torch may fuse the multiply-add: no intermediate rounding
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    else:
        assert_close_to_rounding(ours, ref)
    # the layer's entry point: the looked-up pass rotates the same way
    torch.testing.assert_close(rope.lookup(positions).rotate(qkv, 12, 64), ours, rtol=0, atol=0)


def test_store_kv_writes_rows_at_their_slots():
    g = torch.Generator().manual_seed(3)
    k_buf, v_buf = torch.zeros(50, 3, 64), torch.zeros(50, 3, 64)
    loc = torch.randperm(50, generator=g)[:9]
    qkv = torch.randn(9, 15 * 64, generator=g)
    k = qkv[:, 9 * 64 : 12 * 64].view(9, 3, 64)  # strided views, as the layer passes them
    v = qkv[:, 12 * 64 :].view(9, 3, 64)
    kernels.store_kv(k_buf, v_buf, loc, k, v)
    assert torch.equal(k_buf[loc], k) and torch.equal(v_buf[loc], v)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[loc] = False
    assert bool((k_buf[untouched] == 0).all()) and bool((v_buf[untouched] == 0).all())
    with pytest.raises(RuntimeError, match="slot out of range"):
        kernels.store_kv(k_buf, v_buf, torch.tensor([50]), k[:1], v[:1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("batch", [2, 9])  # (2 threads: a task per query head / KV head)
def test_paged_decode_attention_matches_the_torch_form(dtype, batch):
    g = torch.Generator().manual_seed(4)
    k_buf = torch.randn(1200, 3, 64, generator=g).to(dtype)
    v_buf = torch.randn(1200, 3, 64, generator=g).to(dtype)
    req_to_token = torch.randperm(1200, generator=g)[:1200].view(10, 120).contiguous()
    rows = torch.randperm(10, generator=g)[:batch]
    lens = torch.randint(1, 118, (batch,), generator=g)
    lens[0] = 117
    q = torch.randn(batch, 9, 64, generator=g).to(dtype)
    ours = kernels.paged_decode_attention(q, k_buf, v_buf, req_to_token, rows, lens, 0.125)
    slots, bias = attn_mod.decode_slots_and_bias(req_to_token, rows, lens, 117)
    ref = attn_mod.paged_decode_attention(q, k_buf, v_buf, slots, bias, 0.125)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


def test_model_with_and_without_the_kernels(tiny_llama_path, monkeypatch):
    """Prefill and decode logits of the bf16 tiny model with the kernels on and off."""
    prompt = [1, 15, 27, 99, 3, 25, 7, 64, 5, 81, 12]

    def run() -> list[torch.Tensor]:
        d = Driver(make_runner(tiny_llama_path, dtype="bfloat16"))
        out = [d.extend({"a": prompt, "b": prompt[:5]}).next_token_logits]
        for t in (4, 9, 100):
            out.append(d.decode({"a": t, "b": t + 1}).next_token_logits)
        return out

    with_kernels = run()
    monkeypatch.setattr(cpu_kernels, "load", lambda: None)
    without = run()
    for a, b in zip(with_kernels, without):
        assert torch.equal(a.argmax(-1), b.argmax(-1))
        # bf16 noise: the torch decode attention rounds its probabilities to bf16, the kernel
        # keeps them in float32 (logits here reach ~10, where a bf16 step is 0.06)
        assert (a - b).abs().max() < 0.15, (a - b).abs().max()


def test_argmax_rows_is_torch_argmax():
    from sglang.srt.layers.sampler import argmax_rows

    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 49157, generator=g)  # a width that is not a multiple of the vector
    x[0, 3] = x[0, 40000] = 50.0  # a repeated maximum: the first
    x[1, 49156] = 50.0  # in the scalar tail
    x[2, 77] = x[2, 9] = float("nan")  # NaN counts as the largest: the first NaN
    x[3] = float("-inf")  # fully masked row
    x[4, :100] = float("inf")
    for rows in (x, x[:1], x[:, :5]):
        assert torch.equal(kernels.argmax_rows(rows), rows.argmax(-1))
        assert torch.equal(argmax_rows(rows), rows.argmax(-1))


@pytest.mark.parametrize(
    "dtype,quantization",
    [("float32", "none"), ("bfloat16", "none"), ("bfloat16", "int4"), ("bfloat16", "int8")],
)
def test_cpu_decode_plan_equals_the_python_layers(tiny_llama_path, dtype, quantization):
    """The C++ decode pass runs the layers' own kernels in their order: the same bits, at batch
    sizes on the quantized kernels (1, 3) and past them (20: the dense weight); bf16 without
    quantization takes oneDNN's packed weights where the CPU has them, else bf16 / float32."""
    runner = make_runner(tiny_llama_path, dtype=dtype, quantization=quantization)
    assert runner.cpu_decode is not None
    plan_path = runner.cpu_decode
    prompts = {f"r{i}": [1, 5 + i, 17, 33 + i, 9] for i in range(20)}

    def run(batch: int, use_plan: bool) -> list[torch.Tensor]:
        fresh(runner)
        runner.cpu_decode = plan_path if use_plan else None
        d = Driver(runner)
        chunk = dict(list(prompts.items())[:batch])
        out = [d.extend(chunk).next_token_logits]
        for step in range(3):
            out.append(d.decode({rid: (7 * step + len(rid)) % 128 for rid in chunk}).next_token_logits)
        return out

    for batch in (1, 3, 20):
        ours, layers = run(batch, True), run(batch, False)
        assert plan_path._plans[batch] is not None  # the C++ pass did run
        for a, b in zip(ours, layers):
            assert torch.equal(a, b)


def fresh(runner) -> None:
    runner.req_to_token_pool.clear()
    runner.token_to_kv_pool_allocator.clear()
