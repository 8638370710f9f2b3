"""Messages between the tokenizer manager (HTTP process) and the scheduler process.

Each message is a small dataclass sent pickled over ZMQ. The tokenizer manager sends
TokenizedGenerateReqInput (or, to an embedding model, TokenizedEmbeddingReqInput) / AbortReq /
FlushCacheReq / GetServerInfoReq; the scheduler answers with BatchReqOutput once per step (for
every request that produced something) and with the *Reply messages. What a request produced
stays typed (FinishReason, TokenLogprob, LogprobEntry, GenerateOutput, EmbeddingOutput) until
the HTTP edge turns it into JSON with `to_json()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

from sglang.srt.sampling.sampling_params import SamplingParams

if TYPE_CHECKING:
    from sglang.srt.multimodal.inputs import MultimodalInputs


class RequestFailed(RuntimeError):
    """A request the server could not serve; `status` is the HTTP status it is answered with,
    `retry_after` (seconds) tells the client when to try again."""

    def __init__(self, message: str, status: int = 500, retry_after: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass
class GenerateReqInput:
    """The body of POST /generate (one prompt or a batch), as the HTTP layer received it."""

    text: Optional[Union[str, list[str]]] = None
    input_ids: Optional[Union[list[int], list[list[int]]]] = None
    sampling_params: Optional[Union[dict[str, Any], list[dict[str, Any]]]] = None
    return_logprob: Union[bool, list[bool]] = False
    logprob_start_len: Union[int, list[int]] = -1
    top_logprobs_num: Union[int, list[int]] = 0
    return_text_in_logprobs: bool = False
    stream: bool = False
    image_data: Optional[Any] = None
    rid: Optional[Union[str, list[str]]] = None
    # False: leave this request out of /metrics (health checks send False)
    log_metrics: bool = True
    # The request's contents are never logged here, so True changes nothing.
    no_logs: bool = False
    # Sent by routers; one model is served, so any name is taken to mean it.
    model: Optional[str] = None


@dataclass
class TokenizedGenerateReqInput:
    """One request, validated and tokenized (a batch or n > 1 becomes several of these)."""

    rid: str
    input_text: Optional[str]
    input_ids: list[int]
    sampling_params: SamplingParams
    return_logprob: bool = False
    # Index of the first prompt token whose logprob is returned; -1 means none of the prompt.
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    stream: bool = False
    # The prompt's images, preprocessed (vision-language models); input_ids hold their pad ids
    mm_inputs: Optional[MultimodalInputs] = None


@dataclass
class EmbeddingReqInput:
    """The body of POST /encode (one prompt or a batch), as the HTTP layer received it."""

    text: Optional[Union[str, list[str]]] = None
    input_ids: Optional[Union[list[int], list[list[int]]]] = None
    rid: Optional[Union[str, list[str]]] = None
    # Matryoshka truncation: keep the first `dimensions` values (models that allow it)
    dimensions: Optional[int] = None
    log_metrics: bool = True
    # SGLang's dummy field "for compatibility": accepted and ignored, as there
    sampling_params: Optional[Union[dict[str, Any], list[dict[str, Any]]]] = None


@dataclass
class TokenizedEmbeddingReqInput:
    """One embedding request, validated and tokenized (a batch becomes several of these)."""

    rid: str
    input_text: Optional[str]
    input_ids: list[int]
    dimensions: Optional[int] = None


@dataclass(frozen=True)
class FinishReason:
    """Why a request ended. JSON: {"type": "stop", "matched": token id, stop string or null},
    {"type": "length", "length": n} or {"type": "abort", "message": text}."""

    type: str  # "stop" | "length" | "abort"
    matched: Union[int, str, None] = None  # stop: the EOS/stop token id or stop string
    length: Optional[int] = None  # length: max_new_tokens
    message: Optional[str] = None  # abort: what happened
    # abort: the HTTP status it is answered with: 400 the request itself was invalid (e.g. its
    # grammar does not compile), 500 an internal error, 503 overload or shutdown (retry later).
    # None: the client aborted it, which a 200 reports (as SGLang does).
    status: Optional[int] = None

    @classmethod
    def stop(cls, matched: Union[int, str, None]) -> FinishReason:
        return cls("stop", matched=matched)

    @classmethod
    def for_length(cls, length: int) -> FinishReason:
        return cls("length", length=length)

    @classmethod
    def abort(cls, message: str, status: Optional[int] = None) -> FinishReason:
        return cls("abort", message=message, status=status)

    @property
    def is_abort(self) -> bool:
        return self.type == "abort"

    def to_json(self) -> dict[str, Any]:
        if self.type == "stop":
            return {"type": "stop", "matched": self.matched}
        if self.type == "length":
            return {"type": "length", "length": self.length}
        return {"type": "abort", "message": self.message}


class TokenLogprob(NamedTuple):
    """One token's logprob as the scheduler sends it (None: the first prompt token has none)."""

    logprob: Optional[float]
    token_id: int


class LogprobEntry(NamedTuple):
    """A logprob entry in the HTTP process; JSON `[logprob, token_id, token_text_or_null]`."""

    logprob: Optional[float]
    token_id: int
    text: Optional[str]


