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
from sglang.srt.function_call.parsers import ToolCall
from sglang.srt.function_call.tool_choice import ToolPlan
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


class ToolUseBlock(_Strict):
    """A call the assistant made (in the history)."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: Optional[dict[str, Any]] = None


class ToolResultBlock(_Strict):
    """What a call returned (in a user turn)."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: Union[str, list[TextBlock], None] = None
    is_error: bool = False
    cache_control: Optional[dict[str, Any]] = None


ContentBlock = Union[TextBlock, ImageBlock, ToolUseBlock, ToolResultBlock]


class Message(_Strict):
    role: Literal["user", "assistant"]
    content: Union[str, list[ContentBlock]]


class Tool(_Strict):
    name: str
    description: Optional[str] = None
    input_schema: dict[str, Any]
    type: Optional[Literal["custom"]] = None
    cache_control: Optional[dict[str, Any]] = None


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = None
    disable_parallel_tool_use: bool = False


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
    tools: Optional[list[Tool]] = Field(default=None, min_length=1)
    tool_choice: Optional[ToolChoice] = None


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
            plan = tool_plan(req, tm)
            obj = build_generate_request(req, tm, plan)
            outputs = tm.generate_request(obj, raw_request)
            first = await first_output(outputs)
            if not req.stream:
                await outputs.aclose()  # NOTE: releases the request's state in the manager now
                _raise_if_aborted(first)
        except SERVING_ERRORS as e:
            return exception_response(e)
        if req.stream:
            return StreamingResponse(
                _stream_events(req, tm, plan, first, outputs), media_type="text/event-stream"
            )
        return JSONResponse(_message_response(req, tm, plan, first))


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
    """Anthropic messages (and system) as OpenAI-style messages, plus their images.

    Content is a string, or text and image_url parts where a message holds images; the images
    are data URLs (or plain URLs), also listed in the order they appear; an assistant's tool_use
    blocks become its tool_calls, and each tool_result block a `tool` message.
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
        messages.extend(_blocks_to_messages(m, images))
    return messages, images


def _blocks_to_messages(m: Message, images: list[str]) -> list[dict[str, Any]]:
    texts: list[Any] = []  # strings, and image_url parts where images stand
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for block in m.content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ImageBlock):
            images.append(_image_url(block.source))
            texts.append({"type": "image_url", "image_url": {"url": images[-1]}})
        elif isinstance(block, ToolUseBlock):
            if m.role != "assistant":
                raise ValueError("tool_use blocks belong to assistant messages")
            fn = {"name": block.name, "arguments": json.dumps(block.input)}
            calls.append({"id": block.id, "type": "function", "function": fn})
        else:
            if m.role != "user":
                raise ValueError("tool_result blocks belong to user messages")
            content = block.content
            if isinstance(content, list):
                content = "".join(b.text for b in content)
            text = ("Error: " if block.is_error else "") + (content or "")
            results.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
    out = list(results)
    if texts or not (calls or results):
        out.append({"role": m.role, "content": _content(texts)})
    if calls:
        if out and out[-1]["role"] == "assistant":
            out[-1]["tool_calls"] = calls
        else:
            out.append({"role": "assistant", "content": "", "tool_calls": calls})
    return out


def _content(pieces: list[Any]) -> Any:
    """A message's content: a string, or OpenAI-style parts when it holds images."""
    if all(isinstance(p, str) for p in pieces):
        return "".join(pieces)
    return [{"type": "text", "text": p} if isinstance(p, str) else p for p in pieces]


