"""Embedding models end to end: a server started with --is-embedding answers /encode and
/v1/embeddings (plain HTTP and the openai client), refuses generation and bad input with a 400
and keeps serving; Engine.encode; a generation server refuses embeddings."""

from __future__ import annotations

import base64
import json
import os
import struct
from typing import Any, Iterator

import pytest
import requests
import torch

transformers = pytest.importorskip("transformers")
from embedding_models import save_embedding_model  # noqa: E402  (tests/ is on sys.path)

# The server computes in float32, as the reference does; kernels sum in other orders.
ATOL = 1e-4


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    """Qwen3-Embedding's layout: config.json says Qwen2ForCausalLM, the weights are a base
    model's (no `model.` prefix, no lm_head), pooling mean from sentence-transformers' files."""
    path = save_embedding_model(str(tmp_path_factory.mktemp("e2e-emb")), "qwen2", "mean")
    file = os.path.join(path, "config.json")
    with open(file, encoding="utf-8") as f:
        cfg = json.load(f)
    with open(file, "w", encoding="utf-8") as f:
        json.dump({**cfg, "architectures": ["Qwen2ForCausalLM"]}, f)
    return path


@pytest.fixture(scope="module")
def url(launch_server_variant: Any, model_path: str) -> Iterator[str]:
    args = ("--model-path", model_path, "--is-embedding", "--dtype", "float32",
            "--chunked-prefill-size", "16")  # fmt: skip
    with launch_server_variant(*args) as server:
        yield server.url


@pytest.fixture(scope="module")
def tokenizer(model_path: str) -> Any:
    return transformers.AutoTokenizer.from_pretrained(model_path)


def reference(model_path: str, ids: list[int]) -> torch.Tensor:
    """transformers' mean-pooled, normalized last hidden state of ids: [D]."""
    model = transformers.Qwen2Model.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = model(torch.tensor([ids])).last_hidden_state[0]
    return torch.nn.functional.normalize(hidden.mean(0), dim=-1)


def post(url: str, route: str, body: Any) -> requests.Response:
    return requests.post(url + route, json=body, timeout=60)


def test_encode_matches_transformers(url, model_path, tokenizer):
    text = "the quick brown fox jumps over the lazy dog " * 6  # > 16 tokens: chunked prefill
    out = post(url, "/encode", {"text": text, "rid": "e1"}).json()
    ids = tokenizer.encode(text)
    assert len(ids) > 16
    assert out["meta_info"]["id"] == "e1"
    assert out["meta_info"]["prompt_tokens"] == len(ids)
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    assert torch.allclose(torch.tensor(out["embedding"]), reference(model_path, ids), atol=ATOL)


def test_encode_batches(url, model_path):
    texts = post(url, "/encode", {"text": ["hello world", "the lazy dog"]}).json()
    ids = post(url, "/encode", {"input_ids": [[5, 6, 7], [8, 9]]}).json()
    assert [len(o["embedding"]) for o in texts + ids] == [64] * 4
    assert [o["meta_info"]["prompt_tokens"] for o in ids] == [3, 2]
    assert torch.allclose(
        torch.tensor(ids[1]["embedding"]), reference(model_path, [8, 9]), atol=ATOL
    )
    one = post(url, "/encode", {"text": "the lazy dog"}).json()
    assert torch.allclose(
        torch.tensor(one["embedding"]), torch.tensor(texts[1]["embedding"]), atol=ATOL
    )


