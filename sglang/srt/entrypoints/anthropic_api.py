"""The Anthropic Messages API (POST /v1/messages) on top of the tokenizer manager."""

from __future__ import annotations

import json
import uuid
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Literal,
    Optional,
    Union,
)

import fastapi
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sglang.srt.entrypoints.http_common import (
    SERVING_ERRORS,
    RequestAborted,
    first_output,
    status_for,
)
from sglang.srt.managers.io_struct import GenerateOutput, GenerateReqInput

if TYPE_CHECKING:
    from sglang.srt.managers.tokenizer_manager import TokenizerManager


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: Optional[dict[str, Any]] = None  # accepted and ignored: caching is automatic


class ImageSource(_Strict):
    type: Literal["base64", "url"]
    media_type: Optional[str] = None
    data: Optional[str] = None
    url: Optional[str] = None


class ImageBlock(_Strict):
    type: Literal["image"]
    source: ImageSource
    cache_control: Optional[dict[str, Any]] = None


ContentBlock = Union[TextBlock, ImageBlock]


class Message(_Strict):
    role: Literal["user", "assistant"]
    content: Union[str, list[ContentBlock]]


class MessagesRequest(_Strict):
    """The body of POST /v1/messages (the fields of Anthropic's Messages API we honour)."""

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: Optional[Union[str, list[TextBlock]]] = None
    stop_sequences: Optional[list[str]] = None
    temperature: float = Field(default=1.0, ge=0.0, le=1.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)  # 0: off, as if unset
    stream: bool = False
    metadata: Optional[dict[str, Any]] = None  # accepted and ignored (user_id)


def add_anthropic_routes(
    app: fastapi.FastAPI, get_tokenizer_manager: Callable[[], "TokenizerManager"]
) -> None:
    """Add POST /v1/messages (Anthropic Messages API, streaming included) to `app`."""

    @app.post("/v1/messages")
    async def create_message(raw_request: fastapi.Request) -> fastapi.Response:
        try:
            body = await raw_request.json()
        except ValueError as e:  # bad JSON or bad UTF-8
            return error_response(f"Malformed JSON body: {e}")
        try:
            req = MessagesRequest.model_validate(body)
        except ValidationError as e:
            return error_response(_describe_validation_error(e))
        tm = get_tokenizer_manager()
        try:
            obj = build_generate_request(req, tm)
            outputs = tm.generate_request(obj, raw_request)
            first = await first_output(outputs)
            if not req.stream:
                await outputs.aclose()  # NOTE: releases the request's state in the manager now
                _raise_if_aborted(first)
        except SERVING_ERRORS as e:
            return exception_response(e)
        if req.stream:
            return StreamingResponse(
                _stream_events(req, tm, first, outputs), media_type="text/event-stream"
            )
        return JSONResponse(_message_response(req, tm, first))


def error_response(
    message: str, status_code: int = 400, kind: str = "invalid_request_error"
) -> JSONResponse:
    """An Anthropic-style error response."""
    return JSONResponse(_error_body(message, kind), status_code=status_code)


def exception_response(e: Exception) -> JSONResponse:
    """The shared status mapping (http_common.status_for), in Anthropic's error shape."""
    status = status_for(e)
    kind = {400: "invalid_request_error", 499: "request_cancelled"}.get(status, "overloaded_error")
    return error_response(str(e), status, kind)


def _raise_if_aborted(out: GenerateOutput) -> None:
    reason = out.finish_reason
    if reason is not None and reason.is_abort:
        raise RequestAborted(reason.message or "the request was aborted")