@dataclass
class ReqOutput:
    """What one request produced in one scheduler step (deltas, not totals)."""

    rid: str
    text_delta: str  # newly decoded text, stop strings already trimmed
    output_ids: list[int]  # newly appended output token ids
    finish_reason: Optional[FinishReason]  # None while running
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    # The input lists are sent once, with the first output of the request.
    input_token_logprobs: Optional[list[TokenLogprob]] = None
    input_top_logprobs: Optional[list[Optional[list[TokenLogprob]]]] = None
    output_token_logprobs: Optional[list[TokenLogprob]] = None
    output_top_logprobs: Optional[list[list[TokenLogprob]]] = None
    # An embedding request's pooled embedding, sent once when it finishes.
    embedding: Optional[list[float]] = None


@dataclass
class EmbeddingOutput:
    """One embedding request's result, as the tokenizer manager hands it to routes."""

    rid: str
    embedding: list[float]
    prompt_tokens: int
    finish_reason: Optional[FinishReason]

    def to_json(self) -> dict[str, Any]:
        """The native /encode shape: {"embedding", "meta_info": {"id", "finish_reason", ...}}."""
        reason = None if self.finish_reason is None else self.finish_reason.to_json()
        meta = {"id": self.rid, "finish_reason": reason, "prompt_tokens": self.prompt_tokens}
        return {"embedding": list(self.embedding), "meta_info": meta}


@dataclass
class GenerateOutput:
    """One request's output so far (cumulative), as the tokenizer manager hands it to routes."""

    rid: str
    text: str
    output_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: Optional[FinishReason]
    return_logprob: bool = False
    input_token_logprobs: list[LogprobEntry] = field(default_factory=list)
    input_top_logprobs: list[Optional[list[LogprobEntry]]] = field(default_factory=list)
    output_token_logprobs: list[LogprobEntry] = field(default_factory=list)
    output_top_logprobs: list[Optional[list[LogprobEntry]]] = field(default_factory=list)
    index: Optional[int] = None  # position in a streamed batch
    # Output logprob entries so far; set by since() where output_token_logprobs is a slice.
    output_token_logprobs_total: Optional[int] = None

    def since(self, sent: dict[str, int]) -> GenerateOutput:
        """What is new since the counts in `sent` (updated): the incremental stream chunk."""
        text_from, ids_from, lp_from = sent.get("text", 0), sent.get("ids", 0), sent.get("lp", 0)
        first = not sent
        sent.update(
            text=len(self.text), ids=len(self.output_ids), lp=len(self.output_token_logprobs)
        )
        return dataclasses.replace(
            self,
            text=self.text[text_from:],
            output_ids=self.output_ids[ids_from:],
            input_token_logprobs=self.input_token_logprobs if first else [],
            input_top_logprobs=self.input_top_logprobs if first else [],
            output_token_logprobs=self.output_token_logprobs[lp_from:],
            output_top_logprobs=self.output_top_logprobs[lp_from:],
            output_token_logprobs_total=len(self.output_token_logprobs),
        )

    def to_json(self) -> dict[str, Any]:
        """The native /generate shape: {"text", "output_ids", "meta_info": {...}}."""
        meta: dict[str, Any] = {
            "id": self.rid,
            "finish_reason": None if self.finish_reason is None else self.finish_reason.to_json(),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
        }
        if self.return_logprob:
            meta["input_token_logprobs"] = [list(e) for e in self.input_token_logprobs]
            meta["output_token_logprobs"] = [list(e) for e in self.output_token_logprobs]
            meta["input_top_logprobs"] = [_entries_json(t) for t in self.input_top_logprobs]
            meta["output_top_logprobs"] = [_entries_json(t) for t in self.output_top_logprobs]
            total = self.output_token_logprobs_total
            meta["output_token_logprobs_length"] = (
                len(self.output_token_logprobs) if total is None else total
            )
        out: dict[str, Any] = {
            "text": self.text,
            "output_ids": list(self.output_ids),
            "meta_info": meta,
        }
        if self.index is not None:
            out["index"] = self.index
        return out


def _entries_json(entries: Optional[list[LogprobEntry]]) -> Optional[list[list[Any]]]:
    return None if entries is None else [list(e) for e in entries]


def outputs_json(
    out: Union[GenerateOutput, EmbeddingOutput, list[GenerateOutput], list[EmbeddingOutput]],
) -> Any:
    """`to_json()` of one output or of a batch's list of them."""
    if isinstance(out, list):
        return [o.to_json() for o in out]
    return out.to_json()


@dataclass
class BatchReqOutput:
    outputs: list[ReqOutput]


@dataclass
class AbortReq:
    rid: str


@dataclass
class FlushCacheReq:
    pass


@dataclass
class FlushCacheReply:
    success: bool
    message: str = ""


@dataclass
class GetServerInfoReq:
    pass


@dataclass
class GetServerInfoReply:
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class SchedulerReady:
    """Sent once by the scheduler process after the model is loaded."""

    max_total_tokens: int
    max_running_requests: int
    context_length: int
    model_info: dict[str, Any] = field(default_factory=dict)


@dataclass
class SchedulerFailed:
    """Sent instead of SchedulerReady when start-up fails (the message names the problem)."""

    message: str


@dataclass
class Heartbeat:
    """Sent about once a second by the scheduler's watchdog thread while the process lives."""

    step_running_s: float  # how long the current step has run; 0 between steps
