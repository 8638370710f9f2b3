"""OutputProcessor: appends tokens to a request and decides when it ends: EOS and stop ids,
grammar accept and jump-forward, text and stop strings (honouring min_new_tokens), length;
then builds the per-step ReqOutput deltas."""

from __future__ import annotations

from typing import Any, Optional

from sglang.srt.managers.detokenizer import OutputStream
from sglang.srt.managers.io_struct import FinishReason, ReqOutput
from sglang.srt.managers.logprobs import LogprobCollector
from sglang.srt.managers.req import Req


class OutputProcessor:
    """The only writer of `req.out` and of a request's tokens after admission."""

    def __init__(
        self,
        tokenizer: Any,
        eos_token_ids: set[int],
        logprobs: LogprobCollector,
        jump_forward: bool = True,
        stream_interval: int = 1,
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.logprobs = logprobs
        self.jump_forward = jump_forward
        self.stream_interval = stream_interval
        self.jump_forward_tokens = 0  # statistics
        # rid -> OutputStream state before its newest sampled token (for a jump-forward rollback)
        self._checkpoints: dict[str, tuple[Any, int]] = {}

    def start(self, req: Req) -> None:
        req.out.stream = OutputStream.from_params(
            self.tokenizer, req.origin_input_ids, req.sampling_params
        )

    # ---- tokens in ---------------------------------------------------------------------------

    def append_sampled(self, req: Req, token: int) -> None:
        """One sampled token: check it, then follow the grammar's forced continuation."""
        matcher = req.grammar.matcher
        if matcher is not None and self.jump_forward and not req.return_logprob:
            self._checkpoints[req.rid] = (req.out.stream.checkpoint(), len(req.out.pending_text))
        self._append(req, [token], sampled=True)
        if not req.finished and matcher is not None:
            self._jump_forward(req)

    def _append(self, req: Req, tokens: list[int], sampled: bool) -> None:
        params = req.sampling_params
        for token in tokens:
            req.append_token(token)
            if token in self.eos_token_ids and not params.ignore_eos:
                req.finish(FinishReason.stop(token))
            elif params.stop_token_ids and token in params.stop_token_ids:
                req.finish(FinishReason.stop(token))
            elif req.grammar.matcher is not None and sampled:
                self._grammar_accept(req, token)
            # NOTE: before min_new_tokens no stop string may end the request (EOS and stop ids
            # are banned by the sampler until then).
            step = req.out.stream.append([token], check_stop=req.step >= params.min_new_tokens)
            req.out.pending_text += step.text
            if step.matched_stop is not None:
                req.finish(FinishReason.stop(step.matched_stop))
            if req.step >= params.max_new_tokens:
                req.finish(FinishReason.for_length(params.max_new_tokens))
            if req.finished:
                self.close(req)
                return

    def _grammar_accept(self, req: Req, token: int) -> None:
        matcher = req.grammar.matcher
        try:
            matcher.accept_token(token)
        except ValueError as e:
            req.finish(FinishReason.abort(f"grammar rejected token {token}: {e}"))
            return
        if matcher.is_terminated():
            req.finish(FinishReason.stop(None))

    def _jump_forward(self, req: Req) -> None:
        """Append the tokens the grammar forces, without a forward pass each; the next extend
        computes their KV in one go."""
        checkpoint = self._checkpoints.pop(req.rid, None)
        if checkpoint is None:
            return
        matcher = req.grammar.matcher
        jump = matcher.try_jump_forward()
        if jump is None:
            return
        if jump.num_rollback:
            if not jump.tokens:
                matcher.accept_token(req.output_ids[-1])  # keep matcher and output in step
                return
            self._rollback_last_token(req, checkpoint)
        forced = list(jump.tokens)[: req.sampling_params.max_new_tokens - req.step]
        self.jump_forward_tokens += len(forced)
        self._append(req, forced, sampled=False)
        if not req.finished and matcher.is_terminated():
            req.finish(FinishReason.stop(None))
            self.close(req)

    def _rollback_last_token(self, req: Req, checkpoint: tuple[Any, int]) -> None:
        """Drop the last sampled token (its KV is not computed yet): the forced text
        re-tokenizes it together with what follows."""
        assert req.pending_len == 1, "only the newest, uncomputed token can be rolled back"
        req.pop_token()
        stream_state, text_len = checkpoint
        req.out.stream.rewind(stream_state)
        req.out.pending_text = req.out.pending_text[:text_len]

    # ---- ending ------------------------------------------------------------------------------

    def abort(self, req: Req, message: str, status: Optional[int] = None) -> None:
        req.finish(FinishReason.abort(message, status))
        self.close(req)

    def close(self, req: Req) -> None:
        """Release the text held back for possible stop strings (the request has ended)."""
        self._checkpoints.pop(req.rid, None)
        if req.out.stream is not None:
            req.out.pending_text += req.out.stream.finish().text

    # ---- outputs -----------------------------------------------------------------------------

    def has_output(self, req: Req) -> bool:
        """Finished requests always; streamed ones at their first token, then every
        `stream_interval` tokens."""
        if req.finished:
            return True
        if not req.stream:
            return False
        new = len(req.output_ids) - req.out.sent_ids_len
        interval = req.sampling_params.stream_interval or self.stream_interval
        return new > 0 and (req.out.sent_ids_len == 0 or new >= interval)

    def make_output(self, req: Req) -> ReqOutput:
        """What req produced since its last output (text, ids, logprobs), and mark it sent."""
        out = ReqOutput(
            rid=req.rid,
            text_delta=req.out.pending_text,
            output_ids=req.output_ids[req.out.sent_ids_len :],
            finish_reason=req.finish_reason,
            prompt_tokens=len(req.origin_input_ids),
            completion_tokens=len(req.output_ids),
            cached_tokens=req.kv.cached_tokens,
            embedding=req.pooling.embedding if req.pooling is not None else None,
        )
        req.out.pending_text, req.out.sent_ids_len = "", len(req.output_ids)
        if req.return_logprob:
            self.logprobs.attach(req, out)
        return out


def error_output(rid: str, message: str) -> ReqOutput:
    """The output of a request the scheduler could not even take in."""
    return ReqOutput(rid, "", [], FinishReason.abort(message, 500), 0, 0, 0)


def check_finished_before_sampling(req: Req) -> Optional[FinishReason]:
    """A request at its last prompt chunk that may not sample (max_new_tokens reached, e.g. 0)."""
    if req.step >= req.sampling_params.max_new_tokens:
        return FinishReason.for_length(req.sampling_params.max_new_tokens)
    return None
