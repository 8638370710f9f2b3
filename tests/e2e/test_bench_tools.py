"""End-to-end tests of the benchmark tools at tiny sizes: `sglang.bench_serving` against the real
server (three APIs, three datasets), `bench_one_batch` on the model runner,
`bench_offline_throughput` on the Engine, and the paper suite's workloads against our server."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from sglang import bench_offline_throughput, bench_one_batch, bench_serving

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "benchmark"))

SUMMARY_LINES = [
    "Serving Benchmark Result",
    "Successful requests:",
    "Request throughput (req/s):",
    "Input token throughput (tok/s):",
    "Output token throughput (tok/s):",
    "Median TTFT (ms):",
    "P99 TTFT (ms):",
    "Median ITL (ms):",
    "P99 ITL (ms):",
    "Median E2E Latency (ms):",
]
RECORD_FIELDS = [
    "completed", "total_input_tokens", "total_output_tokens", "request_throughput",
    "input_throughput", "output_throughput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
    "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2e_latency_ms", "median_e2e_latency_ms",
    "p99_e2e_latency_ms", "cache_hit_rate",
]  # fmt: skip


def _model_flags() -> list[str]:
    model = os.environ.get("SGLANG_TEST_MODEL_PATH")
    return ["--model-path", model] if model else []


def _serve(url: str, out: Path, *flags: str) -> dict:
    """Run bench_serving; check the JSONL line it appended equals the record it returned."""
    record = bench_serving.main(
        ["--base-url", url, "--output-file", str(out), "--disable-tqdm", *flags]
    )
    lines = out.read_text().splitlines()
    assert json.loads(lines[-1]) == json.loads(json.dumps(record))
    return record


def _summary_value(text: str, label: str) -> str:
    line = next(x for x in text.splitlines() if x.startswith(label))
    return line[len(label) :].strip()


def test_bench_serving_native_random(server_url: str, tmp_path: Path, capsys: Any) -> None:
    flags = [
        "--backend", "sglang", "--dataset-name", "random", "--num-prompts", "4",
        "--random-input-len", "12", "--random-output-len", "4", "--random-range-ratio", "1.0",
        "--max-concurrency", "2", "--output-details",
    ]  # fmt: skip
    record = _serve(server_url, tmp_path / "out.jsonl", *flags)
    printed = capsys.readouterr().out
    for label in SUMMARY_LINES:
        assert label in printed, label
    assert _summary_value(printed, "Successful requests:") == "4"
    assert _summary_value(printed, "Max request concurrency:") == "2"
    assert all(field in record for field in RECORD_FIELDS)
    assert record["completed"] == 4 and record["num_prompts"] == 4
    # ignore_eos with a range ratio of 1: every request generates exactly 4 tokens
    assert record["total_output_tokens"] == 16 == sum(record["output_lens"])
    assert record["total_output_tokens_retokenized"] > 0
    assert all(0 < t for t in record["ttfts"])
    assert 0 < record["mean_ttft_ms"] <= record["mean_e2e_latency_ms"]
    assert all(len(itl) <= 3 for itl in record["itls"]) and record["errors"] == [""] * 4
    assert record["p99_itl_ms"] >= record["median_itl_ms"] >= 0


def test_bench_serving_openai_shared_prefix_hits_the_cache(server_url: str, tmp_path: Path) -> None:
    flags = [
        "--backend", "sglang-oai", "--dataset-name", "generated-shared-prefix",
        "--gsp-num-groups", "2", "--gsp-prompts-per-group", "3", "--gsp-system-prompt-len", "48",
        "--gsp-question-len", "4", "--gsp-output-len", "3", "--max-concurrency", "1",
        "--request-rate", "50", "--flush-cache",
    ]  # fmt: skip
    record = _serve(server_url, tmp_path / "out.jsonl", *flags)
    assert record["completed"] == 6
    assert record["total_output_tokens"] == 18
    # one request at a time: each group's later questions find its system prompt cached
    assert record["total_cached_tokens"] >= 4 * 40
    assert 0 < record["cache_hit_rate"] < 1


def test_bench_serving_chat_sharegpt_file_not_streamed(server_url: str, tmp_path: Path) -> None:
    convs = [
        {"conversations": [{"from": "human", "value": f"Tell me a fact about number {i}."},
                           {"from": "gpt", "value": "It is a number that people often use."}]}
        for i in range(5)
    ]  # fmt: skip
    data = tmp_path / "sharegpt.json"
    data.write_text(json.dumps(convs))
    flags = [
        "--backend", "sglang-oai-chat", "--dataset-name", "sharegpt", "--dataset-path", str(data),
        "--num-prompts", "3", "--sharegpt-output-len", "5", "--disable-stream",
    ]  # fmt: skip
    record = _serve(server_url, tmp_path / "out.jsonl", *flags)
    assert record["completed"] == 3 and record["total_output_tokens"] == 15
    assert record["mean_ttft_ms"] == pytest.approx(record["mean_e2e_latency_ms"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--request-rate", "0"], "--request-rate"),
        (["--max-concurrency", "0"], "--max-concurrency"),
        (["--dataset-name", "sharegpt"], "--dataset-path"),
        (["--dataset-name", "random", "--num-prompts", "0"], "--num-prompts"),
        (["--dataset-name", "random", "--random-range-ratio", "2"], "--random-range-ratio"),
        (["--extra-request-body", "[1]"], "JSON object"),
        (["--backend", "nope"], "--backend"),
    ],
)
def test_bench_serving_bad_flags_exit_naming_them(
    flags: list[str], message: str, capsys: Any
) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_serving.parse_args(flags)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_one_batch(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "one_batch.jsonl"
    flags = ["--batch-size", "1", "3", "--input-len", "8", "--output-len", "3"]
    results = bench_one_batch.main([*_model_flags(), *flags, "--result-filename", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["batch_size"], r["input_len"], r["output_len"]) for r in rows] == [
        (1, 8, 3),
        (3, 8, 3),
    ]
    assert rows == [json.loads(json.dumps(r.__dict__)) for r in results]
    for r in rows:
        assert r["prefill_latency"] > 0 and r["median_decode_latency"] > 0
        assert r["total_latency"] >= r["prefill_latency"]
    printed = capsys.readouterr().out
    assert printed.count("Prefill. latency:") == 2 and printed.count("Decode.  median") == 2
    with pytest.raises(SystemExit):
        bench_one_batch.parse_args(["--batch-size", "0"])


def test_bench_offline_throughput(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "offline.jsonl"
    flags = [
        "--dataset-name", "generated-shared-prefix", "--gsp-num-groups", "2",
        "--gsp-prompts-per-group", "3", "--gsp-system-prompt-len", "32", "--gsp-question-len",
        "4", "--gsp-output-len", "4", "--result-filename", str(out), "--max-total-tokens", "4096",
    ]  # fmt: skip
    result = bench_offline_throughput.main([*_model_flags(), *flags])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["successful_requests"] == 6 and result["total_output_tokens"] == 24
    assert result["request_throughput"] > 0 and result["total_input_tokens"] >= 6 * 36
    assert "Offline Throughput Benchmark Result" in capsys.readouterr().out


def test_paper_suite_against_our_server(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench_prefix_cache
    import paper_suite
    import paper_workloads

    # tiny: short generations (the JSON workload keeps its budget, to close its objects), few shots
    for name in ("TOT_PLAN_TOKENS", "TOT_SOLUTION_TOKENS", "CHAT_TOKENS"):
        monkeypatch.setattr(paper_workloads, name, 6)
    monkeypatch.setattr(paper_workloads, "MMLU_SHOTS", 2)
    monkeypatch.setattr(bench_prefix_cache, "NUM_SHOTS", 4)
    has_gsm8k = paper_workloads.GSM8K_PATH.is_file()
    sizes = "mmlu=2,hellaswag=1,chat=1,json=2" + (",tot=1" if has_gsm8k else "")
    names = [part.split("=")[0] for part in sizes.split(",")]
    flags = [
        "--url", server_url, "--no-llama", "--workloads", ",".join(names), "--sizes", sizes,
        "--concurrency", "4", "--concurrency-list", "2", "--sweep-input-len", "8",
        "--sweep-output-len", "3", "--out-dir", str(tmp_path),
    ]  # fmt: skip
    results = paper_suite.main(flags)
    by_name = {w["workload"]: w for w in results["workloads"]}
    assert list(by_name) == names
    for part in sizes.split(","):
        name, n = part.split("=")
        assert by_name[name]["items"] == int(n) and by_name[name]["server"] == "sglang"
        assert by_name[name]["prompt_tokens"] > 0
    assert by_name["json"]["valid_rate"] == 1.0  # schema-constrained: always well formed
    assert by_name["hellaswag"]["cache_hit_rate"] > 0.5  # the few-shot prefix is shared
    assert by_name["chat"]["cache_hit_rate"] > 0.3  # later turns extend earlier ones
    assert 0.0 <= by_name["mmlu"]["accuracy"] <= 1.0
    (point,) = results["sweep"]
    assert point["concurrency"] == 2 and point["completed"] == 8 and len(point["ttfts_ms"]) == 8
    saved = json.loads((tmp_path / "paper_suite.json").read_text())
    assert saved["workloads"] == results["workloads"]
    table = (tmp_path / "paper_suite.md").read_text()
    assert all(f"| {name} (" in table for name in names)
    assert (tmp_path / "paper_suite_workloads.csv").read_text().count("\n") == len(names) + 1
    _check_plot(tmp_path / "paper_suite.json")


def _check_plot(json_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from paper_plots import plot

    png = plot(json_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
