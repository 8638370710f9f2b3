"""sgl.video: frames sampled evenly, decoded lazily, sent as images to backends that take them."""

from __future__ import annotations

import base64
import io

import pytest
from fake_provider_servers import FakeOpenAIServer

import sglang as sgl
from sglang.lang.backend.openai import OpenAI
from sglang.utils import even_indices, sample_video_frames

av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")

NUM_FRAMES = 10


@pytest.fixture(scope="module")
def video_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 10-frame video whose frame i is a solid gray of level 20 * i."""
    import numpy as np

    path = str(tmp_path_factory.mktemp("video") / "gray.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(NUM_FRAMES):
            pixels = np.full((32, 32, 3), 20 * i, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def gray_level(png: bytes) -> int:
    return round(Image.open(io.BytesIO(png)).convert("L").getpixel((16, 16)) / 20)


def test_even_indices() -> None:
    assert even_indices(10, 3) == [0, 4, 9] or even_indices(10, 3) == [0, 5, 9]
    assert even_indices(10, 1) == [5]
    assert even_indices(3, 8) == [0, 1, 2]
    assert even_indices(10, 10) == list(range(10))


def test_frames_are_sampled_evenly(video_path: str) -> None:
    frames = sample_video_frames(video_path, 4)
    assert [gray_level(f) for f in frames] == [0, 3, 6, 9]
    assert len(sample_video_frames(video_path, 50)) == NUM_FRAMES


def test_video_frames_go_to_the_backend_as_images(video_path: str) -> None:
    @sgl.function
    def describe(s, path):
        s += sgl.user(sgl.video(path, 3) + "What happens?")
        s += sgl.assistant(sgl.gen("answer", max_tokens=8))

    with FakeOpenAIServer("It gets brighter.") as fake:
        backend = OpenAI("gpt-4o-mini", base_url=fake.url + "/v1", api_key="k")
        state = describe.run(path=video_path, backend=backend)
        assert state["answer"] == "It gets brighter."
        content = fake.bodies("/chat/completions")[0]["messages"][0]["content"]
    images = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
    assert len(images) == 3 and all(u.startswith("data:image/png;base64,") for u in images)
    levels = [gray_level(base64.b64decode(u.split(",", 1)[1])) for u in images]
    assert levels == [0, 4, 9] or levels == [0, 5, 9]
    assert content[-1] == {"type": "text", "text": "What happens?"}