def tool_plan(req: MessagesRequest, tm: "TokenizerManager") -> ToolPlan:
    """The request's tools and tool_choice in the terms of the OpenAI route's ToolPlan."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description or "",
                "parameters": t.input_schema,
            },
        }
        for t in req.tools or []
    ]
    choice: Any = None
    parallel = None
    if req.tool_choice is not None:
        kind = req.tool_choice.type
        parallel = not req.tool_choice.disable_parallel_tool_use
        choice = {"auto": "auto", "any": "required", "none": "none"}.get(kind)
        if kind == "tool":
            if not req.tool_choice.name:
                raise ValueError("tool_choice of type 'tool' needs a name")
            choice = {"type": "function", "function": {"name": req.tool_choice.name}}
    return ToolPlan.from_request(tools or None, choice, parallel, tm.tool_parser)


def _image_url(source: ImageSource) -> str:
    if source.type == "url":
        if not source.url:
            raise ValueError("image source of type 'url' needs a 'url'")
        return source.url
    if not source.data or not source.media_type:
        raise ValueError("image source of type 'base64' needs 'media_type' and 'data'")
    return f"data:{source.media_type};base64,{source.data}"


def build_generate_request(
    req: MessagesRequest, tm: "TokenizerManager", plan: Optional[ToolPlan] = None
) -> GenerateReqInput:
    """The native request for a Messages request.

    A final assistant message is a prefill: the reply continues it (and does not repeat it).
    """
    plan = plan or tool_plan(req, tm)
    messages, images = to_openai_messages(req)
    prefill = ""
    last = messages[-1]
    if (
        last["role"] == "assistant"
        and "tool_calls" not in last
        and isinstance(last["content"], str)
    ):
        prefill = messages.pop()["content"]
    if not any(m["role"] in ("user", "tool") for m in messages):
        raise ValueError("messages must contain at least one 'user' message")
    prompt = tm.apply_chat_template(messages, plan.template_tools) + prefill
    params: dict[str, Any] = {"max_new_tokens": req.max_tokens, "temperature": req.temperature}
    forced = plan.grammar()
    if forced is not None:
        params["json_schema"] = forced
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
    out: GenerateOutput, stop_sequences: Optional[list[str]], has_calls: bool = False
) -> tuple[str, Optional[str]]:
    """(stop_reason, stop_sequence) of a finished native output."""
    finish = out.finish_reason
    if finish is not None and finish.type == "length":
        return "max_tokens", None
    if has_calls:
        return "tool_use", None
    matched = finish.matched if finish is not None else None
    if isinstance(matched, str) and stop_sequences and matched in stop_sequences:
        return "stop_sequence", matched
    return "end_turn", None


def _tool_use_block(call: ToolCall) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": call.id.replace("call_", "toolu_", 1),
        "name": call.name,
        "input": json.loads(call.arguments),
    }


def _message_response(
    req: MessagesRequest, tm: "TokenizerManager", plan: ToolPlan, out: GenerateOutput
) -> dict[str, Any]:
    text, calls = plan.parse(out.text)
    reason, sequence = stop_reason(out, req.stop_sequences, bool(calls))
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text or not calls else []
    content += [_tool_use_block(c) for c in calls]
    return {
        **_message_head(out, tm),
        "content": content,
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
    plan: ToolPlan,
    first: GenerateOutput,
    rest: AsyncGenerator[GenerateOutput, None],
) -> AsyncIterator[bytes]:
    """The documented event sequence: message_start, content_block_start, ping, deltas, stops;
    tool_use blocks (each with one input_json_delta) follow the text block."""
    for event in _opening_events(tm, first):
        yield event
    last, sent = first, 0
    splitter = _TextSplitter(plan)
    try:
        async for out in _chain(first, rest):
            last, delta, sent = out, out.text[sent:], len(out.text)
            delta = splitter.feed(delta)
            if delta:
                yield _text_delta(delta)
        _raise_if_aborted(last)
    except SERVING_ERRORS as e:
        # NOTE: the status line is already sent; the documented way to fail now is an error event.
        kind = "invalid_request_error" if status_for(e) == 400 else "overloaded_error"
        yield _sse("error", _error_body(str(e), kind))
        return
    finally:
        await rest.aclose()
    text, calls = splitter.finish()
    if text:
        yield _text_delta(text)
    for event in _closing_events(req, last, calls):
        yield event


class _TextSplitter:
    """The text a stream may send now, and at the end the rest and the tool calls."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.stream = plan.stream()
        self.forced = "" if plan.mode in ("required", "named") else None

    def feed(self, delta: str) -> str:
        if self.forced is not None:
            self.forced += delta
            return ""
        return self.stream.feed(delta) if self.stream is not None else delta

    def finish(self) -> tuple[str, list[ToolCall]]:
        if self.forced is not None:
            return self.plan.parse(self.forced)
        if self.stream is None:
            return "", []
        text, calls = self.stream.finish()
        return text, calls if self.plan.parallel else calls[:1]


def _text_delta(text: str) -> bytes:
    body = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    return _sse("content_block_delta", body)


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


def _closing_events(
    req: MessagesRequest, out: GenerateOutput, calls: list[ToolCall]
) -> list[bytes]:
    reason, sequence = stop_reason(out, req.stop_sequences, bool(calls))
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": sequence},
        "usage": {"output_tokens": out.completion_tokens},
    }
    events = [_sse("content_block_stop", {"type": "content_block_stop", "index": 0})]
    for i, call in enumerate(calls, start=1):
        block = {**_tool_use_block(call), "input": {}}
        events.append(
            _sse("content_block_start", {"type": "content_block_start", "index": i, "content_block": block})
        )
        delta = {"type": "input_json_delta", "partial_json": call.arguments}
        events.append(
            _sse("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
        )
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": i}))
    return events + [
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
