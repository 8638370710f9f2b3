"""Embedding models: pooling config from the model folder, base-model architectures, and the
scheduler's pooled embeddings against transformers' hidden states (chunked or not)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from sglang.srt.layers.pooler import Pooler, PoolingConfig, PoolingType, PoolState
from sglang.srt.managers.embedding_builder import check_dimensions
from sglang.srt.managers.io_struct import TokenizedEmbeddingReqInput, TokenizedGenerateReqInput
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.models.registry import MODEL_REGISTRY, get_model_class, is_embedding_architecture
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs

transformers = pytest.importorskip("transformers")
from embedding_models import save_embedding_model  # noqa: E402  (tests/ is on sys.path)

# float32 everywhere; our kernels and transformers' sum in different orders.
ATOL = 2e-5


@pytest.fixture(scope="module")
def qwen2_mean_path(tmp_path_factory) -> str:
    """Qwen2Model with sentence-transformers mean pooling + Normalize."""
    return save_embedding_model(str(tmp_path_factory.mktemp("emb-mean")), "qwen2", "mean")


@pytest.fixture(scope="module")
def llama_last_path(tmp_path_factory) -> str:
    """LlamaModel without modules.json: last token + L2 normalization, Matryoshka allowed."""
    path = save_embedding_model(str(tmp_path_factory.mktemp("emb-last")), "llama", seed=1)
    _edit_config(path, matryoshka_dimensions=[16, 32, 64])
    return path


def _edit_config(path: str, **fields) -> None:
    file = os.path.join(path, "config.json")
    with open(file, encoding="utf-8") as f:
        cfg = json.load(f)
    with open(file, "w", encoding="utf-8") as f:
        json.dump({**cfg, **fields}, f)


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 250, (n,), generator=g).tolist() for n in (1, 7, 30, 45)]


def _reference(path: str, ids: list[int], kind: PoolingType) -> torch.Tensor:
    """transformers' last_hidden_state pooled as `kind`, L2-normalized: [D]."""
    model = transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = model(torch.tensor([ids])).last_hidden_state[0]  # [L, D]
    pooled = {"mean": hidden.mean(0), "cls": hidden[0], "last": hidden[-1]}[kind.value]
    return torch.nn.functional.normalize(pooled, dim=-1)


def _embed(path: str, prompts: list[list[int]], dims=None, **args) -> dict[str, list[float]]:
    """Run embedding requests through a Scheduler until done; rid -> embedding."""
    sched = Scheduler(
        ServerArgs(model_path=path, dtype="float32", device="cpu", grammar_backend="none", **args)
    )
    for i, ids in enumerate(prompts):
        sched.handle_message(TokenizedEmbeddingReqInput(f"r{i}", None, ids, dims))
    out = {}
    while sched.has_work():
        for req in sched.step():
            result = sched.make_output(req)
            assert result.finish_reason is not None and result.finish_reason.type == "length"
            out[result.rid] = result.embedding
    # nothing is cached or leaked: every KV slot is free again
    assert sched.allocator.available_size() == sched.allocator.size
    assert sched.tree_cache.total_size() == 0
    return out


# ---- pooling config --------------------------------------------------------------------------


def test_pooling_config_from_folders(qwen2_mean_path, llama_last_path, tmp_path):
    assert PoolingConfig.from_folder(qwen2_mean_path).pooling_type == PoolingType.MEAN
    assert PoolingConfig.from_folder(qwen2_mean_path).normalize
    last = PoolingConfig.from_folder(llama_last_path)
    assert (last.pooling_type, last.normalize) == (PoolingType.LAST, True)
    assert last.matryoshka and last.matryoshka_dimensions == (16, 32, 64)
    cls_path = save_embedding_model(str(tmp_path / "cls"), "llama", "cls")
    assert PoolingConfig.from_folder(cls_path).pooling_type == PoolingType.CLS


def test_pooling_config_refuses_what_it_cannot_do(qwen2_mean_path, tmp_path):
    with open(os.path.join(qwen2_mean_path, "1_Pooling", "config.json"), encoding="utf-8") as f:
        pooling = json.load(f)
    folder = tmp_path / "max"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({**pooling, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True})
    )
    modules = json.loads(open(os.path.join(qwen2_mean_path, "modules.json")).read())
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="pooling_mode_max_tokens"):
        PoolingConfig.from_folder(str(folder))
    dense = modules + [{"idx": 3, "path": "3_Dense", "type": "sentence_transformers.models.Dense"}]
    (folder / "modules.json").write_text(json.dumps(dense))
    with pytest.raises(ValueError, match="Dense"):
        PoolingConfig.from_folder(str(folder))