def test_openai_client_float_and_base64(url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    plain = post(url, "/encode", {"text": ["hello world", "the dog"]}).json()
    by_default = client.embeddings.create(model="any", input=["hello world", "the dog"])  # base64
    as_float = client.embeddings.create(model="any", input="the dog", encoding_format="float")
    for i, item in enumerate(by_default.data):
        assert item.index == i
        expected = torch.tensor(plain[i]["embedding"], dtype=torch.float32)
        assert torch.equal(torch.tensor(item.embedding, dtype=torch.float32), expected)
    assert torch.allclose(
        torch.tensor(as_float.data[0].embedding), torch.tensor(plain[1]["embedding"]), atol=ATOL
    )
    total = sum(o["meta_info"]["prompt_tokens"] for o in plain)
    assert by_default.usage.prompt_tokens == by_default.usage.total_tokens == total
    ids = client.embeddings.create(model="any", input=[[5, 6, 7], [8, 9]], encoding_format="float")
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 5


def test_v1_embeddings_plain_http(url):
    body = post(url, "/v1/embeddings", {"input": [8, 9], "encoding_format": "base64"}).json()
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"
    raw = base64.b64decode(body["data"][0]["embedding"])
    values = struct.unpack(f"<{len(raw) // 4}f", raw)
    native = post(url, "/encode", {"input_ids": [8, 9]}).json()["embedding"]
    assert list(values) == [struct.unpack("<f", struct.pack("<f", v))[0] for v in native]
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


@pytest.mark.parametrize(
    "route, body, words",
    [
        ("/encode", {"text": ""}, "empty"),
        ("/encode", {"input_ids": []}, "non-empty"),
        ("/encode", {"text": 5}, "string"),
        ("/encode", {"text": "x", "input_ids": [1]}, "exactly one"),
        ("/encode", {"text": "the " * 300}, "context length"),
        ("/encode", {"input_ids": [5, 100000]}, "100000"),
        ("/encode", {"text": "x", "colour": 1}, "colour"),
        ("/encode", {"text": "x", "lora_path": "a"}, "lora_path"),
        ("/encode", {"text": "x", "dimensions": 8}, "Matryoshka"),
        ("/v1/embeddings", {"input": ""}, "empty"),
        ("/v1/embeddings", {"input": []}, "empty"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ("/v1/embeddings", {"input": [1.5]}, "input"),
        ("/v1/embeddings", {"input": "x", "dimensions": 8}, "Matryoshka"),
        ("/v1/embeddings", {"input": "x", "priority": 3}, "priority"),
        ("/v1/embeddings", {"input": "x", "colour": 1}, "colour"),
    ],
)
def test_bad_input_gets_400_and_the_server_lives(url, route, body, words):
    resp = post(url, route, body)
    assert resp.status_code == 400, resp.text
    assert words in resp.json()["error"]["message"]
    assert len(post(url, "/encode", {"text": "still here"}).json()["embedding"]) == 64


def test_generation_is_refused(url):
    for route, body in [
        ("/generate", {"text": "hello"}),
        ("/v1/completions", {"model": "x", "prompt": "hello"}),
        ("/v1/chat/completions", {"model": "x", "messages": [{"role": "user", "content": "hi"}]}),
    ]:
        resp = post(url, route, body)
        assert resp.status_code == 400, (route, resp.text)
        assert "--is-embedding" in resp.json()["error"]["message"]
    info = requests.get(url + "/get_model_info", timeout=30).json()
    assert info["is_generation"] is False
    assert requests.get(url + "/health_generate", timeout=60).status_code == 200


def test_engine_encode(model_path, url):
    from sglang.srt.entrypoints.engine import Engine

    with Engine(model_path=model_path, is_embedding=True, dtype="float32", device="cpu") as engine:
        one = engine.encode("hello world")
        batch = engine.encode(["hello world", "the dog"])
        by_ids = engine.encode(input_ids=[8, 9])
    http = post(url, "/encode", {"text": "hello world"}).json()
    assert torch.allclose(
        torch.tensor(one["embedding"]), torch.tensor(http["embedding"]), atol=ATOL
    )
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0]["meta_info"]["prompt_tokens"] == one["meta_info"]["prompt_tokens"]
    assert by_ids["meta_info"]["prompt_tokens"] == 2


def test_generation_server_refuses_embeddings(server_url):
    for route, body in [("/encode", {"text": "hello"}), ("/v1/embeddings", {"input": "hello"})]:
        resp = post(server_url, route, body)
        assert resp.status_code == 400, resp.text
        assert "--is-embedding" in resp.json()["error"]["message"]
