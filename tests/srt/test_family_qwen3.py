"""Qwen3 and Qwen3-MoE against transformers' reference on tiny random weights
(tests/model_families.py): head_dim apart from hidden / heads, sliding windows, sparse MoE
layers with and without renormalized top-k, expert checkpoints per expert or stacked, the
shared expert, and Qwen3 base models served as embedding models."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_families import TINY, Driver, check_family, make_runner, save_tiny  # noqa: E402

from sglang.srt.configs.model_config import ModelConfig  # noqa: E402
from sglang.srt.layers.attention import Attention  # noqa: E402
from sglang.srt.layers.moe import SparseMoeBlock  # noqa: E402
from sglang.srt.model_loader.loader import load_model  # noqa: E402
from sglang.srt.models.llama import LlamaMLP  # noqa: E402

MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)


def _windows(runner) -> list:
    return [m.sliding_window for m in runner.model.modules() if isinstance(m, Attention)]


def test_qwen3_head_dim_apart_from_hidden_over_heads_with_biases(tmp_path):
    # head_dim 32 where hidden / heads is 16; attention_bias puts biases on q/k/v and o_proj
    path = save_tiny(
        str(tmp_path), "Qwen3Config", "Qwen3ForCausalLM", head_dim=32, attention_bias=True
    )
    assert ModelConfig.from_path(path).head_dim == 32
    check_family(path)


def test_qwen3_sliding_window_shorter_than_the_prompt(tmp_path):
    # transformers 5 turns use_sliding_window + max_window_layers into layer_types: layer 0
    # full, layer 1 windowed to 8 tokens; prompts and decodes run to 45 tokens
    path = save_tiny(
        str(tmp_path), "Qwen3Config", "Qwen3ForCausalLM", use_sliding_window=True,
        sliding_window=8, max_window_layers=1,
    )  # fmt: skip
    hf = ModelConfig.from_path(path).hf
    assert hf["layer_types"] == ["full_attention", "sliding_attention"]
    assert _windows(make_runner(path)) == [None, 8]
    check_family(path)


@pytest.mark.parametrize(
    "overrides, sparse",
    [
        # layer 0 dense through mlp_only_layers, top-2 weights renormalized to sum 1
        (dict(norm_topk_prob=True, mlp_only_layers=[0]), [False, True]),
        # every second layer sparse (decoder_sparse_step), top-2 softmax weights as they are
        (
            dict(norm_topk_prob=False, num_hidden_layers=3, decoder_sparse_step=2),
            [False, True, False],
        ),
    ],
    ids=["norm_topk", "raw_topk"],
)
def test_qwen3_moe(tmp_path, overrides, sparse):
    path = save_tiny(str(tmp_path), "Qwen3MoeConfig", "Qwen3MoeForCausalLM", **MOE, **overrides)
    runner = make_runner(path)
    mlps = [layer.mlp for layer in runner.model.model.layers]
    assert [isinstance(m, SparseMoeBlock) for m in mlps] == sparse
    assert all(isinstance(m, LlamaMLP) for m, s in zip(mlps, sparse) if not s)
    check_family(path)


def test_qwen3_moe_sliding_window_covers_every_layer(tmp_path):
    # transformers' Qwen3-MoE windows every layer and ignores max_window_layers
    path = save_tiny(
        str(tmp_path), "Qwen3MoeConfig", "Qwen3MoeForCausalLM", **MOE, use_sliding_window=True,
        sliding_window=8, max_window_layers=1,
    )  # fmt: skip
    assert _windows(make_runner(path)) == [8, 8]
    check_family(path)


def _rewrite_checkpoint(path: str, rename) -> None:
    """Replace path's model.safetensors with rename({name: tensor})."""
    from safetensors.torch import load_file, save_file

    file = os.path.join(path, "model.safetensors")
    save_file(rename(load_file(file)), file, metadata={"format": "pt"})


def _stack_experts(tensors: dict) -> dict:
    """Per-expert names -> transformers' stacked layout: experts.gate_up_proj [E, 2I, H]
    (gate rows, then up rows, per expert) and experts.down_proj [E, H, I]."""
    out, stacks = {}, {}
    for name, t in tensors.items():
        prefix, sep, rest = name.partition(".experts.")
        if not sep:
            out[name] = t
            continue
        expert, proj, _ = rest.split(".")
        stacks.setdefault(prefix, {})[(int(expert), proj)] = t
    for prefix, parts in stacks.items():
        n = max(e for e, _ in parts) + 1
        out[f"{prefix}.experts.gate_up_proj"] = torch.stack(
            [torch.cat([parts[(e, "gate_proj")], parts[(e, "up_proj")]]) for e in range(n)]
        )
        out[f"{prefix}.experts.down_proj"] = torch.stack(
            [parts[(e, "down_proj")] for e in range(n)]
        )
    return out


