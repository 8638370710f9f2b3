"""Security properties that hold, each with a test that fails if it breaks: the API key is
compared in constant time and checked on every route but /health, the server listens on
loopback by default, and no route reads a file named in a request."""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient
from starlette.routing import Route

from sglang.srt.entrypoints.http_server import create_app
from sglang.srt.multimodal.image_loader import load_image
from sglang.srt.server_args import ServerArgs

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def keyed_app() -> Any:
    """The real app with --api-key; its tokenizer manager is a stand-in (the key check runs
    before any route, so a refused request never reaches it)."""
    tm = SimpleNamespace(server_args=ServerArgs(api_key=KEY))
    return create_app(tm)


def _routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves (/openapi.json and /docs included), path
    parameters filled in."""
    out = []
    for route in app.routes:
        if isinstance(route, Route) and route.methods:
            path = re.sub(r"\{[^}]+\}", "x", route.path)
            out += [(m, path) for m in sorted(route.methods) if m != "HEAD"]
    return out


def test_every_route_but_health_wants_the_key(keyed_app: Any) -> None:
    client = TestClient(keyed_app, raise_server_exceptions=False)
    routes = _routes(keyed_app)
    assert len(routes) > 15  # the native, OpenAI and Anthropic routes are all there
    assert ("GET", "/openapi.json") in routes
    wrong = ({}, {"Authorization": "Bearer wrong-key!"}, {"x-api-key": "nope"},
             {"Authorization": f"Bearer {KEY[:-1]}"}, {"Authorization": f"Bearer {KEY}x"},
             {"Authorization": KEY}, {"x-api-key": ""})  # fmt: skip
    for method, path in routes:
        if path == "/health":
            assert client.request(method, path).status_code != 401
            continue
        for headers in wrong:
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
        for headers in ({"Authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
            r = client.request(method, path, headers=headers)
            assert r.status_code != 401, (method, path, headers)


def test_the_key_is_compared_in_constant_time(keyed_app: Any, monkeypatch: Any) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    client = TestClient(keyed_app, raise_server_exceptions=False)
    same_length = "x" * len(KEY)
    assert (
        client.get("/v1/models", headers={"Authorization": f"Bearer {same_length}"}).status_code
        == 401
    )
    assert (same_length.encode(), KEY.encode()) in calls


def test_the_default_host_is_loopback_and_the_server_listens_only_there(server: Any) -> None:
    assert ServerArgs().host == "127.0.0.1"
    port = f"{server.port:04X}"
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.rsplit(":", 1)
            if local_port == port and state == "0A":  # LISTEN
                listening.append(address)
    assert listening, "the server's port is not listening"
    loopback = {"0100007F", "00000000000000000000000001000000"}
    assert set(listening) <= loopback, listening


PASSWD = "root:x:0:0"
PATHS = ["/etc/passwd", "file:///etc/passwd", "../../../../../../etc/passwd"]


def _bodies(path: str) -> list[tuple[str, dict[str, Any]]]:
    chat = {"model": path, "max_tokens": 4}
    return [
        ("/generate", {"text": path, "sampling_params": {"max_new_tokens": 4}}),
        ("/generate", {"text": "hi", "image_data": path}),
        ("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 2, "stop": [path]}}),
        ("/v1/completions", {"model": path, "prompt": path, "max_tokens": 4}),
        ("/v1/chat/completions", {**chat, "messages": [{"role": "user", "content": path}]}),
        (
            "/v1/chat/completions",
            {
                **chat,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {"type": "image_url", "image_url": {"url": path}},
                        ],
                    }
                ],
            },
        ),
        (
            "/v1/chat/completions",
            {
                **chat,
                "messages": [{"role": "user", "content": "hi"}],
                "chat_template_kwargs": {"template": path, "path": path},
            },
        ),
        (
            "/v1/messages",
            {"model": path, "max_tokens": 4, "messages": [{"role": "user", "content": path}]},
        ),
        (
            "/v1/messages",
            {
                "model": "m",
                "max_tokens": 4,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "url", "url": path}}],
                    }
                ],
            },
        ),
        (
            "/v1/chat/completions",
            {
                **chat,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"$ref": path}},
                    }
                ],
            },
        ),
        (
            "/v1/chat/completions",
            {
                **chat,
                "messages": [{"role": "user", "content": "hi"}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"$ref": path}},
                },
            },
        ),
        (
            "/generate",
            {"text": "hi", "sampling_params": {"max_new_tokens": 2, "json_schema": {"$ref": path}}},
        ),
        ("/generate", {"text": "hi", "rid": path, "sampling_params": {"max_new_tokens": 2}}),
        ("/v1/embeddings", {"model": path, "input": path}),
        ("/encode", {"text": path}),
        ("/v1/tokenize", {"model": path, "prompt": path}),
    ]


@pytest.mark.parametrize("path", PATHS)
def test_no_route_reads_a_file_named_in_a_request(server_url: str, path: str) -> None:
    assert PASSWD in Path("/etc/passwd").read_text()  # the secret the test looks for
    for route, body in _bodies(path):
        r = requests.post(server_url + route, json=body, timeout=120)
        assert r.status_code < 500, (route, r.status_code, r.text[:200])
        assert PASSWD not in r.text, (route, body)
    image = requests.post(
        server_url + "/generate", json={"text": "hi", "image_data": path}, timeout=60
    )
    assert image.status_code == 400  # a text-only model takes no image at all


@pytest.mark.parametrize("path", PATHS)
def test_the_image_loader_reads_no_file_outside_the_allowed_folders(
    path: str, tmp_path: Path
) -> None:
    inside = tmp_path / "media"
    inside.mkdir()
    (inside / "passwd").symlink_to("/etc/passwd")  # a link out of the folder counts as out
    escapes = [path, f"file://{inside}/../../../../../../etc/passwd", f"{inside}/passwd"]
    for source in escapes:
        for allowed in ((), (str(inside),)):
            with pytest.raises(ValueError, match="not readable") as refused:
                load_image(source, allowed)
            assert PASSWD not in str(refused.value)
