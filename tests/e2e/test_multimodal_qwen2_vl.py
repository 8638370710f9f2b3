"""Images through the real server on a tiny Qwen2-VL and a tiny Qwen2.5-VL: greedy outputs equal to transformers'
`generate` (one image, two images, chunked prefills cutting through them, decoding with the
M-RoPE delta), the radix cache shared only between identical images, and an image sent as an
OpenAI chat `image_url` part."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vision_models import QWEN_IMAGE, image_files, reference, save_tiny_qwen2_vl  # noqa: E402

PROMPT = f"<|im_start|>user\n{QWEN_IMAGE}what is in this image?<|im_end|>\n<|im_start|>assistant\n"
GREEDY = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
POSITIONS = {"a": 6, "b": 6, "tall": 8}  # merged patches of each test image


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def qwen_server(
    request: pytest.FixtureRequest,
    launch_server_variant: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, dict[str, str]]]:
    model = save_tiny_qwen2_vl(str(tmp_path_factory.mktemp(f"tiny-{request.param}")), request.param)
    media = tmp_path_factory.mktemp("qwen-media")
    images = image_files(str(media))
    args = (
        "--model-path", model,
        "--dtype", "float32",
        "--quantization", "none",
        "--context-length", "256",
        "--chunked-prefill-size", "16",  # prompts' chunks cut through images
        "--allowed-local-media-path", str(media),
    )  # fmt: skip
    with launch_server_variant(*args) as server:
        yield server.url, model, images


@pytest.fixture(scope="module")
def ref(qwen_server) -> tuple[Any, Any]:
    return reference(qwen_server[1])


def post(url: str, route: str, body: Any) -> requests.Response:
    return requests.post(url + route, json=body, timeout=120)


def data_uri(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def generate(url: str, image: Any, text: str = PROMPT) -> requests.Response:
    return post(url, "/generate", {"text": text, "image_data": image, "sampling_params": GREEDY})


def ref_generate(ref: tuple[Any, Any], text: str, image_paths: list[str], n: int) -> list[int]:
    from PIL import Image

    model, processor = ref
    images = [Image.open(p).convert("RGB") for p in image_paths]
    inputs = processor(images=images, text=[text], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_model_info_names_the_image_token(qwen_server):
    info = requests.get(qwen_server[0] + "/get_model_info", timeout=30).json()
    assert info["image_token"] == "<|image_pad|>"


@pytest.mark.parametrize("name", ["a", "tall"])
def test_greedy_output_equals_transformers_generate(qwen_server, ref, name):
    url, _, images = qwen_server
    out = generate(url, data_uri(images[name]))
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["output_ids"] == ref_generate(ref, PROMPT, [images[name]], 6)
    prompt_ids = ref[1].tokenizer.encode(PROMPT)
    assert body["meta_info"]["prompt_tokens"] == len(prompt_ids) - 1 + POSITIONS[name]


def test_two_images_in_one_prompt_by_path(qwen_server, ref):
    url, _, images = qwen_server
    text = f"{QWEN_IMAGE} the quick {QWEN_IMAGE} brown fox"
    out = generate(url, [images["a"], images["tall"]], text)
    assert out.status_code == 200, out.text
    assert out.json()["output_ids"] == ref_generate(ref, text, [images["a"], images["tall"]], 6)


def cached_tokens(url: str, image: str) -> int:
    out = generate(url, data_uri(image))
    assert out.status_code == 200, out.text
    return out.json()["meta_info"]["cached_tokens"]


def test_cache_is_shared_by_identical_images_only(qwen_server, ref):
    url, _, images = qwen_server
    assert post(url, "/flush_cache", {}).status_code == 200
    prefix_tokens = len(ref[1].tokenizer.encode(PROMPT[: PROMPT.index("<|image_pad|>")]))
    first = cached_tokens(url, images["a"])
    again = generate(url, data_uri(images["a"])).json()
    other = cached_tokens(url, images["b"])  # same size, other pixels
    assert first == 0
    assert again["meta_info"]["cached_tokens"] >= prefix_tokens + POSITIONS["a"]
    # served from the cache (the image's positions too), the output is still transformers'
    assert again["output_ids"] == ref_generate(ref, PROMPT, [images["a"]], 6)
    assert other <= prefix_tokens  # at most the text before the image


def test_chat_completions_take_image_parts(qwen_server, ref):
    url, _, images = qwen_server
    path = images["tall"]
    content = [
        {"type": "image_url", "image_url": {"url": data_uri(path)}},
        {"type": "text", "text": "what is in this image?"},
    ]
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 6,
        "temperature": 0,
    }
    out = post(url, "/v1/chat/completions", body)
    assert out.status_code == 200, out.text
    tokenizer = ref[1].tokenizer
    expected = tokenizer.decode(ref_generate(ref, PROMPT, [path], 6), skip_special_tokens=True)
    text = out.json()["choices"][0]["message"]["content"]
    assert text == expected[: len(text)] and text  # stops at an EOS the reference ran past
    # the bare image token of the chat part gets <|vision_start|> / <|vision_end|> around it
    prompt_tokens = len(tokenizer.encode(PROMPT)) - 1 + POSITIONS["tall"]
    assert out.json()["usage"]["prompt_tokens"] == prompt_tokens