def _error_body(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _describe_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def to_openai_messages(req: MessagesRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """Anthropic messages (and system) as OpenAI-style messages with string content, plus images.

    Images become data URLs (or plain URLs) in the order they appear.
    """
    messages: list[dict[str, Any]] = []
    images: list[str] = []
    system = req.system
    if isinstance(system, list):
        system = "".join(b.text for b in system)
    if system:
        messages.append({"role": "system", "content": system})
    for m in req.messages:
        if isinstance(m.content, str):
            messages.append({"role": m.role, "content": m.content})
            continue
        texts = []
        for block in m.content:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            else:
                images.append(_image_url(block.source))
        messages.append({"role": m.role, "content": "".join(texts)})
    return messages, images


def _image_url(source: ImageSource) -> str:
    if source.type == "url":
        if not source.url:
            raise ValueError("image source of type 'url' needs a 'url'")
        return source.url
    if not source.data or not source.media_type:
        raise ValueError("image source of type 'base64' needs 'media_type' and 'data'")
    return f"data:{source.media_type};base64,{source.data}"


def build_generate_request(req: MessagesRequest, tm: "TokenizerManager") -> GenerateReqInput:
    """The native request for a Messages request.

    A final assistant message is a prefill: the reply continues it (and does not repeat it).
    """
    messages, images = to_openai_messages(req)
    prefill = ""
    if messages[-1]["role"] == "assistant":
        prefill = messages.pop()["content"]
    if not any(m["role"] == "user" for m in messages):
        raise ValueError("messages must contain at least one 'user' message")
    prompt = tm.apply_chat_template(messages) + prefill
    params: dict[str, Any] = {"max_new_tokens": req.max_tokens, "temperature": req.temperature}
    if req.stop_sequences:
        params["stop"] = req.stop_sequences
    if req.top_p is not None:
        params["top_p"] = req.top_p
    if req.top_k:
        params["top_k"] = req.top_k
    return GenerateReqInput(
        text=prompt,
        sampling_params=params,
        stream=req.stream,
        image_data=images or None,
        rid=f"msg_{uuid.uuid4().hex}",
    )


def stop_reason(
    out: GenerateOutput, stop_sequences: Optional[list[str]]
) -> tuple[str, Optional[str]]:
    """(stop_reason, stop_sequence) of a finished native output."""
    finish = out.finish_reason
    if finish is not None and finish.type == "length":
        return "max_tokens", None
    matched = finish.matched if finish is not None else None
    if isinstance(matched, str) and stop_sequences and matched in stop_sequences:
        return "stop_sequence", matched
    return "end_turn", None


def _message_response(
    req: MessagesRequest, tm: "TokenizerManager", out: GenerateOutput
) -> dict[str, Any]:
    reason, sequence = stop_reason(out, req.stop_sequences)
    return {
        **_message_head(out, tm),
        "content": [{"type": "text", "text": out.text}],
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {
            "input_tokens": out.prompt_tokens,
            "output_tokens": out.completion_tokens,
        },
    }


def _message_head(out: GenerateOutput, tm: "TokenizerManager") -> dict[str, Any]:
    rid = out.rid or f"msg_{uuid.uuid4().hex}"
    if not str(rid).startswith("msg_"):
        rid = f"msg_{rid}"
    return {"id": rid, "type": "message", "role": "assistant", "model": tm.served_model_name}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _stream_events(
    req: MessagesRequest,
    tm: "TokenizerManager",
    first: GenerateOutput,
    rest: AsyncGenerator[GenerateOutput, None],
) -> AsyncIterator[bytes]:
    """The documented event sequence: message_start, content_block_start, ping, deltas, stops."""
    for event in _opening_events(tm, first):
        yield event
    last, sent = first, 0
    try:
        async for out in _chain(first, rest):
            last, delta, sent = out, out.text[sent:], len(out.text)
            if delta:
                text_delta = {"type": "text_delta", "text": delta}
                body = {"type": "content_block_delta", "index": 0, "delta": text_delta}
                yield _sse("content_block_delta", body)
        _raise_if_aborted(last)
    except SERVING_ERRORS as e:
        # NOTE: the status line is already sent; the documented way to fail now is an error event.
        kind = "invalid_request_error" if status_for(e) == 400 else "overloaded_error"
        yield _sse("error", _error_body(str(e), kind))
        return
    finally:
        await rest.aclose()
    for event in _closing_events(req, last):
        yield event


def _opening_events(tm: "TokenizerManager", first: GenerateOutput) -> list[bytes]:
    start = {
        **_message_head(first, tm),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": first.prompt_tokens, "output_tokens": 0},
    }
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    return [
        _sse("message_start", {"type": "message_start", "message": start}),
        _sse("content_block_start", block),
        _sse("ping", {"type": "ping"}),
    ]


def _closing_events(req: MessagesRequest, out: GenerateOutput) -> list[bytes]:
    reason, sequence = stop_reason(out, req.stop_sequences)
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": sequence},
        "usage": {"output_tokens": out.completion_tokens},
    }
    return [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse("message_delta", message_delta),
        _sse("message_stop", {"type": "message_stop"}),
    ]


async def _chain(
    first: GenerateOutput, rest: AsyncIterator[GenerateOutput]
) -> AsyncIterator[GenerateOutput]:
    yield first
    async for out in rest:
        yield out


__all__ = ["add_anthropic_routes", "MessagesRequest", "build_generate_request", "stop_reason"]
