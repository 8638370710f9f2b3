"""--watchdog-timeout: a stuck step makes the scheduler log what it was doing and exit non-zero;
the HTTP server answers the waiting request with 503 and exits too."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]

MAGIC = 4242  # a prompt starting with this token id hangs the model's forward

# The scheduler process is started with multiprocessing's spawn, which imports this script
# again (as __mp_main__) in the child: the patch applies there, the server starts only here.
LAUNCHER = textwrap.dedent(
    f"""
    import sys, time
    from sglang.srt.model_executor.model_runner import ModelRunner

    _forward = ModelRunner.forward

    def forward(self, batch):
        if int(batch.input_ids[0]) == {MAGIC}:
            time.sleep(3600)
        return _forward(self, batch)

    ModelRunner.forward = forward

    if __name__ == "__main__":
        from sglang.launch_server import main

        sys.exit(main())
    """
)


def test_a_stuck_step_ends_both_processes(tmp_path: Path) -> None:
    script = tmp_path / "hanging_server.py"
    script.write_text(LAUNCHER)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "server.log"
    args = ["--port", str(port), "--watchdog-timeout", "2"]
    model = os.environ.get("SGLANG_TEST_MODEL_PATH")
    if model:
        args += ["--model-path", model]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        ok = requests.post(
            url + "/generate",
            json={"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 2}},
            timeout=120,
        )
        assert ok.status_code == 200, ok.text
        stuck = requests.post(
            url + "/generate",
            json={
                "input_ids": [MAGIC, 5, 6],
                "sampling_params": {"max_new_tokens": 2},
                "rid": "stuck-req",
            },
            timeout=300,
        )
        assert stuck.status_code == 503, stuck.text
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert "watchdog" in text and "stuck-req" in text, text[-5000:]
    assert "exit code 3" in text, text[-5000:]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-5000:]
        try:
            if requests.get(url + "/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError("server not healthy: " + log.read_text(errors="replace")[-5000:])
