"""Images through the real server on a tiny LLaVA: prompt layout, greedy outputs equal to
transformers' `generate`, the radix cache shared only between identical images, the chat
routes' image parts, the frontend's `sgl.image`, and bad input answered with a 400."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

import sglang as sgl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vision_models import reference  # noqa: E402

PROMPT = "<|im_start|>user\n<image>what is in this image?<|im_end|>\n<|im_start|>assistant\n"
GREEDY = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}


def post(url: str, route: str, body: Any) -> requests.Response:
    return requests.post(url + route, json=body, timeout=120)


def b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def data_uri(path: str) -> str:
    return "data:image/png;base64," + b64(path)


@pytest.fixture(scope="module")
def ref(vision_server) -> tuple[Any, Any]:
    return reference(vision_server.model_path)


def ref_generate(ref: tuple[Any, Any], text: str, image_paths: list[str], n: int) -> list[int]:
    from PIL import Image

    model, processor = ref
    images = [Image.open(p).convert("RGB") for p in image_paths]
    inputs = processor(images=images, text=[text], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def generate(url: str, image: Any, text: str = PROMPT, **extra: Any) -> requests.Response:
    return post(
        url, "/generate", {"text": text, "image_data": image, "sampling_params": GREEDY, **extra}
    )


def test_model_info_names_the_image_token(vision_server):
    info = requests.get(vision_server.url + "/get_model_info", timeout=30).json()
    assert info["image_token"] == "<image>"


@pytest.mark.parametrize("encoding", ["data_uri", "base64", "path"])
def test_greedy_output_equals_transformers_generate(vision_server, ref, encoding):
    path = vision_server.images["tall"]
    image = {"data_uri": data_uri(path), "base64": b64(path), "path": path}[encoding]
    out = generate(vision_server.url, image)
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["output_ids"] == ref_generate(ref, PROMPT, [path], 6)
    prompt_ids = ref[1].tokenizer.encode(PROMPT)
    assert body["meta_info"]["prompt_tokens"] == len(prompt_ids) - 1 + 4  # 4 image positions


def test_two_images_in_one_prompt(vision_server, ref):
    a, tall = vision_server.images["a"], vision_server.images["tall"]
    text = "<image> the quick <image> brown fox"
    out = generate(vision_server.url, [data_uri(a), data_uri(tall)], text)
    assert out.status_code == 200, out.text
    assert out.json()["output_ids"] == ref_generate(ref, text, [a, tall], 6)


def cached_tokens(url: str, image: str, text: str = PROMPT) -> int:
    out = generate(url, data_uri(image), text)
    assert out.status_code == 200, out.text
    return out.json()["meta_info"]["cached_tokens"]


def test_cache_is_shared_by_identical_images_only(vision_server):
    url, images = vision_server.url, vision_server.images
    assert post(url, "/flush_cache", {}).status_code == 200
    offset = PROMPT.index("<image>")
    prefix_tokens = len(vision_server_tokenizer(vision_server).encode(PROMPT[:offset]))
    first = cached_tokens(url, images["a"])
    again = cached_tokens(url, images["a"])
    other = cached_tokens(url, images["b"])  # same size, other pixels
    assert first == 0
    assert again >= prefix_tokens + 4  # the text before the image, and the image
    assert other <= prefix_tokens  # at most the text before the image


def vision_server_tokenizer(vision_server) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(vision_server.model_path)


def test_chat_completions_take_image_parts(vision_server, ref):
    path = vision_server.images["tall"]
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
    out = post(vision_server.url, "/v1/chat/completions", body)
    assert out.status_code == 200, out.text
    want = ref_generate(ref, PROMPT, [path], 6)
    tokenizer = ref[1].tokenizer
    expected = tokenizer.decode(want, skip_special_tokens=True)
    text = out.json()["choices"][0]["message"]["content"]
    assert text == expected[: len(text)] and text  # stops at an EOS the reference ran past
    assert out.json()["usage"]["prompt_tokens"] == len(tokenizer.encode(PROMPT)) - 1 + 4


def test_anthropic_messages_take_image_blocks(vision_server):
    path = vision_server.images["a"]
    block = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": b64(path)},
    }
    body = {
        "model": "m",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": [block, {"type": "text", "text": "hi"}]}],
    }
    out = post(vision_server.url, "/v1/messages", body)
    assert out.status_code == 200, out.text
    assert out.json()["usage"]["input_tokens"] > 4


def image_qa_program():
    @sgl.function
    def image_qa(s, image_file, question):
        s += sgl.user(sgl.image(image_file) + question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=6, temperature=0, ignore_eos=True))

    return image_qa


def test_frontend_image_qa_places_the_image_token_and_matches_generate(vision_server, ref):
    path = vision_server.images["tall"]
    backend = sgl.RuntimeEndpoint(vision_server.url)
    state = image_qa_program().run(
        image_file=path, question="what is in this image?", backend=backend
    )
    assert state.text().startswith(PROMPT)
    user = state.messages()[0]
    assert user["role"] == "user"
    assert [p["type"] for p in user["content"]] == ["image_url", "text"]
    tokenizer = ref[1].tokenizer
    want = tokenizer.decode(ref_generate(ref, PROMPT, [path], 6))
    assert state["answer"] == want


def test_frontend_two_images_in_two_roles(vision_server):
    @sgl.function
    def two(s, first, second):
        s += sgl.system(sgl.image(first) + "context")
        s += sgl.user("and " + sgl.image(second))
        s += sgl.assistant(sgl.gen("answer", max_tokens=3, temperature=0))

    images = vision_server.images
    backend = sgl.RuntimeEndpoint(vision_server.url)
    state = two.run(first=images["a"], second=Path(images["b"]).read_bytes(), backend=backend)
    assert state.text().count("<image>") == 2
    assert isinstance(state["answer"], str)


def bad_requests(vision_server) -> dict[str, tuple[dict[str, Any], str]]:
    not_image = base64.b64encode(b"plain text, not an image").decode()
    many = "".join("<image>" for _ in range(40))
    a = data_uri(vision_server.images["a"])
    return {
        "not an image": ({"text": PROMPT, "image_data": not_image}, "not a readable image"),
        "path outside": ({"text": PROMPT, "image_data": "/etc/passwd"}, "allowed-local-media-path"),
        "file url": ({"text": PROMPT, "image_data": "file:///etc/hostname"}, "allowed-local-media-path"),
        "unfetchable url": ({"text": PROMPT, "image_data": "http://127.0.0.1:9/x.png"}, "could not be fetched"),
        "token count": ({"text": "no image token", "image_data": a}, "0 image token(s) for 1 image"),
        "context": ({"text": many, "image_data": [a] * 40}, "context length"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["not an image", "path outside", "file url", "unfetchable url", "token count", "context"],
)
def test_bad_images_get_400_and_the_server_lives(vision_server, case):
    body, words = bad_requests(vision_server)[case]
    out = post(vision_server.url, "/generate", {**body, "sampling_params": {"max_new_tokens": 2}})
    assert out.status_code == 400, out.text
    assert words in out.text
    ok = generate(vision_server.url, data_uri(vision_server.images["a"]))
    assert ok.status_code == 200


def test_a_text_model_refuses_images(server_url):
    png = base64.b64encode(b"\x89PNG\r\n").decode()
    out = post(server_url, "/generate", {"text": "hi", "image_data": png})
    assert out.status_code == 400 and "does not take images" in out.text
    chat = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png}}]}
        ],
    }
    out = post(server_url, "/v1/chat/completions", chat)
    assert out.status_code == 400 and "image_url" in out.text


def write_video(path: str, frames: int) -> str:
    """A small mpeg4 video whose frame i is a solid gray of level 20 * i."""
    av = pytest.importorskip("av")
    import numpy as np

    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            pixels = np.full((32, 32, 3), 20 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_frontend_video_sends_sampled_frames(vision_server, tmp_path):
    from sglang.utils import sample_video_frames

    video = write_video(str(tmp_path / "gray.mp4"), 8)

    @sgl.function
    def describe(s, path):
        s += sgl.user(sgl.video(path, 3) + "what happens?")
        s += sgl.assistant(sgl.gen("answer", max_tokens=4, temperature=0, ignore_eos=True))

    backend = sgl.RuntimeEndpoint(vision_server.url)
    state = describe.run(path=video, backend=backend)
    prompt = state.text()[: -len(state["answer"] + "<|im_end|>\n")]
    assert prompt.count("<image>") == 3
    frames = [
        "data:image/png;base64," + base64.b64encode(f).decode()
        for f in sample_video_frames(video, 3)
    ]
    body = {
        "text": prompt,
        "image_data": frames,
        "sampling_params": {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True},
    }
    direct = post(vision_server.url, "/generate", body).json()
    assert state["answer"] == direct["text"]
    assert direct["meta_info"]["prompt_tokens"] > 3 * 4  # three images of 4 positions each


@pytest.fixture(scope="module")
def next_server(launch_server_variant: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from vision_models import image_files, save_tiny_llava

    model = save_tiny_llava(str(tmp_path_factory.mktemp("tiny-llava-next")), "llava_next")
    images = image_files(str(tmp_path_factory.mktemp("next-media")))
    args = (
        "--model-path",
        model,
        "--dtype",
        "float32",
        "--quantization",
        "none",
        "--chunked-prefill-size",
        "8",
    )
    with launch_server_variant(*args) as server:
        yield server.url, model, images


def test_llava_next_any_resolution_through_the_server(next_server):
    url, model, images = next_server
    ref_pair = reference(model)
    tokenizer = ref_pair[1].tokenizer
    for name, positions in (("a", 14), ("tall", 16)):  # the grid depends on the aspect ratio
        out = generate(url, data_uri(images[name]))
        assert out.status_code == 200, out.text
        body = out.json()
        assert body["output_ids"] == ref_generate(ref_pair, PROMPT, [images[name]], 6)
        assert body["meta_info"]["prompt_tokens"] == len(tokenizer.encode(PROMPT)) - 1 + positions
    again = generate(url, data_uri(images["tall"])).json()
    assert again["meta_info"]["cached_tokens"] == again["meta_info"]["prompt_tokens"] - 1
