"""ServerArgs: every flag of `launch_server`, one dataclass; argparse reads its defaults from it."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional


@dataclass
class ServerArgs:
    # Model
    model_path: Optional[str] = None  # None: the embedded default model
    tokenizer_path: Optional[str] = None
    served_model_name: Optional[str] = None
    chat_template: Optional[str] = None  # a template name or a Jinja file; None: the model's own
    context_length: Optional[int] = None  # None: from the model config
    dtype: str = "auto"  # auto | bfloat16 | float32 | float16
    # auto: a GGUF keeps its own low-bit weights; none: dense; int8 | int4: quantize at load
    quantization: str = "auto"
    # The decode step compiled with torch.compile: on by default on CPU (where it pays);
    # --enable-torch-compile turns it on elsewhere, --disable-torch-compile turns it off.
    enable_torch_compile: bool = False
    disable_torch_compile: bool = False
    device: str = "auto"  # auto | cpu | cuda
    trust_remote_code: bool = False
    # Serve an embedding model (/encode, /v1/embeddings) instead of generating; a base-model
    # architecture (Qwen2Model, LlamaModel, ...) is served as one without this flag.
    is_embedding: bool = False
    # Folder(s) (os.pathsep-separated) whose files image_data may name by path; None: requests
    # cannot make the server read local files (data URIs, base64 and http(s) URLs still work)
    allowed_local_media_path: Optional[str] = None

    # HTTP
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: Optional[str] = None

    # Memory and scheduling
    max_total_tokens: Optional[int] = None  # KV pool size in tokens; None: from free memory
    max_running_requests: Optional[int] = None
    chunked_prefill_size: int = 512
    # New tokens of one prefill pass, all requests together (chunked_prefill_size: of one
    # request). None: chunked_prefill_size.
    max_prefill_tokens: Optional[int] = None
    schedule_policy: str = "lpm"  # lpm | fcfs
    disable_radix_cache: bool = False
    mem_fraction_static: float = 0.25  # share of free memory given to the KV pool when not set
    # Requests waiting to run (queued) past which new ones get 503 + Retry-After; None: no limit
    max_queued_requests: Optional[int] = None

    # Reliability
    # Largest request body accepted (bytes); a larger one gets 413 before it is read in full
    max_request_bytes: int = 32 * 1024 * 1024
    # SIGTERM: seconds in-flight requests may still run (new ones get 503); then they are
    # ended with an error and the server exits 0. A second SIGTERM exits at once.
    graceful_shutdown_timeout: float = 60.0

    # Structured generation
    grammar_backend: str = "llguidance"  # llguidance | xgrammar | none
    disable_jump_forward: bool = False

    # OpenAI API: how the model writes tool calls and reasoning (None: not parsed)
    tool_call_parser: Optional[str] = None  # hermes | qwen25 | llama3 | mistral | pythonic
    reasoning_parser: Optional[str] = None  # deepseek-r1 | qwen3

    # Observability and output
    enable_metrics: bool = False  # Prometheus metrics at GET /metrics
    # Streamed /generate chunks carry only what is new (text, ids, logprobs), not totals
    incremental_streaming_output: bool = False

    # A request's greedy (and seeded) output is the same whatever shares its batch, its
    # chunking and its cached prefix: batch-invariant kernels (CPU), at a cost in speed
    enable_deterministic_inference: bool = False

    # Parallelism. dp_size: scheduler replicas (each its own process and model copy) behind
    # one HTTP front, requests routed by cached prefix and load.
    dp_size: int = 1
    # tp_size: ranks that each hold 1/tp_size of every layer (heads, intermediate features,
    # vocabulary rows) and run each pass in lockstep (torch.distributed: gloo on CPU, NCCL on
    # CUDA); one scheduler, on rank 0. The Llama family (Llama, Mistral, Qwen2, SmolLM) only.
    tp_size: int = 1
    # Several nodes (machines) share the tp_size ranks, tp_size / nnodes each: node 0 runs the
    # HTTP server, the scheduler and its ranks; node k > 0 (--node-rank k) runs only its ranks.
    # dist_init_addr "host:port": where rank 0 (on node 0) listens for the others; None with
    # one node: a free local port.
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: Optional[str] = None

    # Misc
    log_level: str = "info"
    random_seed: int = 0
    # torch threads of the scheduler (of each tensor-parallel rank); None: all cores (this
    # node's cores shared by its ranks)
    num_threads: Optional[int] = None
    stream_interval: int = 1  # output tokens per streamed chunk (the first token goes at once)
    # Seconds one scheduler step may run; longer, the scheduler logs what it was doing and exits
    # (and the HTTP server answers 503 and exits with it), so a supervisor can restart them.
    watchdog_timeout: float = 600.0

    def __post_init__(self) -> None:
        self.check()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def check(self) -> None:
        """Raise ValueError naming the first bad value."""
        choices = {
            "dtype": ("auto", "bfloat16", "float32", "float16"),
            "device": ("auto", "cpu", "cuda"),
            "quantization": ("auto", "none", "int8", "int4"),
            "schedule_policy": ("lpm", "fcfs"),
            "grammar_backend": ("llguidance", "xgrammar", "none"),
            "log_level": ("debug", "info", "warning", "error", "critical"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")
        positive = (
            "context_length",
            "max_total_tokens",
            "max_running_requests",
            "num_threads",
            "max_prefill_tokens",
            "stream_interval",
            "watchdog_timeout",
            "max_queued_requests",
            "max_request_bytes",
            "dp_size",
            "tp_size",
            "nnodes",
        )
        for name in positive:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}={value!r}: must be positive")
        self._check_parsers()
        self._check_parallelism()
        if self.enable_torch_compile and self.disable_torch_compile:
            raise ValueError("enable_torch_compile and disable_torch_compile: pick one")
        if self.chunked_prefill_size <= 0:
            raise ValueError(
                f"chunked_prefill_size={self.chunked_prefill_size!r}: must be positive"
            )
        if not 0 < self.mem_fraction_static < 1:
            raise ValueError(f"mem_fraction_static={self.mem_fraction_static!r}: must be in (0, 1)")
        if self.graceful_shutdown_timeout < 0:
            raise ValueError(
                f"graceful_shutdown_timeout={self.graceful_shutdown_timeout!r}: must be >= 0"
            )
        if not 0 < self.port < 65536:
            raise ValueError(f"port={self.port!r}: must be in 1..65535")

    def _check_parsers(self) -> None:
        from sglang.srt.function_call.parsers import PARSERS
        from sglang.srt.reasoning_parser import REASONING_FORMATS

        for name, allowed in (
            ("tool_call_parser", PARSERS),
            ("reasoning_parser", REASONING_FORMATS),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"{name}={value!r}: expected one of {tuple(sorted(allowed))}")

    def _check_parallelism(self) -> None:
        """Tensor parallelism and several nodes: sizes that fit together, an address to meet at.
        (Whether the model's heads split into tp_size parts is checked when it is loaded.)"""
        if self.tp_size > 1 and self.dp_size > 1:
            raise ValueError(
                f"tp_size={self.tp_size} with dp_size={self.dp_size}: data and tensor "
                "parallelism together are not supported; pick one"
            )
        if self.tp_size % self.nnodes:
            raise ValueError(
                f"nnodes={self.nnodes}: tp_size={self.tp_size} must be a multiple of it "
                "(each node runs tp_size / nnodes ranks)"
            )
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank={self.node_rank}: must be in 0..nnodes-1 ({self.nnodes})")
        if self.nnodes > 1 and self.dist_init_addr is None:
            raise ValueError(
                f"nnodes={self.nnodes}: --dist-init-addr host:port (node 0's address) is required"
            )
        if self.dist_init_addr is not None:
            host, _, port = self.dist_init_addr.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"dist_init_addr={self.dist_init_addr!r}: expected host:port (node 0's "
                    "address and a free port there)"
                )
            if self.tp_size == 1:
                raise ValueError(
                    f"dist_init_addr={self.dist_init_addr!r}: only used with --tp-size > 1"
                )
        if self.tp_size > 1:
            for name, what in (
                ("enable_torch_compile", "the compiled decode step"),
                ("enable_deterministic_inference", "deterministic inference"),
                ("is_embedding", "embedding models"),
            ):
                if getattr(self, name):
                    raise ValueError(f"{name}: {what} is not supported with tp_size={self.tp_size}")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        defaults = ServerArgs.__new__(ServerArgs)
        for f in dataclasses.fields(ServerArgs):
            default = f.default if f.default is not dataclasses.MISSING else None
            object.__setattr__(defaults, f.name, default)
            flag = "--" + f.name.replace("_", "-")
            if f.type in ("bool", bool):
                parser.add_argument(flag, action="store_true", default=default)
                continue
            kind = {"int": int, "float": float}.get(_base_type(f.type), str)
            parser.add_argument(flag, type=kind, default=default)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "ServerArgs":
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(args, n) for n in names})

    def logging_level(self) -> int:
        return getattr(logging, self.log_level.upper())


def _base_type(type_name: str) -> str:
    """'Optional[int]' -> 'int'."""
    name = str(type_name)
    if name.startswith("Optional["):
        name = name[len("Optional[") : -1]
    return name


def prepare_server_args(argv: list[str]) -> ServerArgs:
    parser = argparse.ArgumentParser(prog="python -m sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    return ServerArgs.from_cli_args(parser.parse_args(argv))


@dataclass
class PortArgs:
    """ZMQ endpoints between the HTTP process and the scheduler process."""

    scheduler_input_ipc: str  # tokenizer manager PUSH -> scheduler PULL
    tokenizer_ipc: str  # scheduler PUSH -> tokenizer manager PULL

    @classmethod
    def new(cls) -> "PortArgs":
        import tempfile

        base = tempfile.mkdtemp(prefix="sglang-ipc-")
        return cls(f"ipc://{base}/scheduler", f"ipc://{base}/tokenizer")

    def for_replica(self, rank: int) -> "PortArgs":
        """The endpoints of data-parallel replica `rank`, in the same folder as these."""
        return PortArgs(f"{self.scheduler_input_ipc}-dp{rank}", f"{self.tokenizer_ipc}-dp{rank}")
