"""Messages between the tokenizer manager (HTTP process) and the scheduler process.

Each message is a small dataclass sent pickled over ZMQ. The tokenizer manager sends
TokenizedGenerateReqInput / AbortReq / FlushCacheReq / GetServerInfoReq; the scheduler answers
with BatchReqOutput once per step (for every request that produced something) and with the
*Reply messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from sglang.srt.sampling.sampling_params import SamplingParams


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


@dataclass
class ReqOutput:
    """What one request produced in one scheduler step (deltas, not totals)."""

    rid: str
    text_delta: str  # newly decoded text, stop strings already trimmed
    output_ids: list[int]  # newly appended output token ids
    # None while running; else {"type": "stop"|"length"|"abort", "matched"|"length"|"message": ...}
    finish_reason: Optional[dict[str, Any]]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    # Logprob entries are (logprob, token_id); top entries are lists of (logprob, token_id).
    # The input lists are sent once, with the first output of the request.
    input_token_logprobs: Optional[list[tuple[Optional[float], int]]] = None
    input_top_logprobs: Optional[list[Optional[list[tuple[float, int]]]]] = None
    output_token_logprobs: Optional[list[tuple[float, int]]] = None
    output_top_logprobs: Optional[list[list[tuple[float, int]]]] = None


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
