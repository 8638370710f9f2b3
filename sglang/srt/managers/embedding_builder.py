"""Turning an /encode body into validated, tokenized embedding requests, and their results back
into EmbeddingOutputs.

Every check that needs no model runs here, so bad input gets its 400 before anything is sent:
the server serves an embedding model, exactly one of text / input_ids, no empty prompt, token
ids in the vocabulary, prompts that fit the context and the KV pool, and `dimensions` that the
model allows (Matryoshka truncation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from sglang.srt.managers.io_struct import (
    EmbeddingOutput,
    EmbeddingReqInput,
    TokenizedEmbeddingReqInput,
)
from sglang.srt.managers.request_builder import _base_rids, _ids_prompts, _text_prompts

if TYPE_CHECKING:
    from sglang.srt.managers.req_state import ReqState
    from sglang.srt.managers.tokenizer_manager import TokenizerManager

NOT_AN_EMBEDDING_SERVER = (
    "this server serves a generation model, not an embedding model: start it with "
    "--is-embedding (or serve a base-model architecture such as Qwen2Model) for embeddings"
)


def build_embedding_requests(
    tm: TokenizerManager, obj: EmbeddingReqInput
) -> tuple[list[TokenizedEmbeddingReqInput], bool]:
    """The requests of an /encode body (one per prompt) and whether it is a batch."""
    if tm.is_generation:
        raise ValueError(NOT_AN_EMBEDDING_SERVER)
    if (obj.text is None) == (obj.input_ids is None):
        raise ValueError("give exactly one of text and input_ids")
    if obj.text is not None:
        prompts, is_batch = _text_prompts(obj.text)
    else:
        prompts, is_batch = _ids_prompts(obj.input_ids)
    dimensions = check_dimensions(tm.model_info, obj.dimensions)
    rids = _base_rids(obj.rid, len(prompts), is_batch)
    reqs = []
    for rid, (text, ids) in zip(rids, prompts):
        ids = tm.tokenize(text) if text is not None else ids
        _check_ids(tm, ids)
        reqs.append(TokenizedEmbeddingReqInput(rid, text, ids, dimensions))
    tm.builder._check_rids_free(reqs)
    return reqs, is_batch


def _check_ids(tm: TokenizerManager, ids: Optional[list[int]]) -> None:
    """A prompt must be non-empty, in the vocabulary, and fit the context and the KV pool."""
    if not ids:
        raise ValueError("the input is empty (0 tokens)")
    tm.builder.check_vocab(ids, "input_ids")
    n, context = len(ids), tm.context_len
    if n > context:
        raise ValueError(
            f"the input has {n} tokens, more than the context length ({context} tokens)"
        )
    pool = tm.ready_info.max_total_tokens if tm.ready_info else n + 1
    if n >= pool:
        raise ValueError(f"the input has {n} tokens, which does not fit the KV cache ({pool})")


def check_dimensions(model_info: dict[str, Any], dimensions: Any) -> Optional[int]:
    """`dimensions` if the served model allows that Matryoshka truncation; ValueError if not."""
    if dimensions is None:
        return None
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        raise ValueError(f"dimensions must be a positive integer, got {dimensions!r}")
    if not model_info.get("is_matryoshka"):
        raise ValueError(
            "dimensions: the served model does not support Matryoshka truncation (its "
            "config.json sets neither matryoshka_dimensions nor is_matryoshka)"
        )
    allowed = model_info.get("matryoshka_dimensions")
    if allowed and dimensions not in allowed:
        raise ValueError(f"dimensions={dimensions}: the served model allows {allowed}")
    size = model_info.get("embedding_dim", 0)
    if dimensions > size:
        raise ValueError(f"dimensions={dimensions} is more than the embedding size ({size})")
    return dimensions


def embedding_output(state: ReqState) -> EmbeddingOutput:
    """A finished embedding request's result; RuntimeError (a 503) if it ended without one."""
    if state.embedding is None:
        reason = state.finish_reason.to_json() if state.finish_reason else None
        raise RuntimeError(f"request {state.rid} ended without an embedding: {reason}")
    return EmbeddingOutput(state.rid, state.embedding, state.prompt_tokens, state.finish_reason)
