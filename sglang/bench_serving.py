"""`python -m sglang.bench_serving`: online serving benchmark of any server, SGLang's command line.

Sends a dataset's prompts to a running server at a request rate (Poisson arrivals, or all at
once) under a concurrency cap, streams the answers, and prints SGLang's summary: request and
token throughput, end-to-end latency, time to first token (TTFT), time per output token (TPOT)
and inter-token latency (ITL). `--output-file` appends the same figures as one JSON line.

    python -m sglang.bench_serving --backend sglang --port 30000 --num-prompts 100 \\
        --dataset-name random --random-input-len 256 --random-output-len 64
    python -m sglang.bench_serving --backend sglang-oai --base-url http://127.0.0.1:8080 ...

Backends: `sglang` / `sglang-native` (POST /generate); `sglang-oai`, `vllm`, `lmdeploy`,
`openai`, `llama.cpp` (POST /v1/completions, e.g. llama.cpp's llama-server); `*-chat` variants
(POST /v1/chat/completions). Datasets: `random` (random token ids of the tokenizer's vocabulary),
`sharegpt` (a local ShareGPT JSON file: nothing is downloaded), `generated-shared-prefix`
(groups of questions behind one long system prompt each).

Beyond SGLang's figures, the summary counts the prompt tokens the server reported as cached
(`meta_info.cached_tokens`, OpenAI `usage.prompt_tokens_details.cached_tokens`, llama.cpp
`timings.cache_n`) and their share of all prompt tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, AsyncIterator, Callable, Optional

import numpy as np
import requests

# ---------------------------------------------------------------- requests and their outcomes


@dataclass
class DatasetRow:
    """One request to send: its prompt, prompt length (tokens) and output length to ask for."""

    prompt: str
    prompt_len: int
    output_len: int


@dataclass
class RequestOutput:
    """What one request returned and when; times in seconds."""

    prompt_len: int = 0
    success: bool = False
    generated_text: str = ""
    output_len: int = 0  # tokens the server reported (0: unknown, retokenized instead)
    server_prompt_len: int = 0  # prompt tokens the server reported (chat templates included)
    cached_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""


# ---------------------------------------------------------------- datasets


def _vocab_ids(tokenizer: Any) -> list[int]:
    """Token ids of the plain vocabulary (special tokens left out)."""
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special]


def _random_text(tokenizer: Any, ids: list[int], n_tokens: int, rng: random.Random) -> str:
    return tokenizer.decode([rng.choice(ids) for _ in range(n_tokens)])


def _lengths(target: int, range_ratio: float, num: int, rng: random.Random) -> list[int]:
    """`num` lengths uniform in [target * range_ratio, target] (at least 1), as SGLang draws."""
    low = max(int(target * range_ratio), 1)
    return [rng.randint(low, max(target, low)) for _ in range(num)]


def sample_random_requests(
    tokenizer: Any,
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    seed: int = 1,
) -> list[DatasetRow]:
    """Prompts of random vocabulary tokens; prompt_len is the decoded text's token count."""
    rng = random.Random(seed)
    ids = _vocab_ids(tokenizer)
    in_lens = _lengths(input_len, range_ratio, num_prompts, rng)
    out_lens = _lengths(output_len, range_ratio, num_prompts, rng)
    rows = []
    for n_in, n_out in zip(in_lens, out_lens):
        prompt = _random_text(tokenizer, ids, n_in, rng)
        rows.append(DatasetRow(prompt, _count_tokens(tokenizer, prompt), n_out))
    return rows


