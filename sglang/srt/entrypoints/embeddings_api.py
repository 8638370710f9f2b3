"""Embedding routes: SGLang's POST /encode and OpenAI's POST /v1/embeddings.

/encode takes SGLang's EmbeddingReqInput (`text` or `input_ids`, one or a list, `rid`,
`dimensions`) and answers {"embedding": [...], "meta_info": {"id", "finish_reason",
"prompt_tokens"}}, a list of those for a batch. /v1/embeddings takes OpenAI's request (`input`
as a string, strings, token ids or lists of them; `encoding_format` float or base64 (little-endian
float32, what the openai client asks for by default); `dimensions`) and answers OpenAI's
{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}.
A server without an embedding model answers both with a 400 naming --is-embedding.
"""

from __future__ import annotations

import base64
import dataclasses
import struct
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from sglang.srt.entrypoints.field_compat import (
    EMBEDDINGS_DEFAULT_ONLY,
    ENCODE_DEFAULT_ONLY,
    pop_default_only,
)
from sglang.srt.entrypoints.http_common import (
    SERVING_ERRORS,
    RequestError,
    exception_response,
    json_response,
    parse_body,
    read_json,
)
from sglang.srt.managers.io_struct import EmbeddingOutput, EmbeddingReqInput, outputs_json

if TYPE_CHECKING:
    from sglang.srt.managers.tokenizer_manager import TokenizerManager

GetTokenizerManager = Callable[[], "TokenizerManager"]

_ENCODE_FIELDS = {f.name for f in dataclasses.fields(EmbeddingReqInput)}


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, with SGLang's `rid`."""

    model_config = ConfigDict(extra="forbid")

    input: Union[str, list[str], list[int], list[list[int]]]
    model: Optional[str] = None  # any name: one model is served
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = None
    user: Optional[str] = None  # identifies the end user to the operator; not used here
    rid: Optional[Union[str, list[str]]] = None


def add_embedding_routes(app: FastAPI, get_tokenizer_manager: GetTokenizerManager) -> None:
    """Register /encode and /v1/embeddings on the app."""

    @app.api_route("/encode", methods=["POST", "PUT"])
    async def encode(request: Request) -> Response:
        try:
            obj = encode_input(await read_json(request))
            out = await get_tokenizer_manager().encode_request(obj, request)
        except SERVING_ERRORS as e:
            return exception_response(e)
        return json_response(outputs_json(out))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        tm = get_tokenizer_manager()
        try:
            body = await read_json(request)
            if isinstance(body, dict):
                body = pop_default_only(body, EMBEDDINGS_DEFAULT_ONLY)
            req = parse_body(EmbeddingRequest, body)
            out = await tm.encode_request(_native(req), request)
        except SERVING_ERRORS as e:
            return exception_response(e)
        outs = out if isinstance(out, list) else [out]
        return json_response(_openai_response(outs, req, tm.served_model_name))


def encode_input(body: Any) -> EmbeddingReqInput:
    """An /encode body, checked for unknown fields and field types; RequestError if bad."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    body = pop_default_only(body, ENCODE_DEFAULT_ONLY)
    unknown = sorted(set(body) - _ENCODE_FIELDS)
    if unknown:
        raise RequestError(f"unknown field(s) in the request: {', '.join(unknown)}", unknown[0])
    if not isinstance(body.get("log_metrics", True), bool):
        raise RequestError(f"log_metrics must be a boolean, got {body['log_metrics']!r}")
    return EmbeddingReqInput(**body)


def _native(req: EmbeddingRequest) -> EmbeddingReqInput:
    """The /encode form of an OpenAI request: strings as text, token ids as input_ids."""
    given = req.input
    if given == "" or given == []:
        raise RequestError("input is empty", "input")
    if isinstance(given, str) or isinstance(given[0], str):
        return EmbeddingReqInput(text=given, rid=req.rid, dimensions=req.dimensions)
    return EmbeddingReqInput(input_ids=given, rid=req.rid, dimensions=req.dimensions)


def _openai_response(
    outs: list[EmbeddingOutput], req: EmbeddingRequest, served_model_name: str
) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(o.embedding, req.encoding_format)}
        for i, o in enumerate(outs)
    ]
    tokens = sum(o.prompt_tokens for o in outs)
    return {
        "object": "list",
        "data": data,
        "model": req.model or served_model_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _encode(embedding: list[float], encoding_format: str) -> Union[list[float], str]:
    """float: the list; base64: little-endian float32 values, base64-encoded (OpenAI's form)."""
    if encoding_format == "float":
        return embedding
    return base64.b64encode(struct.pack(f"<{len(embedding)}f", *embedding)).decode("ascii")
