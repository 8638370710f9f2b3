"""Req: one request's state inside the scheduler, its fields grouped by the part that owns them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from sglang.srt.layers.pooler import PoolState
from sglang.srt.managers.io_struct import (
    FinishReason,
    TokenizedEmbeddingReqInput,
    TokenizedGenerateReqInput,
    TokenLogprob,
)
from sglang.srt.sampling.sampling_params import SamplingParams

if TYPE_CHECKING:
    from concurrent.futures import Future

    from sglang.srt.managers.detokenizer import OutputStream
    from sglang.srt.mem_cache.radix_cache import TreeNode
    from sglang.srt.multimodal.inputs import MultimodalInputs


@dataclass
class KVState:
    """Where a request's KV lives; written only by the KVManager.

    NOTE: the KV of fill_ids[:kv_len] is in the pool at req_to_token[pool_idx, :kv_len]; of
    those, the first cached_len slots belong to the radix tree (locked through last_node), the
    rest to this request.
    """

    pool_idx: Optional[int] = None
    kv_len: int = 0
    cached_len: int = 0
    last_node: Optional[TreeNode] = None
    cached_tokens: int = 0  # prompt tokens reused from the cache at first admission
    admitted: bool = False


@dataclass
class OutputState:
    """Text and progress towards the client; written only by the OutputProcessor."""

    stream: Optional[OutputStream] = None  # detokenizer + stop strings (set on arrival)
    pending_text: str = ""  # text produced since the last output was built
    sent_ids_len: int = 0  # output ids already sent
    finish_reason: Optional[FinishReason] = None


@dataclass
class LogprobState:
    """Logprobs asked for and collected; written only by the LogprobCollector."""

    start_len: int = -1  # first prompt position whose logprob is returned; -1: none
    top_num: int = 0
    input_token: list[TokenLogprob] = field(default_factory=list)
    input_top: list[Optional[list[TokenLogprob]]] = field(default_factory=list)
    input_done: bool = False
    input_sent: bool = False
    output_token: list[TokenLogprob] = field(default_factory=list)
    output_top: list[list[TokenLogprob]] = field(default_factory=list)
    output_sent: int = 0


@dataclass
class GrammarState:
    """The request's constraint: a future while it compiles, then its own matcher."""

    future: Optional[Future] = None
    matcher: Any = None  # BaseGrammarObject
    queued_at: float = 0.0  # time.monotonic() when compiling started


@dataclass
class Req:
    """A request as the scheduler sees it.

    NOTE: fill_ids is the prompt followed by output_ids, kept as one list that grows with
    each token (not rebuilt per access); output_counts counts output_ids for the penalties.
    """

    rid: str
    origin_input_ids: list[int]
    sampling_params: SamplingParams
    return_logprob: bool = False
    stream: bool = False
    output_ids: list[int] = field(default_factory=list)
    fill_ids: list[int] = field(default_factory=list)
    output_counts: dict[int, int] = field(default_factory=dict)
    kv: KVState = field(default_factory=KVState)
    out: OutputState = field(default_factory=OutputState)
    logprob: LogprobState = field(default_factory=LogprobState)
    grammar: GrammarState = field(default_factory=GrammarState)
    # An embedding request's pooling (None for generation); written by the EmbeddingProcessor.
    pooling: Optional[PoolState] = None
    # The prompt's images (vision-language models); their features are filled by the model.
    mm_inputs: Optional[MultimodalInputs] = None

    def __post_init__(self) -> None:
        self.fill_ids = list(self.origin_input_ids) + list(self.output_ids)

    @classmethod
    def from_message(cls, msg: TokenizedGenerateReqInput | TokenizedEmbeddingReqInput) -> Req:
        if isinstance(msg, TokenizedEmbeddingReqInput):  # prefill only: nothing is sampled
            return cls(
                rid=msg.rid,
                origin_input_ids=list(msg.input_ids),
                sampling_params=SamplingParams(max_new_tokens=0),
                pooling=PoolState(dimensions=msg.dimensions),
            )
        return cls(
            rid=msg.rid,
            origin_input_ids=list(msg.input_ids),
            sampling_params=msg.sampling_params,
            return_logprob=msg.return_logprob,
            stream=msg.stream,
            logprob=LogprobState(msg.logprob_start_len, msg.top_logprobs_num),
            mm_inputs=msg.mm_inputs,
        )

    # ---- tokens ----------------------------------------------------------------------------

    def append_token(self, token: int) -> None:
        self.output_ids.append(token)
        self.fill_ids.append(token)
        self.output_counts[token] = self.output_counts.get(token, 0) + 1

    def pop_token(self) -> int:
        token = self.output_ids.pop()
        self.fill_ids.pop()
        count = self.output_counts[token] - 1
        if count:
            self.output_counts[token] = count
        else:
            del self.output_counts[token]
        return token

    def fill_slice(self, start: int, end: int) -> list[int]:
        return self.fill_ids[start:end]

    @property
    def seq_len(self) -> int:
        return len(self.fill_ids)

    @property
    def pending_len(self) -> int:
        """Tokens whose KV is not computed yet."""
        return len(self.fill_ids) - self.kv.kv_len

    @property
    def step(self) -> int:
        return len(self.output_ids)

    # ---- finishing ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.out.finish_reason is not None

    @property
    def finish_reason(self) -> Optional[FinishReason]:
        return self.out.finish_reason

    def finish(self, reason: FinishReason) -> None:
        """The first reason wins."""
        if self.out.finish_reason is None:
            self.out.finish_reason = reason

    # ---- logprobs and the cache ----------------------------------------------------------------

    @property
    def wants_input_logprobs(self) -> bool:
        lp = self.logprob
        return self.return_logprob and lp.start_len >= 0 and not lp.input_done

    def max_prefix_len(self) -> int:
        """How much of fill_ids may come from the cache: one token must be computed to get
        logits, input logprobs need the hidden state before logprob_start_len, and pooling
        needs every token's hidden state."""
        if self.pooling is not None:
            return 0
        limit = self.seq_len - 1
        if self.wants_input_logprobs:
            limit = min(limit, max(self.logprob.start_len - 1, 0))
        return max(limit, 0)