def sample_sharegpt_requests(
    tokenizer: Any,
    path: str,
    num_prompts: int,
    fixed_output_len: Optional[int] = None,
    context_len: Optional[int] = None,
    seed: int = 1,
) -> list[DatasetRow]:
    """First human turn as the prompt, the reply's length as the output length (SGLang's filter:
    both at least 4 tokens, prompt at most 1024 and prompt + output at most 2048 or context_len)."""
    if not os.path.isfile(path):
        raise ValueError(f"--dataset-path {path!r}: no such file (ShareGPT is never downloaded)")
    with open(path) as f:
        conversations = [
            d["conversations"] for d in json.load(f) if len(d.get("conversations", [])) >= 2
        ]
    random.Random(seed).shuffle(conversations)
    rows: list[DatasetRow] = []
    for conv in conversations:
        if len(rows) == num_prompts:
            break
        row = _sharegpt_row(tokenizer, conv, fixed_output_len, context_len)
        if row is not None:
            rows.append(row)
    if not rows:
        raise ValueError(f"--dataset-path {path!r}: no conversation fits the length filter")
    return rows


def _sharegpt_row(
    tokenizer: Any, conv: list[dict], fixed_output_len: Optional[int], context_len: Optional[int]
) -> Optional[DatasetRow]:
    prompt = conv[0]["value"]
    prompt_len = _count_tokens(tokenizer, prompt)
    output_len = fixed_output_len or _count_tokens(tokenizer, conv[1]["value"])
    too_long = prompt_len > 1024 or prompt_len + output_len > (context_len or 2048)
    if prompt_len < 4 or (fixed_output_len is None and output_len < 4) or too_long:
        return None
    return DatasetRow(prompt, prompt_len, output_len)


def sample_generated_shared_prefix_requests(
    tokenizer: Any,
    num_groups: int,
    prompts_per_group: int,
    system_prompt_len: int,
    question_len: int,
    output_len: int,
    seed: int = 1,
) -> list[DatasetRow]:
    """num_groups long system prompts, each followed by prompts_per_group short questions; the
    requests of all groups are shuffled together, as SGLang does."""
    rng = random.Random(seed)
    ids = _vocab_ids(tokenizer)
    rows = []
    for _ in range(num_groups):
        system = _random_text(tokenizer, ids, system_prompt_len, rng)
        for _ in range(prompts_per_group):
            prompt = system + "\n\n" + _random_text(tokenizer, ids, question_len, rng)
            rows.append(DatasetRow(prompt, _count_tokens(tokenizer, prompt), output_len))
    rng.shuffle(rows)
    return rows


def _count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def get_dataset(args: argparse.Namespace, tokenizer: Any) -> list[DatasetRow]:
    """The requests --dataset-name and its flags describe."""
    if args.dataset_name == "random":
        return sample_random_requests(
            tokenizer,
            args.num_prompts,
            args.random_input_len,
            args.random_output_len,
            args.random_range_ratio,
            args.seed,
        )
    if args.dataset_name == "sharegpt":
        if not args.dataset_path:
            raise ValueError("--dataset-name sharegpt needs --dataset-path (nothing is downloaded)")
        return sample_sharegpt_requests(
            tokenizer,
            args.dataset_path,
            args.num_prompts,
            args.sharegpt_output_len,
            args.sharegpt_context_len,
            args.seed,
        )
    return sample_generated_shared_prefix_requests(
        tokenizer,
        args.gsp_num_groups,
        args.gsp_prompts_per_group,
        args.gsp_system_prompt_len,
        args.gsp_question_len,
        args.gsp_output_len,
        args.seed,
    )


# ---------------------------------------------------------------- backends (one API each)


@dataclass
class Api:
    """How one server API is asked: its route, the request body, and how a reply reads."""

    route: str
    body: Callable[[DatasetRow, argparse.Namespace], dict]
    text_of: Callable[[dict], str]  # the chunk's text, cumulative when `cumulative`
    cumulative: bool


def _native_body(row: DatasetRow, args: argparse.Namespace) -> dict:
    params = {
        "temperature": 0.0,
        "max_new_tokens": row.output_len,
        "ignore_eos": not args.disable_ignore_eos,
    }
    return {"text": row.prompt, "sampling_params": params, "stream": not args.disable_stream}


def _openai_common(row: DatasetRow, args: argparse.Namespace) -> dict:
    body = {
        "model": args.model,
        "temperature": 0.0,
        "max_tokens": row.output_len,
        "ignore_eos": not args.disable_ignore_eos,
        "stream": not args.disable_stream,
    }
    if not args.disable_stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _completions_body(row: DatasetRow, args: argparse.Namespace) -> dict:
    return {**_openai_common(row, args), "prompt": row.prompt}


