"""Prometheus metrics (--enable-metrics) under SGLang's names, served at GET /metrics.

Token counters and latency histograms are recorded in the HTTP process as outputs arrive;
the gauges (running and queued requests, cache hit rate, KV usage) are read from the scheduler
when /metrics is scraped. prometheus-client is imported only when metrics are enabled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

# Seconds; spans a fast GPU to a slow CPU.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5, 5)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)


@dataclass
class ReqTiming:
    """When one request started, and when its first and latest tokens arrived."""

    created: float
    first_token: Optional[float] = None
    last_token: Optional[float] = None


class Metrics:
    """The server's metrics, in a registry of its own (one per tokenizer manager)."""

    def __init__(self, model_name: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, labels, registry=self.registry).labels(model_name)

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, labels, registry=self.registry).labels(model_name)

        def histogram(name: str, doc: str, buckets: tuple) -> Any:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry).labels(
                model_name
            )

        self.prompt_tokens = counter("sglang:prompt_tokens", "Prefill tokens processed.")
        self.generation_tokens = counter("sglang:generation_tokens", "Generation tokens.")
        self.cached_tokens = counter("sglang:cached_tokens", "Prompt tokens found in the cache.")
        self.num_requests = counter("sglang:num_requests", "Requests finished.")
        self.num_aborted = counter("sglang:num_aborted_requests", "Requests aborted.")
        self.num_running = gauge("sglang:num_running_reqs", "Requests in the running batch.")
        self.num_queue = gauge("sglang:num_queue_reqs", "Requests waiting to run.")
        self.cache_hit_rate = gauge("sglang:cache_hit_rate", "Prefix cache hit rate.")
        self.token_usage = gauge("sglang:token_usage", "Share of the KV cache in use.")
        self.ttft = histogram(
            "sglang:time_to_first_token_seconds", "Time to first token.", _TTFT_BUCKETS
        )
        self.itl = histogram(
            "sglang:inter_token_latency_seconds", "Time between output tokens.", _ITL_BUCKETS
        )
        self.e2e = histogram(
            "sglang:e2e_request_latency_seconds", "Request latency end to end.", _E2E_BUCKETS
        )

    def start(self) -> ReqTiming:
        return ReqTiming(time.perf_counter())

    def on_tokens(self, timing: ReqTiming, new_tokens: int) -> None:
        """`new_tokens` output tokens arrived for a request."""
        if new_tokens <= 0:
            return
        now = time.perf_counter()
        if timing.first_token is None:
            timing.first_token = now
            self.ttft.observe(now - timing.created)
            new_tokens -= 1
        elif timing.last_token is not None:
            gap = (now - timing.last_token) / new_tokens
            for _ in range(new_tokens):
                self.itl.observe(gap)
        timing.last_token = now

    def on_finish(self, timing: ReqTiming, state: Any) -> None:
        """A request ended (`state` is its ReqState)."""
        self.e2e.observe(time.perf_counter() - timing.created)
        self.prompt_tokens.inc(state.prompt_tokens)
        self.generation_tokens.inc(state.completion_tokens)
        self.cached_tokens.inc(state.cached_tokens)
        if state.finish_reason is None or state.finish_reason.is_abort:
            self.num_aborted.inc()
        else:
            self.num_requests.inc()

    def set_scheduler_info(self, info: dict[str, Any]) -> None:
        self.num_running.set(info.get("num_running_reqs", 0))
        self.num_queue.set(info.get("num_waiting_reqs", 0))
        self.cache_hit_rate.set(info.get("cache_hit_rate") or 0.0)
        total = info.get("max_total_tokens") or 0
        free = info.get("available_kv_tokens") or 0
        self.token_usage.set((total - free) / total if total else 0.0)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
