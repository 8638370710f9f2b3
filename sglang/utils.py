"""Small helpers of the frontend: image encoding, free ports, waiting for a server process."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import time
from typing import Optional, Union

_IMAGE_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)


def read_bytes(path_or_bytes: Union[str, bytes]) -> bytes:
    if isinstance(path_or_bytes, bytes):
        return path_or_bytes
    if not os.path.isfile(path_or_bytes):
        raise ValueError(f"image/video file {path_or_bytes!r} does not exist")
    with open(path_or_bytes, "rb") as f:
        return f.read()


def encode_base64(path_or_bytes: Union[str, bytes]) -> str:
    """The base64 text of a file's bytes (or of the bytes given)."""
    return base64.b64encode(read_bytes(path_or_bytes)).decode("ascii")


def guess_mime(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return mime
    if data[4:8] == b"ftyp":
        return "video/mp4"
    return "image/png"


def data_url(b64: str) -> str:
    """A data: URL for base64 data, its MIME type sniffed from the first bytes."""
    head = base64.b64decode(b64[:64] + "=" * (-len(b64[:64]) % 4))
    return f"data:{guess_mime(head)};base64,{b64}"


def find_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail_file(path: str, max_lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-max_lines:])
    except OSError:
        return ""


def wait_for_server(url: str, process: subprocess.Popen, log_path: str, timeout: float) -> None:
    """Poll GET {url}/health until it answers 200; RuntimeError with the log tail if the process
    dies or `timeout` seconds pass."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise RuntimeError(
                f"the server at {url} exited with code {code}; log tail:\n{tail_file(log_path)}"
            )
        if _healthy(requests, url):
            return
        time.sleep(0.25)
    raise RuntimeError(
        f"the server at {url} was not healthy after {timeout:.0f}s; log tail:\n{tail_file(log_path)}"
    )


def _healthy(requests_module: object, url: str) -> bool:
    try:
        return requests_module.get(url + "/health", timeout=5).status_code == 200  # type: ignore[attr-defined]
    except Exception:
        return False


def http_error_message(body: str, default: Optional[str] = None) -> str:
    """The message of an error body: {"error": {"message"}}, {"error": str}, {"detail"} or text."""
    import json

    try:
        obj = json.loads(body)
    except ValueError:
        return body.strip() or (default or "")
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("detail", obj.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return str(err)
    return body.strip()
