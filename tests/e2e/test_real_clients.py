"""Real SGLang clients against our servers: the original SGLang frontend (PyPI `sglang==0.5.23`)
running programs, and SGLang's router (PyPI `sglang-router`) in front of two of our servers.

Each client is installed once into a venv of its own under the test cache (they share our
import name or pull their own web stack); the tests are skipped when the install cannot be done
(no package index) or when SGLANG_TEST_REAL_CLIENTS=0.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import site
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

CACHE = Path(os.environ.get("SGLANG_TEST_VENV_CACHE", Path.home() / ".cache" / "sglang-test-venvs"))
PROGRAM = Path(__file__).parent / "real_clients" / "sglang_frontend_program.py"
# The frontend's own package with what its `import sglang` needs beyond the numpy, torch,
# requests, ... it finds on this interpreter's path (pinned: these were run against).
FRONTEND = ["sglang==0.5.23", "pybase64==1.5.1", "msgspec==0.23.0", "triton==3.9.0"]
ROUTER = ["sglang-router==0.3.2"]
INSTALL_TIMEOUT_S = 900

pytestmark = pytest.mark.skipif(
    os.environ.get("SGLANG_TEST_REAL_CLIENTS") == "0", reason="SGLANG_TEST_REAL_CLIENTS=0"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_venv(name: str, packages: list[str], no_deps: bool, see_system: bool) -> Path:
    """The python of a cached venv holding `packages`; skips the test if they cannot be had.

    see_system: put this interpreter's site-packages on the venv's path (after its own, and
    without running its .pth files, so our editable `sglang` stays out of the venv's way).
    """
    root = CACHE / name
    done = root / ".installed"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            _install(root, packages, no_deps, see_system)
            done.write_text(" ".join(packages))
    return root / "bin" / "python"


def _install(root: Path, packages: list[str], no_deps: bool, see_system: bool) -> None:
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    cmd = [str(root / "bin" / "python"), "-m", "pip", "install", "-q", *packages]
    if no_deps:
        cmd.insert(-len(packages), "--no-deps")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        res = None
    if res is None or res.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        detail = "timed out" if res is None else res.stderr[-500:]
        pytest.skip(f"could not install {packages}: {detail}")
    if see_system:
        purelib = next(root.glob("lib/python*/site-packages"))
        (purelib / "zz_host_site_packages.pth").write_text(site.getsitepackages()[0] + "\n")


# ------------------------------------------------------------------ the SGLang frontend


@pytest.fixture(scope="module")
def frontend_python() -> Path:
    return client_venv("sglang-0.5.23-frontend", FRONTEND, no_deps=True, see_system=True)


def test_original_frontend_runs_its_programs(frontend_python: Path, server_url: str) -> None:
    res = subprocess.run(
        [str(frontend_python), str(PROGRAM), server_url],
        capture_output=True, text=True, timeout=600, cwd=PROGRAM.parent,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["version"] == "0.5.23" and str(CACHE) in out["module"]  # theirs, not ours
    assert out["answer"].strip() and "\n" not in out["answer"]
    assert out["color"] in (" blue", " green")
    assert len(out["number"]) == 3 and out["number"].isdigit()
    assert len(out["fruits"]) == 2 and all(f for f in out["fruits"])
    assert len(out["batch"]) == 2
    # streaming with logprobs: the pieces make the text; one logprob entry per output token
    assert "".join(out["stream_pieces"]) == out["count"] and len(out["stream_pieces"]) > 1
    assert len(out["count_logprobs"]) == out["count_completion_tokens"] > 0


# ------------------------------------------------------------------ sglang-router


@pytest.fixture(scope="module")
def router_url(server_url: str, api_url: str) -> Iterator[str]:
    python = client_venv("sglang-router-0.3.2", ROUTER, no_deps=False, see_system=False)
    port = free_port()
    cmd = [
        str(python), "-m", "sglang_router.launch_router",
        "--worker-urls", server_url, api_url,
        "--policy", "round_robin", "--host", "127.0.0.1", "--port", str(port),
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
    ]  # fmt: skip
    log = open(CACHE / "router.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_router(proc, url)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_for_router(proc: subprocess.Popen, url: str) -> None:
    body = {"text": "Hi", "sampling_params": {"max_new_tokens": 1}}
    for _ in range(240):
        if proc.poll() is not None:
            pytest.fail(f"the router exited: {(CACHE / 'router.log').read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.post(url + "/generate", json=body, timeout=30).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"the router did not come up: {(CACHE / 'router.log').read_text()[-3000:]}")


def _generated(url: str) -> int:
    return requests.get(url + "/get_server_info", timeout=30).json()["num_generated_tokens"]


def test_router_in_front_of_two_servers(router_url: str, server_url: str, api_url: str) -> None:
    before = {u: _generated(u) for u in (server_url, api_url)}
    for _ in range(4):
        body = {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 3}}
        res = requests.post(router_url + "/generate", json=body, timeout=300)
        assert res.status_code == 200, res.text
        assert res.json()["meta_info"]["completion_tokens"] == 3
    assert all(_generated(u) > before[u] for u in before)  # round robin reached both
    chat = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    res = requests.post(router_url + "/v1/chat/completions", json=chat, timeout=300)
    assert res.status_code == 200, res.text
    assert res.json()["usage"]["completion_tokens"] == 3


def test_router_streams(router_url: str) -> None:
    chat = {
        "model": "m",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    res = requests.post(router_url + "/v1/chat/completions", json=chat, stream=True, timeout=300)
    assert res.status_code == 200
    events = [line[6:] for line in res.iter_lines() if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    body = {"text": "Hi", "sampling_params": {"max_new_tokens": 4}, "stream": True}
    res = requests.post(router_url + "/generate", json=body, stream=True, timeout=300)
    events = [line[6:] for line in res.iter_lines() if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    assert json.loads(events[-2])["meta_info"]["finish_reason"]["type"] == "length"