def _chat_body(row: DatasetRow, args: argparse.Namespace) -> dict:
    messages = [{"role": "user", "content": row.prompt}]
    return {**_openai_common(row, args), "messages": messages}


def _choice(chunk: dict) -> dict:
    choices = chunk.get("choices") or [{}]
    return choices[0]


def _chat_text(chunk: dict) -> str:
    choice = _choice(chunk)
    part = choice.get("delta") or choice.get("message") or {}
    return part.get("content") or ""


NATIVE = Api("/generate", _native_body, lambda c: c.get("text", ""), cumulative=True)
COMPLETIONS = Api(
    "/v1/completions", _completions_body, lambda c: _choice(c).get("text") or "", False
)
CHAT = Api("/v1/chat/completions", _chat_body, _chat_text, cumulative=False)

BACKENDS: dict[str, Api] = {
    "sglang": NATIVE,
    "sglang-native": NATIVE,
    "sglang-oai": COMPLETIONS,
    "vllm": COMPLETIONS,
    "lmdeploy": COMPLETIONS,
    "openai": COMPLETIONS,
    "llama.cpp": COMPLETIONS,
    "sglang-oai-chat": CHAT,
    "vllm-chat": CHAT,
    "lmdeploy-chat": CHAT,
    "openai-chat": CHAT,
}


@dataclass
class Usage:
    """Token counts a reply chunk reports (None: not in this chunk)."""

    completion: Optional[int] = None
    prompt: Optional[int] = None
    cached: Optional[int] = None


def _usage(chunk: dict) -> Usage:
    meta = chunk.get("meta_info")
    if meta:
        return Usage(
            meta.get("completion_tokens"), meta.get("prompt_tokens"), meta.get("cached_tokens")
        )
    usage = chunk.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens")
    if cached is None and "timings" in chunk:  # llama.cpp's own accounting
        cached = chunk["timings"].get("cache_n")
    return Usage(usage.get("completion_tokens"), usage.get("prompt_tokens"), cached)


# ---------------------------------------------------------------- sending


class _Reply:
    """Accumulates one streamed (or whole) reply into a RequestOutput."""

    def __init__(self, api: Api, row: DatasetRow, start: float) -> None:
        self.api, self.start, self.last = api, start, start
        self.out = RequestOutput(prompt_len=row.prompt_len)

    def add(self, chunk: dict, now: float) -> None:
        text = self.api.text_of(chunk)
        usage = _usage(chunk)
        self.out.cached_tokens = _newer(usage.cached, self.out.cached_tokens)
        self.out.server_prompt_len = _newer(usage.prompt, self.out.server_prompt_len)
        grown = text if self.api.cumulative else self.out.generated_text + text
        grew = len(grown) > len(self.out.generated_text)
        if usage.completion is None:  # no count in this chunk: one token per chunk with text
            new_tokens = int(grew)
            self.out.output_len += new_tokens
        else:  # NOTE: a server may count only in its last chunk; chunks counted before stay
            new_tokens = max(usage.completion - self.out.output_len, 0)
            self.out.output_len = max(usage.completion, self.out.output_len)
        if new_tokens > 0 or grew:
            self._arrived(now, max(new_tokens, 1))
        self.out.generated_text = grown

    def _arrived(self, now: float, n_tokens: int) -> None:
        """Output arrived: the first chunk sets TTFT; later ones add one ITL per token (a chunk
        of several tokens splits its gap evenly, as SGLang does)."""
        if not self.out.ttft:
            self.out.ttft = now - self.start
        else:
            self.out.itl += [(now - self.last) / n_tokens] * n_tokens
        self.last = now

    def finish(self, now: float, streamed: bool) -> RequestOutput:
        """The request is done; unstreamed, its first token came with its last."""
        self.out.latency = now - self.start
        if not streamed or not self.out.ttft:
            self.out.ttft, self.out.itl = self.out.latency, []
        self.out.success = True
        return self.out


