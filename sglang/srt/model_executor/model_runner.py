"""ModelRunner: loads the model, owns the KV memory pools, and runs one forward pass.

At --tp-size N the runner is one rank of a tensor-parallel group (sglang/srt/distributed): it
holds its shard of the weights and its KV heads. Rank 0 (the scheduler's runner) starts the
other ranks of its node, sends each pass to every rank before running it (batch_link.py), and
its logits are the full vocabulary's; ranks 1..N-1 run serve_rank0().
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Optional

import torch

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.distributed.batch_link import BatchReceiver, BatchSender
from sglang.srt.distributed.parallel_state import (
    SINGLE,
    TpGroup,
    building_with,
    check_tp_size,
    destroy_group,
    free_local_address,
    init_group,
)
from sglang.srt.distributed.workers import (
    WorkerMonitor,
    exit_on_worker_exit,
    local_tp_size,
    rank_threads,
    spawn_workers,
    worker_args,
)
from sglang.srt.layers.attention import Attention, TorchNativeAttnBackend
from sglang.srt.layers.linear import (
    QUANT_MAX_ROWS,
    make_batch_invariant,
    pack_linears,
    use_float32_dense,
)
from sglang.srt.layers.logits import LmHead, LogitsProcessor
from sglang.srt.layers.moe import StackedExperts
from sglang.srt.layers.pooler import Pooler, PoolingConfig
from sglang.srt.mem_cache.memory_pool import (
    MHATokenToKVPool,
    ReqToTokenPool,
    TokenToKVPoolAllocator,
)
from sglang.srt.model_executor.compiled import CompiledDecode
from sglang.srt.model_executor.cpu_decode import CpuDecode
from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode, LogitsOutput
from sglang.srt.model_loader.loader import load_model, resolve_gguf_file, resolve_model_path
from sglang.srt.model_loader.quantize import QuantReport, apply_quantization
from sglang.srt.models.registry import is_embedding_architecture
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger(__name__)

DEFAULT_MAX_RUNNING_REQUESTS = 256
# On CPU the pool also competes with the weights and the OS for RAM; beyond ~1M tokens a
# 2-core machine could not use the cache anyway.
CPU_MAX_POOL_TOKENS = 1 << 20
# req_to_token rows are a few columns longer than the context, so the token a request decodes
# right at the context limit still has a column.
_ROW_SLACK = 8


class ModelRunner:
    """One model on one device; forward(ForwardBatch) -> LogitsOutput.

    tp_rank: this process's rank in the tensor-parallel group (--tp-size); 0 for the scheduler.
    """

    def __init__(self, server_args: ServerArgs, tp_rank: int = 0) -> None:
        self.server_args = server_args
        self.tp_rank = tp_rank
        self.device = _resolve_device(server_args.device, tp_rank % local_tp_size(server_args))
        _check_deterministic(server_args, self.device)
        if self.device.type == "cpu":
            torch.set_num_threads(rank_threads(server_args))
        self.model_path = resolve_model_path(server_args.model_path)
        self.tokenizer_path = server_args.tokenizer_path or self.model_path
        self.model_config = ModelConfig.from_path(
            self.model_path,
            context_length=server_args.context_length,
            dtype=server_args.dtype,
            tokenizer_path=self.tokenizer_path,
        )
        self.dtype = self.model_config.dtype
        arch = self.model_config.architecture
        self.is_embedding = server_args.is_embedding or is_embedding_architecture(arch)
        # An embedding model's passes end at the pooler: hidden states, no lm_head.
        self.pooler: Optional[Pooler] = None
        load_config = self.model_config
        if self.is_embedding:
            self.pooler = Pooler(PoolingConfig.from_folder(self.model_path))
            # built as if tied, so no lm_head is allocated (a base-model checkpoint has none)
            load_config = dataclasses.replace(load_config, tie_word_embeddings=True)
        problem = check_tp_size(server_args.tp_size, self.model_config, self.is_embedding)
        if problem is not None:
            raise ValueError(problem)
        self.tp: TpGroup = SINGLE
        self._workers: Optional[WorkerMonitor] = None  # rank 0: the ranks it started
        self._sender: Optional[BatchSender] = None  # rank 0 at tp_size > 1
        if server_args.tp_size > 1:
            self.tp = self._join_group()
        with building_with(self.tp):
            self.model = load_model(load_config, self.device)
        # layers with a sliding window or soft-capped scores run the torch-op attention paths
        self.plain_attention = all(
            m.plain for m in self.model.modules() if isinstance(m, Attention)
        )
        if server_args.enable_deterministic_inference and not self.plain_attention:
            raise ValueError(
                "--enable-deterministic-inference does not support this model's attention "
                f"({arch}: sliding-window or soft-capped layers)"
            )
        if server_args.enable_deterministic_inference and any(
            isinstance(m, StackedExperts) for m in self.model.modules()
        ):
            raise ValueError(
                "--enable-deterministic-inference does not support mixture-of-experts models "
                f"({arch}: the expert products' rows depend on the batch)"
            )
        self.quant_report = self._prepare_weights()
        # filled by init_memory_pool()
        self.req_to_token_pool: Optional[ReqToTokenPool] = None
        self.token_to_kv_pool_allocator: Optional[TokenToKVPoolAllocator] = None
        self.token_to_kv_pool: Optional[MHATokenToKVPool] = None
        self.attn_backend: Optional[TorchNativeAttnBackend] = None
        self.max_total_tokens = 0

    def _join_group(self) -> TpGroup:
        """Rank 0: start this node's other ranks; every rank: join the process group."""
        args = self.server_args
        if torch.distributed.is_initialized():
            raise RuntimeError(
                "this process already holds a tensor-parallel group: one ModelRunner at "
                "--tp-size > 1 per process (shut the other down first)"
            )
        addr = args.dist_init_addr
        if self.tp_rank == 0:
            addr = addr or free_local_address()
            local = local_tp_size(args)
            if local > 1:
                resolved = dataclasses.replace(args, model_path=self.model_path)
                ranks = list(range(1, local))
                procs = spawn_workers(worker_args(resolved, addr), ranks)
                self._workers = WorkerMonitor(dict(zip(ranks, procs)), exit_on_worker_exit)
        cfg = self.model_config
        logger.info(
            "tensor parallelism: rank %d of %d (%d nodes); this rank holds %d of %d attention "
            "heads and %d of %d KV heads; the C++ decode pass is off at --tp-size > 1",
            self.tp_rank,
            args.tp_size,
            args.nnodes,
            cfg.num_heads // args.tp_size,
            cfg.num_heads,
            cfg.num_kv_heads // args.tp_size,
            cfg.num_kv_heads,
        )
        # the group's timeout bounds one collective; rank 0 pings idle workers every second
        return init_group(
            self.tp_rank, args.tp_size, addr, self.device, args.watchdog_timeout + 60.0
        )

    def _prepare_weights(self) -> QuantReport:
        """Dense weights in the fastest dtype, low-bit forms (--quantization), packed copies."""
        to_float32 = use_float32_dense(self.model)
        report, lm_head_quant = apply_quantization(
            self.model,
            self.server_args.quantization,
            resolve_gguf_file(self.server_args.model_path),
            self.device,
        )
        packed = pack_linears(self.model)
        invariant = self.server_args.enable_deterministic_inference
        if invariant:
            make_batch_invariant(self.model)
        self.logits_processor: Optional[LogitsProcessor] = None
        if not self.is_embedding:
            self.logits_processor = LogitsProcessor(
                LmHead(
                    self.model.lm_head_weight,
                    lm_head_quant,
                    invariant,
                    softcap=getattr(self.model, "final_logit_softcap", None),
                    tp=self.tp,
                    vocab_size=self.model_config.vocab_size,
                )
            )
        logger.info(
            "%s; dense weights: %d packed for oneDNN, %d in float32",
            report.summary(),
            packed,
            to_float32,
        )
        return report

    def init_memory_pool(
        self, max_total_tokens: Optional[int] = None, max_running_requests: Optional[int] = None
    ) -> None:
        """Create the request table, the slot allocator and the KV buffers (sized from memory).

        At --tp-size > 1 every rank calls this; rank 0's arguments count (the others' are
        ignored), and a pool sized from memory is the smallest any rank can hold."""
        cfg = self.model_config
        if self.tp.enabled:
            max_total_tokens, max_running_requests = self.tp.broadcast(
                torch.tensor(
                    [max_total_tokens or 0, max_running_requests or 0],
                    dtype=torch.int64,
                    device=self._comm_device,
                )
            ).tolist()
        self.max_total_tokens = max_total_tokens or self.tp.all_reduce_min(
            self._pool_tokens_from_memory()
        )
        rows = max_running_requests or DEFAULT_MAX_RUNNING_REQUESTS
        device = str(self.device)
        self.req_to_token_pool = ReqToTokenPool(rows, cfg.context_len + _ROW_SLACK, device)
        self.token_to_kv_pool_allocator = TokenToKVPoolAllocator(self.max_total_tokens, device)
        self.token_to_kv_pool = MHATokenToKVPool(
            self.max_total_tokens,
            self.dtype,
            self.kv_heads,
            cfg.head_dim,
            cfg.num_layers,
            device,
        )
        self.attn_backend = TorchNativeAttnBackend(
            self.token_to_kv_pool, self.server_args.enable_deterministic_inference
        )
        self.compiled_decode = None
        self.cpu_decode = None
        if not self.use_torch_compile and not self.is_embedding and not self.tp.enabled:
            self.cpu_decode = CpuDecode.create(self.model, self.token_to_kv_pool)
        if self.tp.enabled and self.tp_rank == 0:
            self._sender = BatchSender(
                self.tp, self.req_to_token_pool.req_to_token, self._comm_device
            )
        if self.use_torch_compile and not self.is_embedding and not self.plain_attention:
            logger.warning(
                "the compiled decode step does not support sliding-window or soft-capped "
                "attention layers: decoding eagerly"
            )
        elif self.use_torch_compile and not self.is_embedding:
            self.compiled_decode = CompiledDecode(
                self.model, self.logits_processor.lm_head, self.token_to_kv_pool
            )
            self._warm_up_compiled(rows)
        heads = f" ({self.kv_heads} of {cfg.num_kv_heads} KV heads)" if self.tp.enabled else ""
        logger.info(
            "KV pool: %d tokens (%.2f GiB%s), %d request rows; %s",
            self.max_total_tokens,
            self.max_total_tokens * self._kv_bytes_per_token() / 2**30,
            f" on rank {self.tp_rank}{heads}" if self.tp.enabled else "",
            rows,
            self._pool_size_source(max_total_tokens),
        )

    @property
    def kv_heads(self) -> int:
        """KV heads this rank holds (all of them at --tp-size 1)."""
        return self.model_config.num_kv_heads // self.tp.size

    @property
    def _comm_device(self) -> torch.device:
        """Where the group's messages live: the GPU under NCCL, else the CPU (gloo)."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _kv_bytes_per_token(self) -> int:
        cfg = self.model_config
        return MHATokenToKVPool.bytes_per_token(
            self.dtype, self.kv_heads, cfg.head_dim, cfg.num_layers
        )

    def _pool_size_source(self, given: Optional[int]) -> str:
        """What sized the pool, for the start-up log."""
        if given:
            return "set by --max-total-tokens"
        free = self._free_bytes_at_sizing / 2**30
        cap = f", capped at {CPU_MAX_POOL_TOKENS} on CPU" if self.device.type == "cpu" else ""
        fraction = self.server_args.mem_fraction_static
        shared = self._ranks_sharing_memory()
        share = f", shared by {shared} ranks" if shared > 1 else ""
        tp = ", the smallest over the ranks" if self.tp.enabled else ""
        return f"--mem-fraction-static {fraction:g} of {free:.1f} GiB free memory{share}{cap}{tp}"

    def _ranks_sharing_memory(self) -> int:
        """Ranks whose KV pools come out of the same free memory (this node's, on CPU)."""
        return local_tp_size(self.server_args) if self.device.type == "cpu" else 1

    def forward(self, forward_batch: ForwardBatch) -> LogitsOutput:
        assert self.attn_backend is not None, "call init_memory_pool() before forward()"
        if self._sender is not None:
            self._sender.send(forward_batch)  # the other ranks run the same pass
        with torch.inference_mode():
            if forward_batch.is_decode and self.compiled_decode is not None:
                logits = self.compiled_decode(forward_batch)
                if logits is not None:
                    return LogitsOutput.of_decode(logits, forward_batch)
            if forward_batch.is_decode and self.cpu_decode is not None:
                return self.logits_processor(self.cpu_decode(forward_batch), forward_batch)
            self.attn_backend.init_forward_metadata(forward_batch)
            fb = forward_batch
            hidden = self.model(fb.input_ids, fb.positions, fb)  # [T, hidden]
            assert self.logits_processor is not None, "an embedding model has no logits"
            return self.logits_processor(hidden, fb)

    def serve_rank0(self) -> None:
        """Ranks 1..N-1: run every pass rank 0 sends until it sends stop (TensorParallelError
        when the group breaks)."""
        assert self.tp_rank > 0 and self.attn_backend is not None
        receiver = BatchReceiver(self.tp, self.req_to_token_pool.req_to_token, self._comm_device)
        while (batch := receiver.recv()) is not None:
            self.forward(batch)

    def ping_workers(self) -> None:
        """Rank 0 while idle: see BatchSender.ping (no-op at --tp-size 1)."""
        if self._sender is not None:
            self._sender.ping()

    def shutdown(self) -> None:
        """Rank 0: stop the other ranks and leave the group (no-op at --tp-size 1)."""
        if not self.tp.enabled:
            return
        from sglang.srt.distributed.parallel_state import TensorParallelError

        if self._sender is not None:
            try:
                self._sender.stop()
            except TensorParallelError as e:
                logger.warning("could not stop the tensor-parallel workers: %s", e)
            self._sender = None
        if self._workers is not None:
            self._workers.stop()
        destroy_group()
        self.tp = SINGLE

    def forward_hidden(self, forward_batch: ForwardBatch) -> torch.Tensor:
        """The final hidden states (after the last norm; no lm_head): [T, hidden]."""
        assert self.attn_backend is not None, "call init_memory_pool() before forward_hidden()"
        fb = forward_batch
        with torch.inference_mode():
            self.attn_backend.init_forward_metadata(fb)
            return self.model(fb.input_ids, fb.positions, fb)

    def _warm_up_compiled(self, max_rows: int) -> None:
        """Compile the decode graphs now (batch 1, small batches, batches past QUANT_MAX_ROWS),
        before the server reports ready: a first request would otherwise wait for the
        compiler, and the watchdog would take that for a stuck step."""
        start = time.perf_counter()
        pool, alloc = self.req_to_token_pool, self.token_to_kv_pool_allocator
        for batch in (1, 2, QUANT_MAX_ROWS + 1):
            if batch > max_rows or self.compiled_decode.failed:
                break
            rows = [pool.alloc() for _ in range(batch)]
            slots = alloc.alloc(2 * batch)
            if slots is None:
                break
            table = slots.view(batch, 2)
            for i, row in enumerate(rows):
                pool.req_to_token[row, :2] = table[i]
            device = pool.req_to_token.device
            self.forward(
                ForwardBatch(
                    mode=ForwardMode.DECODE,
                    batch_size=batch,
                    input_ids=torch.zeros(batch, dtype=torch.int64, device=device),
                    positions=torch.ones(batch, dtype=torch.int64, device=device),
                    out_cache_loc=table[:, 1].contiguous(),
                    req_pool_indices=torch.tensor(rows, device=device),
                    seq_lens=torch.full((batch,), 2, dtype=torch.int64, device=device),
                    req_to_token=pool.req_to_token,
                    seq_lens_cpu=[2] * batch,
                    extend_prefix_lens_cpu=[1] * batch,
                    extend_seq_lens_cpu=[1] * batch,
                )
            )
            alloc.free(slots)
            for row in rows:
                pool.free(row)
        logger.info(
            "compiled decode step ready in %.1f s%s",
            time.perf_counter() - start,
            f" (failed: {self.compiled_decode.failed}; running eager)"
            if self.compiled_decode.failed
            else "",
        )

    @property
    def use_torch_compile(self) -> bool:
        """--enable-torch-compile turns the compiled decode step on, --disable-torch-compile off."""
        args = self.server_args
        return args.enable_torch_compile and not args.disable_torch_compile

    def _pool_tokens_from_memory(self) -> int:
        per_token = self._kv_bytes_per_token()
        self._free_bytes_at_sizing = _free_memory_bytes(self.device)
        budget = int(
            self._free_bytes_at_sizing
            * self.server_args.mem_fraction_static
            / self._ranks_sharing_memory()
        )
        tokens = max(budget // per_token, 1)
        if self.device.type == "cpu":
            tokens = min(tokens, CPU_MAX_POOL_TOKENS)
        return tokens


def _check_deterministic(args: ServerArgs, device: torch.device) -> None:
    """--enable-deterministic-inference runs on the CPU kernels, eagerly."""
    if not args.enable_deterministic_inference:
        return
    if device.type != "cpu":
        raise ValueError(
            f"--enable-deterministic-inference runs on CPU only (device {device.type!r}): its "
            "batch-invariant attention is the C++ CPU kernel"
        )
    if args.enable_torch_compile:
        raise ValueError("--enable-deterministic-inference and --enable-torch-compile: pick one")


def _resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """The device of a rank; CUDA ranks of one node take a GPU each (cuda:<local rank>)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda': no CUDA device is available")
    if device == "cuda" and local_rank > 0:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"tp rank on local GPU {local_rank}: only {torch.cuda.device_count()} visible"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(device)


def _free_memory_bytes(device: torch.device) -> int:
    """Free memory on device: CUDA's free bytes, else the OS's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
