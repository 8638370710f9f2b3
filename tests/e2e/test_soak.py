"""benchmark/soak.py at a tiny size (16 clients for a few seconds, a 1024-token KV pool): it runs,
reports every figure, and nothing is lost or leaked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_soak_loses_and_leaks_nothing(
    launch_server_variant: Callable[..., Any], tmp_path: Path
) -> None:
    out = tmp_path / "soak.json"
    with launch_server_variant("--max-total-tokens", "1024") as server:
        cmd = [sys.executable, str(REPO_ROOT / "benchmark" / "soak.py"), "--url", server.url,
               "--clients", "16", "--minutes", "0.1", "--json-out", str(out)]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["lost"] == 0 and report["lost_examples"] == []
    assert report["cache_flushed"] and report["kv_slots_leaked_after_flush"] == 0
    assert report["max_total_tokens"] <= 1024
    assert report["served"] > 0 and report["ttft_p50_s"] is not None
    assert set(report) >= {"failed", "dropped_by_clients", "ttft_p99_s", "retractions"}


def test_the_soak_refuses_a_remote_server() -> None:
    cmd = [sys.executable, str(REPO_ROOT / "benchmark" / "soak.py"), "--url", "http://10.0.0.1:80"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "loopback" in run.stderr
