"""End-to-end fixtures shared by several modules: the server with the API parsers on."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

# chatml that, like Qwen3's, closes an empty think block when enable_thinking is false.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)


@pytest.fixture(scope="session")
def api_url(launch_server_variant: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second server, with the tool-call and reasoning parsers, metrics and incremental
    streaming on (test_api_compat; and one of the two workers behind sglang-router)."""
    template = Path(tmp_path_factory.mktemp("template")) / "chat.jinja"
    template.write_text(THINKING_TEMPLATE)
    args = (
        "--tool-call-parser", "hermes",
        "--reasoning-parser", "qwen3",
        "--enable-metrics",
        "--incremental-streaming-output",
        "--chat-template", str(template),
    )  # fmt: skip
    with launch_server_variant(*args) as server:
        yield server.url


@dataclasses.dataclass
class VisionServer:
    """A server on a tiny LLaVA (tests/vision_models.py), with its model folder and images."""

    url: str
    model_path: str
    images: dict[str, str]  # name -> PNG path (under the folder the server may read)


@pytest.fixture(scope="session")
def vision_server(
    launch_server_variant: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VisionServer]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from vision_models import image_files, save_tiny_llava

    model = save_tiny_llava(str(tmp_path_factory.mktemp("tiny-llava")), "llava")
    media = tmp_path_factory.mktemp("media")
    images = image_files(str(media))
    args = (
        "--model-path", model,
        "--dtype", "float32",
        "--quantization", "none",
        "--context-length", "128",
        "--chunked-prefill-size", "16",  # prompts' chunks cut through images
        "--allowed-local-media-path", str(media),
    )  # fmt: skip
    with launch_server_variant(*args) as server:
        yield VisionServer(server.url, model, images)
