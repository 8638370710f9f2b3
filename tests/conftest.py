"""Shared test fixtures: a real `python -m sglang.launch_server` per session, and variants."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# The first start converts the embedded GGUF model once (cached afterwards).
STARTUP_TIMEOUT_S = float(os.environ.get("SGLANG_TEST_STARTUP_TIMEOUT", "900"))
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_pids(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc); [] where /proc is unavailable."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


def _alive(pid: int) -> bool:
    """True for a running process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


class ServerProcess:
    """A launch_server subprocess with its log in a temp file."""

    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(extra_args)
        model = os.environ.get("SGLANG_TEST_MODEL_PATH")
        if model and "--model-path" not in self.args:
            self.args += ["--model-path", model]
        self.log_file = tempfile.NamedTemporaryFile(
            prefix="sglang-server-", suffix=".log", delete=False
        )
        cmd = [sys.executable, "-m", "sglang.launch_server", "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=self.log_file, stderr=subprocess.STDOUT
        )

    def log(self, tail_chars: int = 20000) -> str:
        text = Path(self.log_file.name).read_text(errors="replace")
        return text[-tail_chars:]

    def wait_healthy(self) -> None:
        import requests

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with code {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            time.sleep(0.5)
        pytest.fail(f"server not healthy after {STARTUP_TIMEOUT_S:.0f}s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM the server; fail if it or its scheduler child outlives the grace period."""
        children = _child_pids(self.proc.pid)
        problems = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                problems.append("the server ignored SIGTERM")
        problems += self._reap(children)
        self.log_file.close()
        if problems:
            raise AssertionError("; ".join(problems) + f"\nserver log:\n{self.log()}")

    def _reap(self, children: list[int]) -> list[str]:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        orphans = [p for p in children if _alive(p)]
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return [f"child process {p} outlived the server" for p in orphans]


@contextlib.contextmanager
def running_server(*extra_args: str) -> Iterator[ServerProcess]:
    """Start `python -m sglang.launch_server <extra_args>` on a free port; stop it on exit."""
    server = ServerProcess(extra_args)
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def launch_server_variant() -> Callable[..., Any]:
    """`with launch_server_variant("--api-key", "k") as s:` for module-scoped variant servers."""
    return running_server


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """The default server (default model), shared by every test module."""
    with running_server() as s:
        yield s


@pytest.fixture(scope="session")
def server_url(server: ServerProcess) -> str:
    return server.url


@pytest.fixture(scope="session")
def model_info(server_url: str) -> dict[str, Any]:
    import requests

    return requests.get(server_url + "/get_model_info", timeout=30).json()


@pytest.fixture(scope="session")
def tokenizer(model_info: dict[str, Any]) -> Any:
    """The served model's own tokenizer (tokenizer_path is a local folder)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_info["tokenizer_path"])