def _newer(value: Optional[int], old: int) -> int:
    return old if value is None else value


async def _sse_events(resp: Any) -> AsyncIterator[dict]:
    """The JSON payloads of an SSE stream, up to `data: [DONE]`."""
    async for raw in resp.content:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


async def send_request(
    session: Any, url: str, api: Api, row: DatasetRow, args: argparse.Namespace
) -> RequestOutput:
    """Send one request; failures come back as an unsuccessful RequestOutput."""
    body = {**api.body(row, args), **args.extra_request_body}
    reply = _Reply(api, row, time.perf_counter())
    try:
        async with session.post(url + api.route, json=body, headers=_headers()) as resp:
            if resp.status != 200:
                reply.out.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                return reply.out
            if body.get("stream"):
                async for chunk in _sse_events(resp):
                    reply.add(chunk, time.perf_counter())
            else:
                reply.add(await resp.json(), time.perf_counter())
        return reply.finish(time.perf_counter(), bool(body.get("stream")))
    except Exception as e:  # noqa: BLE001 - a failed request is a result, not a crash
        reply.out.error = f"{type(e).__name__}: {e}"
        return reply.out


def _headers() -> dict[str, str]:
    key = os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


async def _arrivals(
    rows: list[DatasetRow], rate: float, burstiness: float, seed: int
) -> AsyncIterator[DatasetRow]:
    """Yield rows at `rate` per second (gamma-distributed gaps; Poisson when burstiness is 1)."""
    rng = np.random.default_rng(seed)
    for row in rows:
        yield row
        if rate != float("inf"):
            await asyncio.sleep(rng.gamma(burstiness, 1.0 / (rate * burstiness)))


async def _send_all(url: str, api: Api, rows: list[DatasetRow], args: argparse.Namespace) -> Any:
    """All rows through the server at --request-rate under --max-concurrency; returns
    (outputs in row order, seconds)."""
    import aiohttp

    limit = asyncio.Semaphore(args.max_concurrency or len(rows))
    timeout = aiohttp.ClientTimeout(total=6 * 3600)
    bar = _progress_bar(len(rows), args.disable_tqdm)
    # NOTE: a connection per request, not kept alive: llama-server closes kept-alive
    # connections under load, which fails the next request written on one
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def limited(row: DatasetRow) -> RequestOutput:
            async with limit:
                out = await send_request(session, url, api, row, args)
            bar.update(1)
            return out

        start = time.perf_counter()
        tasks = []
        async for row in _arrivals(rows, args.request_rate, args.burstiness, args.seed):
            tasks.append(asyncio.create_task(limited(row)))
        outputs = await asyncio.gather(*tasks)
        seconds = time.perf_counter() - start
    bar.close()
    return list(outputs), seconds


def _progress_bar(total: int, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=disable, file=sys.stderr)


# ---------------------------------------------------------------- metrics


def _stats(prefix: str, values: list[float], percentiles: tuple[int, ...]) -> dict[str, float]:
    """mean / median / std / pN of `values` in milliseconds, keyed like SGLang's JSONL."""
    arr = np.asarray(values or [0.0], dtype=float) * 1000
    out = {
        f"mean_{prefix}_ms": float(arr.mean()),
        f"median_{prefix}_ms": float(np.median(arr)),
        f"std_{prefix}_ms": float(arr.std()),
    }
    for p in percentiles:
        out[f"p{p}_{prefix}_ms"] = float(np.percentile(arr, p))
    if prefix == "itl":
        out["max_itl_ms"] = float(arr.max())
    return out


