"""--enable-deterministic-inference: a request's greedy tokens and their logprobs are the same
to the bit whatever shares its batch, however its prompt is chunked, and whether its prefix
was cached; and the kernels it relies on are batch-invariant on this machine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_scheduler import make_scheduler, prompts, request, run_all, save_tiny_llama

from sglang.srt.layers import cpu_kernels
from sglang.srt.layers.linear import ROUTE_ROWWISE, linear, linear_route, pack_weight
from sglang.srt.layers.quantization import quantize_int4, quantize_int8

ROWS = (1, 2, 3, 7, 16, 17, 64, 65, 300)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_llama(str(tmp_path_factory.mktemp("tiny-llama")))


def _row_by_row(f, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([f(x[i : i + 1]) for i in range(x.shape[0])])


@pytest.mark.parametrize("form", ["int4", "int8", "packed", "rowwise"])
def test_each_invariant_route_gives_a_row_the_same_bits_in_any_batch(form: str) -> None:
    torch.manual_seed(0)
    w = torch.randn(256, 128) * 0.05
    weight, packed, quant = w.bfloat16(), None, None
    if form == "int4":
        quant = quantize_int4(w)[0]
    elif form == "int8":
        quant = quantize_int8(w)
    elif form == "packed":
        packed = pack_weight(weight)
        if packed is None:
            pytest.skip("no oneDNN packed bf16 kernel on this CPU")
    else:
        weight = w  # float32 dense: only the per-row route is invariant
    assert (linear_route(5, weight, None, packed, quant, True).kind == ROUTE_ROWWISE) == (
        form == "rowwise"
    )
    x = torch.randn(max(ROWS), 128).bfloat16()
    f = lambda a: linear(a, weight, None, packed, quant, batch_invariant=True)  # noqa: E731
    alone = _row_by_row(f, x)
    for m in ROWS:
        assert torch.equal(f(x[:m]), alone[:m]), f"{form}: {m} rows differ from one at a time"


def test_plain_dense_products_are_not_invariant_which_is_why_routes_are_fixed() -> None:
    torch.manual_seed(0)
    w, x = torch.randn(512, 256), torch.randn(300, 256)
    assert not all(
        torch.equal(F.linear(x[:m], w), _row_by_row(lambda a: F.linear(a, w), x[:m])) for m in ROWS
    )


def test_decode_attention_kernel_is_invariant_to_its_batch() -> None:
    kernels = cpu_kernels.load()
    if kernels is None:
        pytest.skip("C++ kernels not built")
    torch.manual_seed(0)
    heads, kv_heads, dim, slots, batch = 8, 2, 32, 4096, 64
    k = torch.randn(slots, kv_heads, dim).bfloat16()
    v = torch.randn(slots, kv_heads, dim).bfloat16()
    table = torch.randperm(slots)[: batch * 40].view(batch, 40).long()
    q = torch.randn(batch, heads, dim).bfloat16()
    rows = torch.arange(batch)
    lens = torch.randint(1, 41, (batch,))
    together = kernels.paged_decode_attention(q, k, v, table, rows, lens, 0.17)
    for i in (0, 13, 63):  # one request alone runs the per-query-head split, 64 the other
        alone = kernels.paged_decode_attention(
            q[i : i + 1], k, v, table, rows[i : i + 1], lens[i : i + 1], 0.17
        )
        assert torch.equal(alone[0], together[i])


@pytest.mark.parametrize("variant", ["float32", "bfloat16-int4"])
def test_outputs_do_not_depend_on_batch_chunks_or_cache(tiny_model_dir: str, variant: str) -> None:
    dtype, quant = ("float32", "none") if variant == "float32" else ("bfloat16", "int4")
    kw = dict(enable_deterministic_inference=True, dtype=dtype, quantization=quant)
    target, *others = prompts(9, 23, seed=21)
    ask = lambda rid, p: request(rid, p, 16, return_logprob=True)  # noqa: E731

    alone = run_all(make_scheduler(tiny_model_dir, **kw), [ask("t", target)])["t"]
    crowded = run_all(
        make_scheduler(tiny_model_dir, chunked_prefill_size=7, **kw),
        [ask(f"o{i}", p) for i, p in enumerate(others[:4])]
        + [ask("t", target)]
        + [ask(f"p{i}", p) for i, p in enumerate(others[4:])],
    )["t"]
    cached = make_scheduler(tiny_model_dir, **kw)
    run_all(cached, [ask("prefix", target[:15])])
    from_cache = run_all(cached, [ask("t", target)])["t"]

    assert from_cache["cached"] > 0
    for other in (crowded, from_cache):
        assert other["ids"] == alone["ids"]
        assert other["out_lp"] == alone["out_lp"]  # the logprobs too, to the bit


def test_refused_with_torch_compile(tiny_model_dir: str) -> None:
    with pytest.raises(ValueError, match="enable-deterministic-inference"):
        make_scheduler(
            tiny_model_dir, enable_deterministic_inference=True, enable_torch_compile=True
        )
