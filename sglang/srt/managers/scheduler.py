"""The scheduler: continuous batching over the model runner, tying its parts together.

One step: poll compiled grammars -> the policy picks a pass (extend chunks or decode) -> the KV
manager makes room and allocates -> forward -> logprobs -> sample -> the output processor
appends tokens and checks stops -> finished requests hand their KV to the cache -> outputs.
The process around it (sockets, watchdog) is in scheduler_process.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import torch

from sglang.srt.managers.embedding_processor import EmbeddingProcessor
from sglang.srt.managers.io_struct import (
    AbortReq,
    FlushCacheReply,
    FlushCacheReq,
    GetServerInfoReply,
    GetServerInfoReq,
    ReqOutput,
    SchedulerReady,
    TokenizedEmbeddingReqInput,
    TokenizedGenerateReqInput,
)
from sglang.srt.managers.kv_manager import KVManager
from sglang.srt.managers.logprobs import LogprobCollector
from sglang.srt.managers.output_processor import OutputProcessor, check_finished_before_sampling
from sglang.srt.managers.req import Req
from sglang.srt.managers.schedule_batch import ScheduledChunk, build_forward_batch
from sglang.srt.managers.schedule_policy import SchedulePolicy
from sglang.srt.managers.scheduler_stats import SchedulerStats
from sglang.srt.model_executor.forward_batch import ForwardMode, LogitsOutput
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger(__name__)


class Scheduler:
    """Owns the model runner and the parts; every request's state lives in its Req."""

    def __init__(self, server_args: ServerArgs) -> None:
        from transformers import AutoTokenizer

        from sglang.srt.layers.sampler import Sampler
        from sglang.srt.model_executor.model_runner import ModelRunner

        self.server_args = server_args
        torch.manual_seed(server_args.random_seed)
        self.runner = ModelRunner(server_args)
        self.runner.init_memory_pool(server_args.max_total_tokens, server_args.max_running_requests)
        self.device = self.runner.device
        self.tokenizer = AutoTokenizer.from_pretrained(self.runner.tokenizer_path)
        self.eos_token_ids: set[int] = set(self.runner.model_config.eos_token_ids)
        self.vocab_size: int = self.runner.model_config.vocab_size
        self.context_len = self.runner.model_config.context_len
        self.sampler = Sampler()
        self.grammar_backend = self._create_grammar_backend()
        pooler = self.runner.pooler
        self.embedder = EmbeddingProcessor(pooler) if pooler is not None else None
        # NOTE: an embedding model caches no prompts: pooling needs every token's hidden
        # state, so a cached prefix could never be reused.
        self.kv = KVManager(
            self.runner.req_to_token_pool,
            self.runner.token_to_kv_pool_allocator,
            server_args.disable_radix_cache or self.embedder is not None,
        )
        self.max_running = self.kv.req_to_token_pool.size
        self.policy = SchedulePolicy(server_args, self.kv, self.max_running)
        self.logprobs = LogprobCollector()
        self.output = OutputProcessor(
            self.tokenizer,
            self.eos_token_ids,
            self.logprobs,
            jump_forward=not server_args.disable_jump_forward,
            stream_interval=server_args.stream_interval,
        )
        self.grammar_queue: list[Req] = []
        self.stats = SchedulerStats()
        self._outbox: list[Req] = []  # requests with output to send after this step
        self.current_activity = "idle"  # what the step is doing, for the watchdog's report

    # ---- views used by tests and server info ----------------------------------------------------

    @property
    def running(self) -> list[Req]:
        return self.policy.running

    @property
    def waiting(self) -> Any:
        return self.policy.waiting

    @property
    def tree_cache(self) -> Any:
        return self.kv.tree_cache

    @property
    def allocator(self) -> Any:
        return self.kv.allocator

    def _create_grammar_backend(self) -> Any:
        if self.server_args.grammar_backend == "none":
            return None
        from sglang.srt.constrained import create_grammar_backend

        return create_grammar_backend(
            self.server_args.grammar_backend, self.tokenizer, self.vocab_size, self.eos_token_ids
        )

    def ready_message(self) -> SchedulerReady:
        return SchedulerReady(
            max_total_tokens=self.allocator.size,
            max_running_requests=self.max_running,
            context_length=self.context_len,
            model_info={
                "vocab_size": self.vocab_size,
                "eos_token_ids": sorted(self.eos_token_ids),
                "chat_template": getattr(self.tokenizer, "chat_template", None),
                "model_path": self.runner.model_path,
                "device": str(self.device),
                "dtype": str(self.runner.dtype).replace("torch.", ""),
                "is_generation": self.embedder is None,
                **self._embedding_info(),
            },
        )

    def _embedding_info(self) -> dict[str, Any]:
        if self.runner.pooler is None:
            return {}
        return {
            "embedding_dim": self.runner.model_config.hidden_size,
            **self.runner.pooler.config.info(),
        }

    # ---- messages ------------------------------------------------------------------------------

    def handle_message(self, msg: Any) -> Optional[Any]:
        """Apply one incoming message; return a reply to send, if any."""
        if isinstance(msg, list):
            for m in msg:
                self.handle_message(m)
            return None
        if isinstance(msg, (TokenizedGenerateReqInput, TokenizedEmbeddingReqInput)):
            self.add_request(msg)
        elif isinstance(msg, AbortReq):
            self.abort_request(msg.rid)
        elif isinstance(msg, FlushCacheReq):
            return self.flush_cache()
        elif isinstance(msg, GetServerInfoReq):
            return GetServerInfoReply(info=self.server_info())
        else:
            logger.warning("unknown message %r", type(msg).__name__)
        return None

    def add_request(self, msg: TokenizedGenerateReqInput | TokenizedEmbeddingReqInput) -> None:
        req = Req.from_message(msg)
        self.output.start(req)
        error = self._admission_error(req)
        if error is not None:
            self._end_early(req, error, 400)
        elif self._queue_full():
            limit = self.server_args.max_queued_requests
            message = f"the server is overloaded: {limit} requests queued (--max-queued-requests)"
            logger.warning("request %s refused: %s", req.rid, message)
            self._end_early(req, message, 503)
        elif req.sampling_params.grammar is not None:
            kind, text = req.sampling_params.grammar
            req.grammar.future = self.grammar_backend.get_future(kind, text)
            req.grammar.queued_at = time.monotonic()
            self.grammar_queue.append(req)
        else:
            self.policy.add(req)

    def _queue_full(self) -> bool:
        limit = self.server_args.max_queued_requests
        return limit is not None and len(self.waiting) + len(self.grammar_queue) >= limit

    def _admission_error(self, req: Req) -> Optional[str]:
        if req.seq_len + 1 > self.allocator.size:
            return (
                f"the prompt ({req.seq_len} tokens) does not fit in the KV cache "
                f"({self.allocator.size} tokens)"
            )
        if (req.pooling is None) != (self.embedder is None):
            return _wrong_kind_error(self.embedder is not None)
        if req.sampling_params.grammar is not None and self.grammar_backend is None:
            return "constrained decoding is disabled (--grammar-backend none)"
        return None

    def _end_early(self, req: Req, message: str, status: Optional[int] = None) -> None:
        """End a request that never ran; `status`: the HTTP status it is answered with."""
        self.output.abort(req, message, status)
        self._outbox.append(req)

    def abort_request(self, rid: str) -> None:
        for req in self.policy.remove_waiting(rid):
            self._end_early(req, "aborted")
        for req in [r for r in self.grammar_queue if r.rid == rid]:
            self.grammar_queue.remove(req)
            self._end_early(req, "aborted")
        for req in self.running:
            if req.rid == rid:
                self.output.abort(req, "aborted")
        self.release_finished()

    def flush_cache(self) -> FlushCacheReply:
        if self.has_work():
            return FlushCacheReply(False, "requests are running; cache not flushed")
        self.kv.flush()
        return FlushCacheReply(True, "cache flushed")

    def server_info(self) -> dict[str, Any]:
        return {
            "num_running_reqs": len(self.running),
            "num_waiting_reqs": len(self.waiting) + len(self.grammar_queue),
            "max_running_requests": self.max_running,
            **self.kv.stats(),
            **self.stats.info(self.output.jump_forward_tokens),
            "device": str(self.device),
        }

    # ---- the step --------------------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self.grammar_queue)

    def has_outputs(self) -> bool:
        return bool(self._outbox)

    def step(self) -> list[Req]:
        """Run one forward pass if there is work; return requests with new output."""
        self._poll_grammars()
        chunks, mode = self.policy.schedule()
        if chunks:
            self._run(chunks, mode)
        self.release_finished()
        self.current_activity = "idle"
        out, self._outbox = self._outbox, []
        return out

    def _run(self, chunks: list[ScheduledChunk], mode: ForwardMode) -> None:
        planned = chunks
        chunks, retracted = self.policy.make_room(chunks)
        self.stats.retractions += len(retracted)
        for c in planned:  # a request that alone outgrew the pool ended there
            if c.req.finished:
                self.output.close(c.req)
        if not chunks:
            return
        self.current_activity = _describe(chunks, mode)
        loc = self.kv.allocate(chunks)
        batch = build_forward_batch(mode, chunks, loc, self.kv.table, self.device)
        if self.embedder is not None:  # prefill only: pool the hidden states, sample nothing
            self.embedder.process(chunks, self.runner.forward_hidden(batch))
            self.kv.advance(chunks)
            self.policy.ran(chunks, mode)
            return
        logits = self.runner.forward(batch)
        self.kv.advance(chunks)
        self.logprobs.collect_input(chunks, logits)
        self._sample(chunks, logits)
        if mode == ForwardMode.DECODE:
            self.stats.record_decode(len(chunks))
        else:  # share prompt prefixes with requests that arrive while this one runs
            for c in chunks:
                if c.start < len(c.req.origin_input_ids) and not c.req.finished:
                    self.kv.cache(c.req, finished=False)
        self.policy.ran(chunks, mode)

    def _sample(self, chunks: list[ScheduledChunk], out: LogitsOutput) -> None:
        from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo

        rows = []
        for i, c in enumerate(chunks):
            if not c.reaches_end or c.req.finished:
                continue
            reason = check_finished_before_sampling(c.req)  # e.g. max_new_tokens 0
            if reason is not None:
                c.req.finish(reason)
                self.output.close(c.req)
            else:
                rows.append(i)
        if not rows:
            return
        reqs = [chunks[i].req for i in rows]
        logits = out.next_token_logits[rows] if len(rows) != len(chunks) else out.next_token_logits
        info = SamplingBatchInfo.from_reqs(reqs, self.vocab_size, self.device, self.eos_token_ids)
        info.vocab_mask = self._grammar_mask(reqs)
        top_nums = [r.logprob.top_num if r.return_logprob else 0 for r in reqs]
        result = self.sampler.sample(logits, info, any(r.return_logprob for r in reqs), top_nums)
        next_ids = result.next_token_ids.tolist()
        for j, (req, token) in enumerate(zip(reqs, next_ids)):
            if req.return_logprob and result.next_token_logprobs is not None:
                tops = result.top_logprobs[j] if result.top_logprobs is not None else None
                self.logprobs.record_output(req, token, result.next_token_logprobs[j], tops)
            self.output.append_sampled(req, token)
        self.stats.generated_tokens += len(next_ids)

    def _grammar_mask(self, reqs: list[Req]) -> Optional[torch.Tensor]:
        """bool [B, V], True = allowed, or None when no request in the batch is constrained."""
        if all(r.grammar.matcher is None for r in reqs):
            return None
        from sglang.srt.constrained.base_grammar_backend import unpack_vocab_mask

        mask = self.grammar_backend.allocate_vocab_mask(len(reqs), self.device)
        self.grammar_backend.fill_vocab_masks([r.grammar.matcher for r in reqs], mask)
        return unpack_vocab_mask(mask.to(self.device, non_blocking=True), self.vocab_size)

    def _poll_grammars(self) -> None:
        """Queue the requests whose grammar compiled; a grammar that does not compile (or takes
        too long) ends its request as invalid, which the HTTP process answers with a 400."""
        for req in list(self.grammar_queue):
            future = req.grammar.future
            if not future.done():
                limit = self.grammar_backend.validate_timeout_s
                if time.monotonic() - req.grammar.queued_at > limit:
                    future.cancel()
                    self.grammar_queue.remove(req)
                    kind = req.sampling_params.grammar[0]
                    self._end_early(
                        req, f"{kind} is too complex: compiling took over {limit:g}s", 400
                    )
                continue
            self.grammar_queue.remove(req)
            try:
                req.grammar.matcher = future.result().copy()
            except Exception as e:
                self._end_early(req, _grammar_error(req, e), 400)
                continue
            self.policy.add(req)

    def release_finished(self) -> None:
        """Finished requests hand their KV to the cache; queue everything with output."""
        for req in self.policy.take_finished():
            self.kv.release(req)
            self._outbox.append(req)
        self._outbox.extend(r for r in self.running if self.output.has_output(r))

    def make_output(self, req: Req) -> ReqOutput:
        return self.output.make_output(req)

    def abort_all(self, message: str) -> list[Req]:
        """Last resort after an internal error: end every running request, keep serving."""
        for req in self.running:
            self.output.abort(req, message, 500)
        self.release_finished()
        out, self._outbox = self._outbox, []
        return out


def _describe(chunks: list[ScheduledChunk], mode: ForwardMode) -> str:
    tokens = sum(c.length for c in chunks)
    rids = ", ".join(c.req.rid for c in chunks[:4]) + (", ..." if len(chunks) > 4 else "")
    return f"{mode.name.lower()} pass of {len(chunks)} request(s), {tokens} token(s): {rids}"


def _wrong_kind_error(serves_embeddings: bool) -> str:
    if serves_embeddings:
        return "this server serves an embedding model (--is-embedding): it does not generate"
    return "this server serves a generation model: start it with --is-embedding for embeddings"


def _grammar_error(req: Req, e: Exception) -> str:
    kind = req.sampling_params.grammar[0]
    if isinstance(e, ValueError):
        return str(e)  # the backend's message already names the constraint and the problem
    return f"invalid {kind}: {type(e).__name__}: {e}"