def calculate_metrics(outputs: list[RequestOutput], seconds: float, tokenizer: Any) -> dict:
    """SGLang's summary figures over the successful requests."""
    ok = [o for o in outputs if o.success]
    retok = [_count_tokens(tokenizer, o.generated_text) for o in ok]
    out_lens = [o.output_len or r for o, r in zip(ok, retok)]
    total_in = sum(o.prompt_len for o in ok)
    total_out = sum(out_lens)
    tpots = [(o.latency - o.ttft) / (n - 1) for o, n in zip(ok, out_lens) if n > 1]
    cached = sum(o.cached_tokens for o in ok)
    # the share of what the server prefilled: its own prompt count includes chat templates
    server_in = sum(o.server_prompt_len or o.prompt_len for o in ok)
    return {
        "duration": seconds,
        "completed": len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "total_output_tokens_retokenized": sum(retok),
        "request_throughput": len(ok) / seconds,
        "input_throughput": total_in / seconds,
        "output_throughput": total_out / seconds,
        "total_throughput": (total_in + total_out) / seconds,
        "concurrency": sum(o.latency for o in ok) / seconds,
        **_stats("e2e_latency", [o.latency for o in ok], (90, 99)),
        **_stats("ttft", [o.ttft for o in ok], (99,)),
        **_stats("tpot", tpots, (99,)),
        **_stats("itl", [x for o in ok for x in o.itl], (95, 99)),
        "total_cached_tokens": cached,
        "cache_hit_rate": cached / server_in if server_in else 0.0,
    }


_LINE = "{:<40} {:<10}"
_NUM = "{:<40} {:<10.2f}"


def format_summary(args: argparse.Namespace, m: dict) -> str:
    """The summary block as SGLang prints it (plus the cached-token lines at the end)."""
    concurrency = args.max_concurrency if args.max_concurrency else "not set"
    lines = [
        "\n{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="="),
        _LINE.format("Backend:", args.backend),
        _LINE.format("Traffic request rate:", args.request_rate),
        _LINE.format("Max request concurrency:", concurrency),
        _LINE.format("Successful requests:", m["completed"]),
        _NUM.format("Benchmark duration (s):", m["duration"]),
        _LINE.format("Total input tokens:", m["total_input_tokens"]),
        _LINE.format("Total generated tokens:", m["total_output_tokens"]),
        _LINE.format("Total generated tokens (retokenized):", m["total_output_tokens_retokenized"]),
        _NUM.format("Request throughput (req/s):", m["request_throughput"]),
        _NUM.format("Input token throughput (tok/s):", m["input_throughput"]),
        _NUM.format("Output token throughput (tok/s):", m["output_throughput"]),
        _NUM.format("Total token throughput (tok/s):", m["total_throughput"]),
        _NUM.format("Concurrency:", m["concurrency"]),
    ]
    lines += _section("End-to-End Latency", "E2E Latency", "e2e_latency", m, ("p90", "p99"))
    lines += _section("Time to First Token", "TTFT", "ttft", m, ("p99",))
    lines += _section("Time per Output Token (excl. 1st token)", "TPOT", "tpot", m, ("p99",))
    lines += _section("Inter-Token Latency", "ITL", "itl", m, ("p95", "p99", "max"))
    lines += [
        "{s:{c}^{n}}".format(s="Prefix Cache", n=50, c="-"),
        _LINE.format("Cached prompt tokens:", m["total_cached_tokens"]),
        _NUM.format("Cache hit rate (%):", 100 * m["cache_hit_rate"]),
        "=" * 50,
    ]
    return "\n".join(lines)


def _section(title: str, label: str, key: str, m: dict, tails: tuple[str, ...]) -> list[str]:
    lines = ["{s:{c}^{n}}".format(s=title, n=50, c="-")]
    for stat in ("mean", "median", *tails):
        lines.append(_NUM.format(f"{stat.capitalize()} {label} (ms):", m[f"{stat}_{key}_ms"]))
    return lines


def _record(args: argparse.Namespace, m: dict, outputs: list[RequestOutput]) -> dict:
    """The JSONL line: the run's settings, then the figures (and per request with details)."""
    settings = (
        "backend dataset_name request_rate max_concurrency num_prompts sharegpt_output_len "
        "random_input_len random_output_len random_range_ratio"
    ).split()
    record = {k: getattr(args, k) for k in settings}
    record["request_rate"] = (
        str(args.request_rate) if args.request_rate == float("inf") else (args.request_rate)
    )
    record.update(m)
    if args.output_details:
        record["input_lens"] = [o.prompt_len for o in outputs]
        record["output_lens"] = [o.output_len for o in outputs]
        record["ttfts"] = [o.ttft for o in outputs]
        record["itls"] = [o.itl for o in outputs]
        record["generated_texts"] = [o.generated_text for o in outputs]
        record["errors"] = [o.error for o in outputs]
    return record


