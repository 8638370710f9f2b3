"""Small helpers of the frontend: image encoding, free ports, starting and waiting for servers.

`launch_server_cmd`, `wait_for_server`, `terminate_process` and `print_highlight` are the
helpers SGLang's documentation uses in its notebooks, with the same calls.
"""

from __future__ import annotations

import base64
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
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


def sample_video_frames(path: str, num_frames: int) -> list[bytes]:
    """`num_frames` frames spread evenly over a video (first and last included), as PNG bytes.

    Decoded with PyAV (`av`) or, without it, `imageio`; both are optional and imported here
    only. A video with fewer frames gives all of them.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames!r} must be >= 1")
    try:
        import av  # noqa: F401
    except ImportError:
        frames = _frames_with_imageio(path)
        return [_png(frames[i]) for i in even_indices(len(frames), num_frames)]
    return _frames_with_av(path, num_frames)


def even_indices(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(total), first and last included, no repeats."""
    if total <= count:
        return list(range(total))
    if count == 1:
        return [total // 2]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def _frames_with_av(path: str, num_frames: int) -> list[bytes]:
    import av

    with av.open(path) as container:
        total = sum(1 for _ in container.decode(video=0))
    wanted = set(even_indices(total, num_frames))
    out = []
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out.append(_png(frame.to_image()))
    if not out:
        raise ValueError(f"video {path!r} has no frames")
    return out


def _frames_with_imageio(path: str) -> list:
    try:
        import imageio.v3 as iio
    except ImportError as e:
        raise ImportError("sgl.video needs PyAV or imageio: pip install av") from e
    from PIL import Image

    return [Image.fromarray(frame) for frame in iio.imiter(path)]


def _png(image: object) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")  # type: ignore[attr-defined]
    return buf.getvalue()


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


def wait_for_server(
    base_url: str,
    timeout: Optional[float] = None,
    process: Optional[subprocess.Popen] = None,
    log_path: Optional[str] = None,
) -> None:
    """Poll GET {base_url}/health until it answers 200 (SGLang's call: `wait_for_server(url)`).

    RuntimeError, with the log's tail when `log_path` is given, if `process` exits first or
    `timeout` seconds pass (None: wait as long as it takes).
    """
    import requests

    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        code = process.poll() if process is not None else None
        if code is not None:
            raise RuntimeError(
                f"the server at {base_url} exited with code {code}; log tail:\n"
                f"{tail_file(log_path) if log_path else ''}"
            )
        if _healthy(requests, base_url):
            return
        time.sleep(0.25)
    raise RuntimeError(
        f"the server at {base_url} was not healthy after {timeout:.0f}s; log tail:\n"
        f"{tail_file(log_path) if log_path else ''}"
    )


def launch_server_cmd(
    command: str, host: str = "127.0.0.1", port: Optional[int] = None
) -> tuple[subprocess.Popen, int]:
    """Start a server command line (e.g. "python -m sglang.launch_server --model-path m") in
    the background on `host` and a free port (or `port`); returns (process, port).

    Its output goes to a temporary log file (`process.log_path`). Wait for it with
    `wait_for_server(f"http://{host}:{port}")` and stop it with `terminate_process(process)`.
    NOTE: SGLang's binds 0.0.0.0 by default; ours binds 127.0.0.1 unless told otherwise.
    """
    port = port or find_free_port(host)
    args = shlex.split(command)
    if args and args[0] in ("python", "python3"):
        args[0] = sys.executable
    args += ["--host", host, "--port", str(port)]
    log = tempfile.NamedTemporaryFile(prefix="sglang-server-", suffix=".log", delete=False)
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    process.log_path = log.name  # type: ignore[attr-defined]
    log.close()
    return process, port


def terminate_process(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Stop a process started by launch_server_cmd and its children: SIGTERM to its process
    group, then SIGKILL after `grace_s` seconds."""
    if process.poll() is not None:
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=grace_s)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the group the child leads (start_new_session=True)
    except ProcessLookupError:
        pass


def print_highlight(text: str) -> None:
    """Print `text` so it stands out: as HTML in a notebook, in bold green on a terminal."""
    if "ipykernel" in sys.modules:
        from IPython.display import HTML, display

        display(HTML(f"<strong style='color: #00008B;'>{text}</strong>"))
        return
    print(f"\033[1;32m{text}\033[0m" if sys.stdout.isatty() else text)


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