def test_pooler_folds_chunks_like_whole_sequences():
    hidden = torch.randn(10, 8)
    expected = {PoolingType.MEAN: hidden.mean(0), PoolingType.CLS: hidden[0]}
    expected[PoolingType.LAST] = hidden[-1]
    for kind in PoolingType:
        pooler = Pooler(PoolingConfig(kind, normalize=False))
        state = PoolState()
        for start, end in ((0, 4), (4, 7), (7, 10)):
            pooler.fold(state, hidden[start:end], start)
        assert torch.allclose(pooler.finish(state), expected[kind], atol=1e-6)
        assert torch.allclose(pooler.pool(hidden, [10])[0], expected[kind], atol=1e-6)


def test_matryoshka_truncates_then_normalizes():
    pooler = Pooler(PoolingConfig(PoolingType.LAST, normalize=True))
    rows = torch.randn(3, 64)
    state = PoolState(dimensions=16)
    pooler.fold(state, rows, 0)
    out = pooler.finish(state)
    assert out.shape == (16,)
    assert torch.allclose(out, torch.nn.functional.normalize(rows[-1, :16], dim=-1))


def test_check_dimensions_names_the_problem():
    info = {"is_matryoshka": True, "matryoshka_dimensions": [16, 32], "embedding_dim": 64}
    assert check_dimensions(info, 16) == 16 and check_dimensions(info, None) is None
    with pytest.raises(ValueError, match="allows"):
        check_dimensions(info, 8)
    with pytest.raises(ValueError, match="positive integer"):
        check_dimensions(info, 0)
    with pytest.raises(ValueError, match="Matryoshka"):
        check_dimensions({"embedding_dim": 64}, 16)


# ---- architectures -------------------------------------------------------------------------


def test_base_model_architectures_map_to_causal_classes():
    for name in ("LlamaModel", "Qwen2Model", "MistralModel"):
        assert is_embedding_architecture(name)
    assert get_model_class("Qwen2Model") is MODEL_REGISTRY["Qwen2ForCausalLM"]
    # every family registered now or later serves embeddings from its base-model checkpoints
    for causal in [n for n in MODEL_REGISTRY if n.endswith("ForCausalLM")]:
        assert (
            get_model_class(causal.removesuffix("ForCausalLM") + "Model") is MODEL_REGISTRY[causal]
        )
    assert not is_embedding_architecture("LlamaForCausalLM")
    assert not is_embedding_architecture("BertModel")


# ---- the scheduler against transformers ------------------------------------------------------


def test_mean_pooling_matches_transformers_chunked_or_not(qwen2_mean_path):
    prompts = _prompts()
    whole = _embed(qwen2_mean_path, prompts)
    chunked = _embed(qwen2_mean_path, prompts, chunked_prefill_size=8)  # 45 = 5 chunks + 5
    for i, ids in enumerate(prompts):
        ref = _reference(qwen2_mean_path, ids, PoolingType.MEAN)
        assert torch.allclose(torch.tensor(whole[f"r{i}"]), ref, atol=ATOL)
        assert torch.allclose(torch.tensor(chunked[f"r{i}"]), ref, atol=ATOL)


def test_last_token_pooling_matches_transformers_chunked(llama_last_path):
    prompts = _prompts()
    chunked = _embed(llama_last_path, prompts, chunked_prefill_size=4)
    for i, ids in enumerate(prompts):
        ref = _reference(llama_last_path, ids, PoolingType.LAST)
        assert torch.allclose(torch.tensor(chunked[f"r{i}"]), ref, atol=ATOL)
        assert abs(float(torch.tensor(chunked[f"r{i}"]).norm()) - 1.0) < 1e-5


def test_shared_prefixes_and_dimensions(llama_last_path):
    """A prompt that extends another gets its own embedding (no cached prefix reused), and
    `dimensions` keeps the first values of the unnormalized vector, then normalizes."""
    base = _prompts()[2]
    out = _embed(llama_last_path, [base, base + [5, 6]], dims=32, max_total_tokens=200)
    for i, ids in enumerate([base, base + [5, 6]]):
        model = transformers.AutoModel.from_pretrained(llama_last_path, dtype=torch.float32)
        with torch.no_grad():
            last = model(torch.tensor([ids])).last_hidden_state[0, -1]
        ref = torch.nn.functional.normalize(last[:32], dim=-1)
        assert len(out[f"r{i}"]) == 32
        assert torch.allclose(torch.tensor(out[f"r{i}"]), ref, atol=ATOL)


def test_embedding_scheduler_refuses_generation(qwen2_mean_path):
    sched = Scheduler(
        ServerArgs(
            model_path=qwen2_mean_path, dtype="float32", device="cpu", grammar_backend="none"
        )
    )
    params = SamplingParams.from_dict({"max_new_tokens": 4})
    sched.handle_message(TokenizedGenerateReqInput("gen", None, [5, 6, 7], params))
    sched.handle_message(TokenizedEmbeddingReqInput("emb", None, [5, 6, 7]))
    outs = {}
    while sched.has_work() or sched.has_outputs():
        for req in sched.step():
            outs[req.rid] = sched.make_output(req)
    reason = outs["gen"].finish_reason
    assert reason.is_abort and "--is-embedding" in reason.message
    assert len(outs["emb"].embedding) == 64