# ---------------------------------------------------------------- driving a run


def base_url(args: argparse.Namespace) -> str:
    return (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")


def _server_model(url: str) -> str:
    """The first model id of GET /v1/models, or "default" where the server has none."""
    try:
        data = requests.get(url + "/v1/models", headers=_headers(), timeout=30).json()
        return data["data"][0]["id"]
    except (requests.RequestException, ValueError, KeyError, IndexError):
        return "default"


def load_tokenizer(args: argparse.Namespace, url: str) -> Any:
    """--tokenizer, else --model when it is a local folder, else the server's own tokenizer
    (GET /get_model_info tokenizer_path, when that folder is on this machine), else the
    embedded default model's."""
    from transformers import AutoTokenizer

    path = args.tokenizer or (args.model if args.model and os.path.isdir(args.model) else None)
    path = path or _server_tokenizer_path(url)
    if path is None:
        from sglang.srt.model_loader.loader import resolve_model_path

        path = resolve_model_path(None)
    return AutoTokenizer.from_pretrained(path)


def _server_tokenizer_path(url: str) -> Optional[str]:
    try:
        info = requests.get(url + "/get_model_info", timeout=30).json()
    except (requests.RequestException, ValueError):
        return None
    path = info.get("tokenizer_path") if isinstance(info, dict) else None
    return path if path and os.path.isdir(path) else None


def _warm_up(url: str, api: Api, rows: list[DatasetRow], args: argparse.Namespace) -> None:
    """Send --warmup-requests short requests first; stop with a clear error if they fail."""
    warm = [DatasetRow(r.prompt, r.prompt_len, min(r.output_len, 16)) for r in rows]
    warm = (warm * args.warmup_requests)[: args.warmup_requests]
    if not warm:
        return
    quiet = argparse.Namespace(**{**vars(args), "disable_tqdm": True, "max_concurrency": None})
    outputs, _ = asyncio.run(_send_all(url, api, warm, quiet))
    failed = [o for o in outputs if not o.success]
    if failed:
        raise RuntimeError(f"warm-up request failed: {failed[0].error}")


def run_benchmark(args: argparse.Namespace) -> dict:
    """Run one benchmark as the command line describes; print and return the JSONL record."""
    url = base_url(args)
    args.model = args.model or _server_model(url)
    tokenizer = load_tokenizer(args, url)
    rows = get_dataset(args, tokenizer)
    api = BACKENDS[args.backend]
    print(f"#Input tokens: {sum(r.prompt_len for r in rows)}")
    print(f"#Output tokens: {sum(r.output_len for r in rows)}")
    _warm_up(url, api, rows, args)
    if args.flush_cache:
        requests.post(url + "/flush_cache", timeout=60)
    outputs, seconds = asyncio.run(_send_all(url, api, rows, args))
    metrics = calculate_metrics(outputs, seconds, tokenizer)
    print(format_summary(args, metrics))
    _report_failures(outputs)
    record = _record(args, metrics, outputs)
    with open(args.output_file or _default_output_file(args), "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def _report_failures(outputs: list[RequestOutput]) -> None:
    failed = [o for o in outputs if not o.success]
    if failed:
        print(f"{len(failed)} request(s) failed; first error: {failed[0].error}", file=sys.stderr)


def _default_output_file(args: argparse.Namespace) -> str:
    """SGLang's automatic name: backend, month-day, prompts, lengths."""
    day = datetime.now().strftime("%m%d")
    if args.dataset_name == "random":
        return (
            f"{args.backend}_{day}_{args.num_prompts}_{args.random_input_len}_"
            f"{args.random_output_len}.jsonl"
        )
    return f"{args.backend}_{day}_{args.num_prompts}_{args.dataset_name}.jsonl"


# ---------------------------------------------------------------- command line


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """The dataset flags, shared with bench_offline_throughput."""
    parser.add_argument(
        "--dataset-name",
        default="sharegpt",
        choices=["sharegpt", "random", "generated-shared-prefix"],
    )
    parser.add_argument("--dataset-path", default="", help="a local ShareGPT JSON file")
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--sharegpt-output-len", type=int, default=None)
    parser.add_argument("--sharegpt-context-len", type=int, default=None)
    parser.add_argument("--random-input-len", "--random-input", type=int, default=1024)
    parser.add_argument("--random-output-len", "--random-output", type=int, default=1024)
    parser.add_argument("--random-range-ratio", type=float, default=0.0)
    parser.add_argument("--gsp-num-groups", type=int, default=64)
    parser.add_argument("--gsp-prompts-per-group", type=int, default=16)
    parser.add_argument("--gsp-system-prompt-len", type=int, default=2048)
    parser.add_argument("--gsp-question-len", type=int, default=128)
    parser.add_argument("--gsp-output-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1)


def validate_dataset_args(args: argparse.Namespace) -> None:
    """ValueError naming the first flag whose value makes no sense."""
    positive = ["num_prompts", "random_input_len", "random_output_len", "gsp_num_groups"]
    positive += ["gsp_prompts_per_group", "gsp_system_prompt_len", "gsp_question_len"]
    positive += ["gsp_output_len"]
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
            )
    if not 0.0 <= args.random_range_ratio <= 1.0:
        raise ValueError(f"--random-range-ratio must be in [0, 1], got {args.random_range_ratio}")
    if args.dataset_name == "sharegpt" and not args.dataset_path:
        raise ValueError("--dataset-name sharegpt needs --dataset-path (nothing is downloaded)")
    if args.dataset_path and not os.path.isfile(args.dataset_path):
        raise ValueError(f"--dataset-path {args.dataset_path!r}: no such file")


def _validate(args: argparse.Namespace) -> None:
    if args.request_rate <= 0:
        raise ValueError(f"--request-rate must be positive (or inf), got {args.request_rate}")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError(f"--max-concurrency must be at least 1, got {args.max_concurrency}")
    if args.burstiness <= 0:
        raise ValueError(f"--burstiness must be positive, got {args.burstiness}")
    if args.warmup_requests < 0:
        raise ValueError(f"--warmup-requests must be 0 or more, got {args.warmup_requests}")
    validate_dataset_args(args)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text}")
    return value


def add_request_args(parser: argparse.ArgumentParser) -> None:
    """The per-request flags, shared with bench_offline_throughput."""
    parser.add_argument("--disable-ignore-eos", action="store_true")
    parser.add_argument(
        "--extra-request-body",
        type=_json_object,
        default={},
        help="JSON object merged into each request, e.g. '{\"top_p\": 0.9}'",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sglang.bench_serving",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--backend", default="sglang", choices=sorted(BACKENDS))
    parser.add_argument("--base-url", default=None, help="server URL (else --host and --port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--model", default=None, help="model id (default: GET /v1/models)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder for token counts")
    add_dataset_args(parser)
    parser.add_argument(
        "--request-rate", type=float, default=float("inf"), help="req/s; inf: all at once"
    )
    parser.add_argument("--burstiness", type=float, default=1.0)
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--output-file", default=None, help="append the result as a JSON line")
    parser.add_argument("--output-details", action="store_true", help="per-request arrays too")
    parser.add_argument("--disable-tqdm", action="store_true")
    parser.add_argument("--disable-stream", action="store_true")
    add_request_args(parser)
    parser.add_argument("--warmup-requests", type=int, default=1)
    parser.add_argument("--flush-cache", action="store_true", help="POST /flush_cache first")
    return parser


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse and validate; bad values exit with a message naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _validate(args)
    except ValueError as e:
        parser.error(str(e))
    return args


def main(argv: Optional[list[str]] = None) -> dict:
    return run_benchmark(parse_args(argv))


if __name__ == "__main__":
    main()
