"""The scheduler process: continuous batching over the model runner, with the radix prefix cache.

One step: receive messages -> pick a batch (extend chunks or decode) -> forward -> sample ->
append tokens, detokenize, check stops -> send outputs -> release finished requests.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Any, Optional

import torch
import zmq

from sglang.srt.layers.attention import SHORT_EXTEND_TOKENS
from sglang.srt.managers.detokenizer import IncrementalDetokenizer, StopChecker
from sglang.srt.managers.io_struct import (
    AbortReq,
    BatchReqOutput,
    FlushCacheReply,
    FlushCacheReq,
    GetServerInfoReply,
    GetServerInfoReq,
    ReqOutput,
    SchedulerFailed,
    SchedulerReady,
    TokenizedGenerateReqInput,
)
from sglang.srt.managers.schedule_batch import (
    FinishReason,
    Req,
    ScheduledChunk,
    build_forward_batch,
    logprob_offset,
)
from sglang.srt.mem_cache.radix_cache import RadixCache
from sglang.srt.model_executor.forward_batch import ForwardMode, LogitsOutput
from sglang.srt.server_args import PortArgs, ServerArgs

logger = logging.getLogger(__name__)

# Admission keeps this many free slots per running request for the tokens it will decode next.
_DECODE_HEADROOM = 8
# lpm matching of every waiting request each step is O(queue); past this size use fcfs.
_LPM_MAX_QUEUE = 256


class Scheduler:
    """Owns the model runner, the memory pools, the radix cache and every request's state."""

    def __init__(self, server_args: ServerArgs) -> None:
        from transformers import AutoTokenizer

        from sglang.srt.layers.sampler import Sampler
        from sglang.srt.model_executor.model_runner import ModelRunner

        self.server_args = server_args
        torch.manual_seed(server_args.random_seed)
        self.runner = ModelRunner(server_args)
        self.runner.init_memory_pool(server_args.max_total_tokens, server_args.max_running_requests)
        self.model_config = self.runner.model_config
        self.device = self.runner.device
        self.tokenizer = AutoTokenizer.from_pretrained(self.runner.tokenizer_path)
        self.eos_token_ids: set[int] = set(self.model_config.eos_token_ids)
        self.vocab_size: int = self.model_config.vocab_size
        self.req_to_token_pool = self.runner.req_to_token_pool
        self.allocator = self.runner.token_to_kv_pool_allocator
        self.tree_cache = RadixCache(self.allocator, disable=server_args.disable_radix_cache)
        self.sampler = Sampler()
        self.grammar_backend = self._create_grammar_backend()
        self.max_running = self.req_to_token_pool.size
        self.context_len = self.model_config.context_len

        self.waiting: deque[Req] = deque()
        self.grammar_queue: list[Req] = []
        self.running: list[Req] = []
        self.last_mode: Optional[ForwardMode] = None
        self.stats = _Stats()

    # ------------------------------------------------------------------ setup
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
            },
        )

    # --------------------------------------------------------------- messages
    def handle_message(self, msg: Any) -> Optional[Any]:
        """Apply one incoming message; return a reply to send, if any."""
        if isinstance(msg, list):
            for m in msg:
                self.handle_message(m)
            return None
        if isinstance(msg, TokenizedGenerateReqInput):
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

    def add_request(self, msg: TokenizedGenerateReqInput) -> None:
        req = Req(
            rid=msg.rid,
            origin_input_ids=list(msg.input_ids),
            sampling_params=msg.sampling_params,
            return_logprob=msg.return_logprob,
            logprob_start_len=msg.logprob_start_len,
            top_logprobs_num=msg.top_logprobs_num,
            stream=msg.stream,
        )
        params = req.sampling_params
        req.detokenizer = IncrementalDetokenizer(
            self.tokenizer,
            req.origin_input_ids,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
        )
        req.stop_checker = StopChecker.from_params(params)
        error = self._admission_error(req)
        if error is not None:
            req.finish(FinishReason.ABORT, message=error)
            self.stats.pending_outputs.append(req)
            return
        if params.grammar is not None:
            kind, text = params.grammar
            req.grammar_future = self.grammar_backend.get_future(kind, text)
            self.grammar_queue.append(req)
        else:
            self.waiting.append(req)

    def _admission_error(self, req: Req) -> Optional[str]:
        if req.seq_len + 1 > self.allocator.size:
            return (
                f"the prompt ({req.seq_len} tokens) does not fit in the KV cache "
                f"({self.allocator.size} tokens)"
            )
        if req.sampling_params.grammar is not None and self.grammar_backend is None:
            return "constrained decoding is disabled (--grammar-backend none)"
        return None

    def abort_request(self, rid: str) -> None:
        for queue in (self.waiting, self.grammar_queue):
            for req in list(queue):
                if req.rid == rid:
                    queue.remove(req)
                    req.finish(FinishReason.ABORT, message="aborted")
                    self.stats.pending_outputs.append(req)
        for req in self.running:
            if req.rid == rid:
                req.finish(FinishReason.ABORT, message="aborted")
        self._release_finished()

    def flush_cache(self) -> FlushCacheReply:
        if self.running or self.waiting or self.grammar_queue:
            return FlushCacheReply(False, "requests are running; cache not flushed")
        self.tree_cache.reset()
        return FlushCacheReply(True, "cache flushed")

    def server_info(self) -> dict[str, Any]:
        return {
            "num_running_reqs": len(self.running),
            "num_waiting_reqs": len(self.waiting) + len(self.grammar_queue),
            "max_total_tokens": self.allocator.size,
            "max_running_requests": self.max_running,
            "available_kv_tokens": self.allocator.available_size(),
            "cached_tokens_in_tree": self.tree_cache.total_size(),
            "cache_hit_rate": self.tree_cache.hit_rate(),
            "mean_running_batch_size": self.stats.mean_decode_batch(),
            "num_decode_steps": self.stats.decode_steps,
            "num_generated_tokens": self.stats.generated_tokens,
            "num_jump_forward_tokens": self.stats.jump_forward_tokens,
            "num_retractions": self.stats.retractions,
            "device": str(self.device),
        }

    # ------------------------------------------------------------- scheduling
    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self.grammar_queue)

    def step(self) -> list[Req]:
        """Run one forward pass if there is work; return requests with new output."""
        self._poll_grammars()
        chunks, mode = self._schedule()
        if chunks:
            self._run(chunks, mode)
            # A short extend kept the decoding requests moving; only long ones make them wait.
            short = all(c.length <= SHORT_EXTEND_TOKENS for c in chunks)
            self.last_mode = ForwardMode.DECODE if short else mode
        self._release_finished()
        out, self.stats.pending_outputs = self.stats.pending_outputs, []
        return out

    def _poll_grammars(self) -> None:
        for req in list(self.grammar_queue):
            future = req.grammar_future
            if not future.done():
                continue
            self.grammar_queue.remove(req)
            try:
                req.grammar = future.result().copy()
            except Exception as e:  # a grammar the validator let through but cannot compile
                req.finish(FinishReason.ABORT, message=f"invalid grammar: {e}")
                self.stats.pending_outputs.append(req)
                continue
            self.waiting.append(req)

    def _schedule(self) -> tuple[list[ScheduledChunk], ForwardMode]:
        decode_ready = [r for r in self.running if r.pending_len == 1 and not r.finished]
        want_extend = bool(self.waiting) or any(r.pending_len > 1 for r in self.running)
        # Alternate with decode so a long prefill cannot stall the running streams.
        if want_extend and not (decode_ready and self.last_mode == ForwardMode.EXTEND):
            chunks = self._schedule_extend()
            if chunks and all(c.length <= SHORT_EXTEND_TOKENS for c in chunks):
                # Short extends (jump-forward runs) take the decoding requests along: one pass.
                taken = {id(c.req) for c in chunks}
                chunks += [ScheduledChunk(r, r.kv_len, 1) for r in decode_ready if id(r) not in taken]
            if chunks:
                return chunks, ForwardMode.EXTEND
        if decode_ready:
            return [ScheduledChunk(r, r.kv_len, 1) for r in decode_ready], ForwardMode.DECODE
        return [], ForwardMode.DECODE

    def _schedule_extend(self) -> list[ScheduledChunk]:
        budget = self.server_args.chunked_prefill_size
        chunks: list[ScheduledChunk] = []
        for req in self.running:
            if req.pending_len > 1 and not req.finished and budget > 0:
                n = min(req.pending_len, budget)
                chunks.append(ScheduledChunk(req, req.kv_len, n))
                budget -= n
        self._order_waiting()
        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            req = self.waiting[0]
            reserved = sum(c.length for c in chunks)
            if not self._admit(req, budget, reserved):
                break
            self.waiting.popleft()
            self.running.append(req)
            n = min(req.pending_len, budget)
            chunks.append(ScheduledChunk(req, req.kv_len, n))
            budget -= n
        return chunks

    def _order_waiting(self) -> None:
        """lpm: longest cached prefix first (ties: arrival order); fcfs: arrival order."""
        if self.server_args.schedule_policy != "lpm" or len(self.waiting) > _LPM_MAX_QUEUE:
            return
        if self.server_args.disable_radix_cache or len(self.waiting) < 2:
            return
        scored = [(-self._cached_prefix_len(r), i, r) for i, r in enumerate(self.waiting)]
        scored.sort(key=lambda t: (t[0], t[1]))
        self.waiting = deque(r for _, _, r in scored)

    def _cached_prefix_len(self, req: Req) -> int:
        key = req.fill_ids[: req.max_prefix_len()]
        return int(self.tree_cache.match_prefix(key).indices.numel())

    def _admit(self, req: Req, budget: int, reserved: int) -> bool:
        """Give req a pool row and its cached prefix if memory allows; False leaves it waiting.

        `reserved` slots are already promised to earlier chunks of the batch being built."""
        match = self.tree_cache.match_prefix(req.fill_ids[: req.max_prefix_len()])
        prefix_len = int(match.indices.numel())
        first_chunk = min(req.seq_len - prefix_len, budget)
        need = reserved + first_chunk + _DECODE_HEADROOM * (len(self.running) + 1)
        self.tree_cache.inc_lock_ref(match.last_node)
        if not self._ensure_free(need) or self.req_to_token_pool.available_size() == 0:
            self.tree_cache.dec_lock_ref(match.last_node)
            if not self.running:
                # Nothing will ever free memory: admit with what is there rather than hang.
                return self._admit_alone(req, match, first_chunk)
            return False
        self._attach(req, match)
        return True

    def _admit_alone(self, req: Req, match: Any, first_chunk: int) -> bool:
        self.tree_cache.inc_lock_ref(match.last_node)
        if not self._ensure_free(first_chunk) or self.req_to_token_pool.available_size() == 0:
            self.tree_cache.dec_lock_ref(match.last_node)
            return False
        self._attach(req, match)
        return True

    def _attach(self, req: Req, match: Any) -> None:
        prefix_len = int(match.indices.numel())
        req.req_pool_idx = self.req_to_token_pool.alloc()
        self.req_to_token_pool.req_to_token[req.req_pool_idx, :prefix_len] = match.indices
        req.kv_len = req.cached_len = prefix_len
        req.last_node = match.last_node
        if not req.admitted:
            req.admitted = True
            req.cached_tokens = prefix_len
            self.tree_cache.record_lookup(len(req.origin_input_ids), prefix_len)

    def _ensure_free(self, n: int) -> bool:
        short = n - self.allocator.available_size()
        if short > 0:
            self.tree_cache.evict(short)
        return self.allocator.available_size() >= n

    # ---------------------------------------------------------------- forward
    def _run(self, chunks: list[ScheduledChunk], mode: ForwardMode) -> None:
        chunks = self._allocate(chunks, mode)
        if not chunks:
            return
        total = sum(c.length for c in chunks)
        loc = self.allocator.alloc(total)
        assert loc is not None, "allocation checked by _allocate"
        table = self.req_to_token_pool.req_to_token
        offset = 0
        for c in chunks:
            table[c.req.req_pool_idx, c.start : c.start + c.length] = loc[offset : offset + c.length]
            offset += c.length
        batch = build_forward_batch(mode, chunks, loc, table, self.device)
        logits = self.runner.forward(batch)
        for c in chunks:
            c.req.kv_len = c.start + c.length
        self._collect_input_logprobs(chunks, logits)
        self._sample(chunks, logits)
        if mode == ForwardMode.DECODE:
            self.stats.record_decode(len(chunks))
        else:  # share prompt prefixes with requests that arrive while this one runs
            prompts = [c.req for c in chunks if c.start < len(c.req.origin_input_ids)]
            self._cache_unfinished([r for r in prompts if not r.finished])

    def _allocate(self, chunks: list[ScheduledChunk], mode: ForwardMode) -> list[ScheduledChunk]:
        """Make room for the new tokens; under pressure retract requests from the batch's end."""
        need = sum(c.length for c in chunks)
        while not self._ensure_free(need):
            if len(chunks) <= 1:
                logger.warning("KV cache full: %d tokens needed", need)
                for c in chunks:
                    c.req.finish(FinishReason.ABORT, message="KV cache is full")
                return []
            victim = chunks.pop()
            self._retract(victim.req)
            need -= victim.length
        return chunks

    def _retract(self, req: Req) -> None:
        """Free a running request's memory (its KV goes to the radix cache) and requeue it."""
        self._release(req)
        req.kv_len, req.cached_len = 0, 0
        self.running.remove(req)
        self.waiting.appendleft(req)
        self.stats.retractions += 1

    def _cache_unfinished(self, reqs: list[Req]) -> None:
        """Put each request's computed tokens into the radix tree so others can share them."""
        if self.server_args.disable_radix_cache:
            return
        table = self.req_to_token_pool.req_to_token
        for req in reqs:
            key = req.fill_ids[: req.kv_len]
            slots = table[req.req_pool_idx, : req.kv_len].clone()
            already = self.tree_cache.insert(key, slots)
            if already > req.cached_len:
                self.allocator.free(slots[req.cached_len : already])
            match = self.tree_cache.match_prefix(key)
            table[req.req_pool_idx, : len(match.indices)] = match.indices
            self.tree_cache.inc_lock_ref(match.last_node)
            self.tree_cache.dec_lock_ref(req.last_node)
            req.last_node, req.cached_len = match.last_node, int(match.indices.numel())

    # --------------------------------------------------------------- logprobs
    def _collect_input_logprobs(self, chunks: list[ScheduledChunk], out: LogitsOutput) -> None:
        for i, c in enumerate(chunks):
            req = c.req
            if not req.wants_input_logprobs:
                continue
            if c.start == 0 and req.logprob_start_len == 0:
                req.input_token_logprobs.append((None, req.fill_ids[0]))
                req.input_top_logprobs.append(None)
            first_pos = c.start + logprob_offset(c) + 1
            ids = req.fill_ids[first_pos : c.start + c.length]
            values = out.input_token_logprobs[i] if out.input_token_logprobs else []
            req.input_token_logprobs.extend(zip(values, ids))
            if req.top_logprobs_num > 0 and out.input_top_logprobs:
                req.input_top_logprobs.extend(out.input_top_logprobs[i])
            elif req.top_logprobs_num == 0:
                req.input_top_logprobs.extend([None] * len(ids))
            if c.reaches_end:
                req.input_logprobs_done = True
            elif req.logprob_start_len <= c.start + c.length < len(req.origin_input_ids):
                self._stitch_boundary(req, out.next_token_logits[i], c.start + c.length)

    def _stitch_boundary(self, req: Req, logits: torch.Tensor, pos: int) -> None:
        """The first token of the next chunk is scored by this chunk's last hidden state."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        token = req.fill_ids[pos]
        req.input_token_logprobs.append((float(logprobs[token]), token))
        if req.top_logprobs_num > 0:
            values, ids = logprobs.topk(req.top_logprobs_num)
            req.input_top_logprobs.append(list(zip(values.tolist(), ids.tolist())))
        else:
            req.input_top_logprobs.append(None)

    # --------------------------------------------------------------- sampling
    def _sample(self, chunks: list[ScheduledChunk], out: LogitsOutput) -> None:
        from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo

        rows = []
        for i, c in enumerate(chunks):
            if not c.reaches_end or c.req.finished:
                continue
            if c.req.step >= _max_new(c.req):  # e.g. max_new_tokens 0: prefill only
                c.req.finish(FinishReason.LENGTH, length=_max_new(c.req))
            else:
                rows.append(i)
        if not rows:
            return
        reqs = [chunks[i].req for i in rows]
        logits = out.next_token_logits[rows] if len(rows) != len(chunks) else out.next_token_logits
        info = SamplingBatchInfo.from_reqs(reqs, self.vocab_size, self.device, self.eos_token_ids)
        info.vocab_mask = self._grammar_mask(reqs)
        want_lp = any(r.return_logprob for r in reqs)
        result = self.sampler.sample(
            logits, info, want_lp, [r.top_logprobs_num if r.return_logprob else 0 for r in reqs]
        )
        next_ids = result.next_token_ids.tolist()
        for j, (req, token) in enumerate(zip(reqs, next_ids)):
            if req.return_logprob and result.next_token_logprobs is not None:
                req.output_token_logprobs.append((result.next_token_logprobs[j], token))
                tops = result.top_logprobs[j] if result.top_logprobs is not None else []
                req.output_top_logprobs.append(tops)
            self._append_tokens(req, [token], sampled=True)
        self.stats.generated_tokens += len(next_ids)

    def _grammar_mask(self, reqs: list[Req]) -> Optional[torch.Tensor]:
        """bool [B, V], True = allowed, or None when no request in the batch is constrained."""
        if all(r.grammar is None for r in reqs):
            return None
        from sglang.srt.constrained.base_grammar_backend import unpack_vocab_mask

        mask = self.grammar_backend.allocate_vocab_mask(len(reqs), self.device)
        self.grammar_backend.fill_vocab_masks([r.grammar for r in reqs], mask)
        return unpack_vocab_mask(mask.to(self.device, non_blocking=True), self.vocab_size)

    def _append_tokens(self, req: Req, tokens: list[int], sampled: bool) -> None:
        """Append output tokens: grammar, text, stop conditions; then jump-forward if possible."""
        params = req.sampling_params
        for token in tokens:
            req.output_ids.append(token)
            if token in self.eos_token_ids and not params.ignore_eos:
                req.finish(FinishReason.STOP, matched=token)
            elif params.stop_token_ids and token in params.stop_token_ids:
                req.finish(FinishReason.STOP, matched=token)
            elif req.grammar is not None and sampled:
                self._grammar_accept(req, token)
            self._update_text(req, [token])
            if not req.finished and req.step >= _max_new(req):
                req.finish(FinishReason.LENGTH, length=_max_new(req))
            if req.finished:
                break
        if req.finished:
            self._finalize_text(req)
        elif sampled and req.grammar is not None:
            self._jump_forward(req)

    def _grammar_accept(self, req: Req, token: int) -> None:
        try:
            req.grammar.accept_token(token)
        except ValueError as e:
            req.finish(FinishReason.ABORT, message=f"grammar rejected token {token}: {e}")
            return
        if req.grammar.is_terminated():
            req.finish(FinishReason.STOP, matched=None)

    def _jump_forward(self, req: Req) -> None:
        """Append the tokens the grammar forces, without a forward pass each; the next extend
        computes their KV in one go."""
        if self.server_args.disable_jump_forward or req.return_logprob:
            return
        jump = req.grammar.try_jump_forward()
        if jump is None:
            return
        if jump.num_rollback:
            if not jump.tokens:
                req.grammar.accept_token(req.output_ids[-1])  # keep matcher and output in step
                return
            self._rollback_last_token(req)
        forced = list(jump.tokens)[: _max_new(req) - req.step]
        self.stats.jump_forward_tokens += len(forced)
        self._append_tokens(req, forced, sampled=False)
        if not req.finished and req.grammar.is_terminated():
            req.finish(FinishReason.STOP, matched=None)
            self._finalize_text(req)

    def _rollback_last_token(self, req: Req) -> None:
        """Drop the last sampled token (its KV is not computed yet): the forced text re-tokenizes
        it together with what follows. The text is rebuilt from the remaining ids."""
        assert req.pending_len == 1, "only the newest, uncomputed token can be rolled back"
        req.output_ids.pop()
        params = req.sampling_params
        req.detokenizer = IncrementalDetokenizer(
            self.tokenizer,
            req.fill_ids,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
        )
        req.text = self.tokenizer.decode(
            req.output_ids,
            skip_special_tokens=params.skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )

    def _update_text(self, req: Req, tokens: list[int]) -> None:
        start = len(req.text)
        req.text += req.detokenizer.append(tokens)
        hit = req.stop_checker.check(req.text, start)
        if hit is not None and not req.finished:
            cut, stop_str = hit
            req.finish_cut = cut
            req.finish(FinishReason.STOP, matched=stop_str)

    def _finalize_text(self, req: Req) -> None:
        if req.finish_cut is None:
            req.text += req.detokenizer.flush()
            hit = req.stop_checker.check(req.text, 0)
            if hit is not None:
                req.finish_cut = hit[0]

    # ---------------------------------------------------------------- release
    def _release_finished(self) -> None:
        still = []
        for req in self.running:
            if req.finished:
                self._release(req)
                self.stats.pending_outputs.append(req)
            else:
                still.append(req)
        self.running = still
        for req in self.running:
            if self._has_output(req):
                self.stats.pending_outputs.append(req)

    def _has_output(self, req: Req) -> bool:
        return req.stream and len(req.output_ids) > req.sent_ids_len

    def _release(self, req: Req) -> None:
        if req.req_pool_idx is None:
            return
        table = self.req_to_token_pool.req_to_token
        slots = table[req.req_pool_idx, : req.kv_len].clone()
        if self.server_args.disable_radix_cache:
            self.allocator.free(slots[req.cached_len :])
        else:
            key = req.fill_ids[: req.kv_len]
            already = self.tree_cache.insert(key, slots)
            if already > req.cached_len:
                self.allocator.free(slots[req.cached_len : already])
        self.tree_cache.dec_lock_ref(req.last_node)
        self.req_to_token_pool.free(req.req_pool_idx)
        req.req_pool_idx, req.last_node = None, None

    # ----------------------------------------------------------------- output
    def make_output(self, req: Req) -> ReqOutput:
        text_end = len(req.text)
        if req.finished and req.finish_cut is not None:
            text_end = req.finish_cut
        elif not req.finished:
            text_end = req.stop_checker.safe_prefix_len(req.text)
        text_end = max(text_end, req.sent_text_len)
        out = ReqOutput(
            rid=req.rid,
            text_delta=req.text[req.sent_text_len : text_end],
            output_ids=req.output_ids[req.sent_ids_len :],
            finish_reason=req.finish_reason,
            prompt_tokens=len(req.origin_input_ids),
            completion_tokens=len(req.output_ids),
            cached_tokens=req.cached_tokens,
        )
        req.sent_text_len, req.sent_ids_len = text_end, len(req.output_ids)
        if req.return_logprob:
            self._attach_logprobs(req, out)
        return out

    def _attach_logprobs(self, req: Req, out: ReqOutput) -> None:
        if not req.input_logprobs_sent and (req.input_logprobs_done or req.finished):
            out.input_token_logprobs = req.input_token_logprobs
            out.input_top_logprobs = req.input_top_logprobs
            req.input_logprobs_sent = True
        out.output_token_logprobs = req.output_token_logprobs[req.output_logprobs_sent :]
        out.output_top_logprobs = req.output_top_logprobs[req.output_logprobs_sent :]
        req.output_logprobs_sent = len(req.output_token_logprobs)


def _max_new(req: Req) -> int:
    return req.sampling_params.max_new_tokens


class _Stats:
    """Counters for /get_server_info, and outputs waiting to be sent."""

    def __init__(self) -> None:
        self.pending_outputs: list[Req] = []
        self.decode_steps = 0
        self.decode_batch_sum = 0
        self.generated_tokens = 0
        self.jump_forward_tokens = 0
        self.retractions = 0

    def record_decode(self, batch_size: int) -> None:
        self.decode_steps += 1
        self.decode_batch_sum += batch_size

    def mean_decode_batch(self) -> float:
        return self.decode_batch_sum / self.decode_steps if self.decode_steps else 0.0


# --------------------------------------------------------------------------- process
def run_scheduler_process(server_args: ServerArgs, port_args: PortArgs) -> None:
    """Entry point of the scheduler process (started with multiprocessing spawn)."""
    logging.basicConfig(
        level=server_args.logging_level(),
        format="%(asctime)s [scheduler] %(levelname)s %(message)s",
    )
    parent = os.getppid()
    ctx = zmq.Context(2)
    recv = ctx.socket(zmq.PULL)
    recv.bind(port_args.scheduler_input_ipc)
    send = ctx.socket(zmq.PUSH)
    send.connect(port_args.tokenizer_ipc)
    try:
        scheduler = Scheduler(server_args)
    except Exception as e:
        logger.exception("scheduler failed to start")
        send.send_pyobj(SchedulerFailed(f"{type(e).__name__}: {e}"))
        time.sleep(0.5)
        return
    send.send_pyobj(scheduler.ready_message())
    _event_loop(scheduler, recv, send, parent)


def _event_loop(scheduler: Scheduler, recv: zmq.Socket, send: zmq.Socket, parent: int) -> None:
    poller = zmq.Poller()
    poller.register(recv, zmq.POLLIN)
    while True:
        timeout = 0 if scheduler.has_work() else 1000
        if poller.poll(timeout):
            _drain(scheduler, recv, send)
        if os.getppid() != parent:  # a cheap syscall; no orphan keeps computing
            logger.info("parent process exited; scheduler stops")
            return
        if not scheduler.has_work() and not scheduler.stats.pending_outputs:
            continue
        try:
            reqs = scheduler.step()
        except Exception:
            logger.exception("scheduler step failed; aborting the running requests")
            reqs = _abort_all(scheduler)
        if reqs:
            send.send_pyobj(BatchReqOutput([scheduler.make_output(r) for r in reqs]))


def _drain(scheduler: Scheduler, recv: zmq.Socket, send: zmq.Socket) -> None:
    while True:
        try:
            msg = recv.recv_pyobj(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            reply = scheduler.handle_message(msg)
        except Exception as e:
            logger.exception("bad message")
            reply = None
            rid = getattr(msg, "rid", None)
            if rid is not None:
                send.send_pyobj(BatchReqOutput([_error_output(rid, str(e))]))
        if reply is not None:
            send.send_pyobj(reply)


def _error_output(rid: str, message: str) -> ReqOutput:
    return ReqOutput(rid, "", [], {"type": "abort", "message": message}, 0, 0, 0)


def _abort_all(scheduler: Scheduler) -> list[Req]:
    """Last resort after an internal error: end every running request, keep serving."""
    for req in scheduler.running:
        req.finish(FinishReason.ABORT, message="internal error in the scheduler")
    try:
        scheduler._release_finished()
    except Exception:
        logger.exception("release after error failed")
        scheduler.running = []
    out, scheduler.stats.pending_outputs = scheduler.stats.pending_outputs, []
    return out