def test_qwen3_moe_loads_stacked_expert_checkpoints_and_names_missing_experts(tmp_path):
    per_expert = save_tiny(
        str(tmp_path / "per"), "Qwen3MoeConfig", "Qwen3MoeForCausalLM", **MOE,
        mlp_only_layers=[0],
    )  # fmt: skip
    config = ModelConfig.from_path(per_expert, dtype="float32")
    expected = load_model(config, torch.device("cpu")).state_dict()
    stacked = save_tiny(
        str(tmp_path / "stacked"), "Qwen3MoeConfig", "Qwen3MoeForCausalLM", **MOE,
        mlp_only_layers=[0],
    )  # fmt: skip
    _rewrite_checkpoint(stacked, _stack_experts)
    config = ModelConfig.from_path(stacked, dtype="float32")
    loaded = load_model(config, torch.device("cpu")).state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    check_family(stacked)

    _rewrite_checkpoint(
        per_expert, lambda ts: {n: t for n, t in ts.items() if ".experts.5.up_proj" not in n}
    )
    with pytest.raises(ValueError, match=r"5\.up_proj"):
        load_model(ModelConfig.from_path(per_expert), torch.device("cpu"))


def test_shared_expert_matches_qwen2_moe_block():
    """With shared_expert_intermediate_size the block adds Qwen2-MoE's gated shared expert."""
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    config = transformers.Qwen2MoeConfig(
        **TINY, **MOE, shared_expert_intermediate_size=48, norm_topk_prob=True
    )
    torch.manual_seed(0)
    ref = Qwen2MoeSparseMoeBlock(config).float().eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
    ours = SparseMoeBlock(64, 8, 2, 32, renormalize=True, shared_intermediate_size=48)
    shared = ref.shared_expert
    state = {
        "gate.weight": ref.gate.weight,
        "shared_expert.gate_up_proj.weight": torch.cat(
            [shared.gate_proj.weight, shared.up_proj.weight]
        ),
        "shared_expert.down_proj.weight": shared.down_proj.weight,
        "shared_expert_gate.weight": ref.shared_expert_gate.weight,
        "experts.gate_up_proj": ref.experts.gate_up_proj,
        "experts.down_proj": ref.experts.down_proj,
    }
    ours.load_state_dict({k: v.detach() for k, v in state.items()})
    x = torch.randn(1, 37, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x[0]), ref(x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["Qwen3", "Qwen3Moe"])
def test_base_model_serves_last_token_embeddings(tmp_path, arch):
    """A base model saved without lm_head (Qwen3-Embedding's layout): our hidden states, and
    the last-token pooled, normalized embedding, equal transformers' last_hidden_state."""
    overrides = dict(MOE, mlp_only_layers=[0]) if arch == "Qwen3Moe" else dict(head_dim=32)
    config = getattr(transformers, f"{arch}Config")(**{**TINY, **overrides})
    torch.manual_seed(0)
    ref = getattr(transformers, f"{arch}Model")(config).float().eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
    ref.save_pretrained(str(tmp_path))
    assert not any(n.startswith("lm_head") for n in ref.state_dict())

    runner = make_runner(str(tmp_path), is_embedding=True)
    assert runner.pooler is not None and runner.logits_processor is None
    hidden_runner = SimpleNamespace(
        req_to_token_pool=runner.req_to_token_pool,
        token_to_kv_pool_allocator=runner.token_to_kv_pool_allocator,
        forward=runner.forward_hidden,
    )
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (1, 7, 30)]
    hidden = Driver(hidden_runner).extend({f"r{i}": ids for i, ids in enumerate(prompts)})
    pooled = runner.pooler.pool(hidden, [len(ids) for ids in prompts])  # [B, hidden]
    for rows, ids, embedding in zip(hidden.split([len(p) for p in prompts]), prompts, pooled):
        with torch.no_grad():
            expected = ref(torch.tensor([ids])).last_hidden_state[0]  # [L, hidden]
        torch.testing.assert_close(rows, expected, atol=1e-4, rtol=1e-4)
        last = torch.nn.functional.normalize(expected[-1], dim=-1)
        torch.testing.assert_close(embedding, last, atol=2e-5, rtol=2e-5)
