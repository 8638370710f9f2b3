"""OpenAI-compatible API: request models, /v1/models, /v1/completions, /v1/chat/completions."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sglang.srt.entrypoints.field_compat import (
    CHAT_DEFAULT_ONLY,
    COMPLETION_DEFAULT_ONLY,
    pop_default_only,
)
from sglang.srt.entrypoints.http_common import (
    SERVING_ERRORS,
    SSE_DONE,
    RequestError,
    error_response,
    exception_response,
    first_output,
    json_response,
    parse_body,
    read_json,
    sse,
    sse_error,
)
from sglang.srt.function_call.parsers import ToolCall
from sglang.srt.function_call.tool_choice import ToolPlan
from sglang.srt.managers.chat_messages import message_images
from sglang.srt.managers.io_struct import GenerateOutput, GenerateReqInput, LogprobEntry
from sglang.srt.reasoning_parser import ReasoningStream, split_reasoning

if TYPE_CHECKING:
    from sglang.srt.managers.tokenizer_manager import TokenizerManager

GetTokenizerManager = Callable[[], "TokenizerManager"]


# -------------------------------------------------------------------- protocol models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _SamplingFields(_Strict):
    """Fields both endpoints share, including the SGLang/vLLM extras (top_k, regex, ...)."""

    model: Optional[str] = None
    temperature: Optional[float] = Field(None, ge=0)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    seed: Optional[int] = None
    user: Optional[str] = None  # identifies the end user to the operator; not used here
    logit_bias: Optional[dict[str, float]] = None
    custom_params: Optional[dict[str, Any]] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    min_tokens: Optional[int] = Field(None, ge=0)
    stop_token_ids: Optional[list[int]] = None
    stop_regex: Optional[Union[str, list[str]]] = None
    ignore_eos: Optional[bool] = None
    skip_special_tokens: Optional[bool] = None
    no_stop_trim: Optional[bool] = None
    regex: Optional[str] = None
    ebnf: Optional[str] = None
    json_schema: Optional[Union[str, dict[str, Any]]] = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: Optional[dict[str, Any]] = None
    # type structural_tag (SGLang's): see constrained/structural_tag.py
    structures: Optional[list[dict[str, Any]]] = None
    triggers: Optional[list[str]] = None


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = Field(16, ge=0)
    logprobs: Optional[int] = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: Optional[int] = None
    suffix: Optional[str] = None
    response_format: Optional[ResponseFormat] = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[dict[str, Any]]
    max_tokens: Optional[int] = Field(None, ge=0)
    max_completion_tokens: Optional[int] = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    store: Optional[bool] = None
    metadata: Optional[dict[str, Any]] = None
    service_tier: Optional[str] = None
    # SGLang's: split reasoning (--reasoning-parser) into reasoning_content; stream it as it comes
    separate_reasoning: bool = True
    stream_reasoning: bool = True
    chat_template_kwargs: Optional[dict[str, Any]] = None


# SGLang/OpenAI fields these routes accept only at their default (see field_compat).
_DEFAULT_ONLY = {CompletionRequest: COMPLETION_DEFAULT_ONLY, ChatCompletionRequest: CHAT_DEFAULT_ONLY}


# -------------------------------------------------------------------- request -> native


def _reject_unsupported(req: _SamplingFields) -> None:
    if getattr(req, "suffix", None):
        raise RequestError("suffix is not supported (the served model does no infilling)", "suffix")
    best_of = getattr(req, "best_of", None)
    if best_of is not None and best_of != req.n:
        raise RequestError(f"best_of={best_of} is not supported (only best_of == n)", "best_of")
    if getattr(req, "store", None):
        raise RequestError("store is not supported (completions are not stored)", "store")


def _sampling_dict(req: _SamplingFields, max_new_tokens: int) -> dict[str, Any]:
    fields = {
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": req.min_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "n": req.n,
        "stop": req.stop,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "seed": req.seed,
        "top_k": req.top_k,
        "min_p": req.min_p,
        "repetition_penalty": req.repetition_penalty,
        "stop_token_ids": req.stop_token_ids,
        "stop_regex": req.stop_regex,
        "ignore_eos": req.ignore_eos,
        "skip_special_tokens": req.skip_special_tokens,
        "no_stop_trim": req.no_stop_trim,
        "regex": req.regex,
        "ebnf": req.ebnf,
        "json_schema": req.json_schema,
        "logit_bias": req.logit_bias,
        "custom_params": req.custom_params,
    }
    params = {k: v for k, v in fields.items() if v is not None}
    fmt = getattr(req, "response_format", None)
    schema = _response_format_schema(fmt)
    if schema is not None or (fmt is not None and fmt.type == "structural_tag"):
        if req.regex or req.ebnf or req.json_schema:
            raise RequestError(
                "response_format cannot be combined with regex/ebnf/json_schema", "response_format"
            )
    if schema is not None:
        params["json_schema"] = schema
    elif fmt is not None and fmt.type == "structural_tag":
        tag = {"type": "structural_tag", "structures": fmt.structures, "triggers": fmt.triggers}
        params["structural_tag"] = json.dumps(tag)
    return params


def _completion_prompts(prompt: Any) -> tuple[Optional[list[str]], Optional[list[list[int]]]]:
    """(texts, None) or (None, token id lists)."""
    if isinstance(prompt, str):
        return [prompt], None
    if not prompt:
        raise RequestError("prompt is empty", "prompt")
    if isinstance(prompt[0], str):
        return list(prompt), None
    if isinstance(prompt[0], int):
        return None, [list(prompt)]
    return None, [list(p) for p in prompt]


def _response_format_schema(fmt: Optional[ResponseFormat]) -> Optional[str]:
    if fmt is None or fmt.type in ("text", "structural_tag"):
        return None
    if fmt.type == "json_object":
        return json.dumps({"type": "object"})
    spec = fmt.json_schema or {}
    schema = spec.get("schema")
    if not isinstance(schema, (dict, bool)):
        raise RequestError(
            "response_format.json_schema.schema must be a JSON schema object",
            "response_format.json_schema.schema",
        )
    return json.dumps(schema)


def _chat_sampling(tm: TokenizerManager, req: ChatCompletionRequest) -> dict[str, Any]:
    max_tokens = (
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    )
    # Unset: up to the context length (the tokenizer manager clips it to what remains).
    return _sampling_dict(req, max_tokens if max_tokens is not None else tm.context_len)


# -------------------------------------------------------------------- output -> OpenAI


def _finish_reason(out: GenerateOutput) -> tuple[Optional[str], Any]:
    reason = out.finish_reason
    if reason is None:
        return None, None
    return reason.type, reason.matched


def _usage(outs: list[GenerateOutput], n: int) -> dict[str, Any]:
    """Prompt tokens count once per prompt (not per sample); completion tokens per sample."""
    prompt = sum(o.prompt_tokens for o in outs[::n])
    completion = sum(o.completion_tokens for o in outs)
    cached = sum(o.cached_tokens for o in outs[::n])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _entry_text(tm: TokenizerManager, entry: LogprobEntry) -> str:
    return entry.text if entry.text is not None else tm.token_text(entry.token_id)


class _CompletionLogprobs:
    """Builds the completions `logprobs` object, possibly a piece at a time (streaming)."""

    def __init__(self, tm: TokenizerManager, offset: int) -> None:
        self.tm = tm
        self.offset = offset

    def build(self, entries: list, tops: list) -> dict[str, Any]:
        out: dict[str, list] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for k, entry in enumerate(entries):
            text = _entry_text(self.tm, entry)
            out["tokens"].append(text)
            out["token_logprobs"].append(entry.logprob)
            out["text_offset"].append(self.offset)
            self.offset += len(text)
            top = tops[k] if k < len(tops) else None
            out["top_logprobs"].append(
                None if top is None else {_entry_text(self.tm, t): t.logprob for t in top}
            )
        return out


def _chat_logprobs(tm: TokenizerManager, entries: list, tops: list) -> list[dict[str, Any]]:
    content = []
    for k, entry in enumerate(entries):
        item = _chat_token(tm, entry)
        top = tops[k] if k < len(tops) and tops[k] is not None else []
        item["top_logprobs"] = [_chat_token(tm, t) for t in top]
        content.append(item)
    return content


def _chat_token(tm: TokenizerManager, entry: LogprobEntry) -> dict[str, Any]:
    text = _entry_text(tm, entry)
    return {"token": text, "logprob": entry.logprob, "bytes": list(text.encode("utf-8"))}


def _as_list(first: Any) -> list[GenerateOutput]:
    return first if isinstance(first, list) else [first]


# -------------------------------------------------------------------- /v1/completions


class _OpenAICall:
    """What completions and chat calls share: identity, the final response and SSE chunks."""

    OBJECT = ""  # the response's "object"
    CHUNK_OBJECT = ""  # a stream chunk's "object"
    ID_PREFIX = ""

    def __init__(self, tm: TokenizerManager, req: Any) -> None:
        _reject_unsupported(req)
        self.tm, self.req = tm, req
        self.id = f"{self.ID_PREFIX}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = req.model or tm.served_model_name

    def choice(self, index: int, out: GenerateOutput) -> dict[str, Any]:
        raise NotImplementedError()

    def response(self, outs: list[GenerateOutput]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.OBJECT,
            "created": self.created,
            "model": self.model,
            "choices": [self.choice(k, o) for k, o in enumerate(outs)],
            "usage": _usage(outs, self.req.n),
        }

    def chunk(self, choices: list[dict[str, Any]], usage: Optional[dict] = None) -> bytes:
        body = {
            "id": self.id,
            "object": self.CHUNK_OBJECT,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return sse(body)


class _CompletionCall(_OpenAICall):
    """One /v1/completions request: builds the native input and shapes the outputs."""

    OBJECT = CHUNK_OBJECT = "text_completion"
    ID_PREFIX = "cmpl"

    def __init__(self, tm: TokenizerManager, req: CompletionRequest) -> None:
        super().__init__(tm, req)
        self.texts, self.ids = _completion_prompts(req.prompt)
        max_tokens = req.max_tokens if req.max_tokens is not None else tm.context_len
        want_lp = req.logprobs is not None
        self.native = GenerateReqInput(
            text=self.texts,
            input_ids=self.ids,
            sampling_params=_sampling_dict(req, max_tokens),
            return_logprob=want_lp,
            logprob_start_len=0 if (want_lp and req.echo) else -1,
            top_logprobs_num=req.logprobs or 0,
            return_text_in_logprobs=True,
            stream=req.stream,
        )

    def prompt_text(self, index: int) -> str:
        i = index // self.req.n
        if self.texts is not None:
            return self.texts[i]
        assert self.ids is not None
        return self.tm.tokenizer.decode(self.ids[i])

    def logprob_parts(self, out: GenerateOutput, with_prompt: bool) -> tuple[list, list]:
        entries = list(out.output_token_logprobs)
        tops = list(out.output_top_logprobs)
        if with_prompt:
            entries = list(out.input_token_logprobs) + entries
            tops = list(out.input_top_logprobs) + tops
        return entries, tops

    def choice(self, index: int, out: GenerateOutput) -> dict[str, Any]:
        prefix = self.prompt_text(index) if self.req.echo else ""
        finish, matched = _finish_reason(out)
        logprobs = None
        if self.req.logprobs is not None:
            start = 0 if self.req.echo else len(self.prompt_text(index))
            logprobs = _CompletionLogprobs(self.tm, start).build(
                *self.logprob_parts(out, self.req.echo)
            )
        return {
            "index": index,
            "text": prefix + out.text,
            "logprobs": logprobs,
            "finish_reason": finish,
            "matched_stop": matched,
        }

    async def stream(self, first: Any, gen: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        sent_text: dict[int, int] = {}
        sent_lp: dict[int, int] = {}
        builders: dict[int, _CompletionLogprobs] = {}
        finals: dict[int, GenerateOutput] = {}
        try:
            async for out in _chain(first, gen):
                k = out.index or 0
                piece = self._stream_choice(k, out, sent_text, sent_lp, builders)
                if out.finish_reason is not None:
                    finals[k] = out
                if piece is not None:
                    yield self.chunk([piece])
            if self.req.stream_options and self.req.stream_options.include_usage:
                outs = [finals[k] for k in sorted(finals)]
                yield self.chunk([], _usage(outs, self.req.n))
        except (ValueError, RuntimeError) as e:
            yield sse_error(e)
        yield SSE_DONE

    def _stream_choice(
        self, k: int, out: GenerateOutput, sent_text: dict, sent_lp: dict, builders: dict
    ) -> Optional[dict[str, Any]]:
        first_time = k not in sent_text
        delta = out.text[sent_text.get(k, 0) :]
        sent_text[k] = len(out.text)
        if first_time and self.req.echo:
            delta = self.prompt_text(k) + delta
        finish, matched = _finish_reason(out)
        logprobs = None
        if self.req.logprobs is not None:
            entries, tops = self.logprob_parts(out, self.req.echo)
            done = sent_lp.get(k, 0)
            sent_lp[k] = len(entries)
            if k not in builders:
                builders[k] = _CompletionLogprobs(
                    self.tm, 0 if self.req.echo else len(self.prompt_text(k))
                )
            logprobs = builders[k].build(entries[done:], tops[done:])
        if not delta and finish is None and not (logprobs and logprobs["tokens"]):
            return None
        return {
            "index": k,
            "text": delta,
            "logprobs": logprobs,
            "finish_reason": finish,
            "matched_stop": matched,
        }


# -------------------------------------------------------------------- /v1/chat/completions


class _ChatCall(_OpenAICall):
    """One /v1/chat/completions request: tools and reasoning shape its prompt and outputs."""

    OBJECT = "chat.completion"
    CHUNK_OBJECT = "chat.completion.chunk"
    ID_PREFIX = "chatcmpl"

    def __init__(self, tm: TokenizerManager, req: ChatCompletionRequest) -> None:
        super().__init__(tm, req)
        if req.top_logprobs is not None and not req.logprobs:
            raise RequestError("top_logprobs requires logprobs: true", "top_logprobs")
        try:
            self.tools = ToolPlan.from_request(
                req.tools, req.tool_choice, req.parallel_tool_calls, tm.tool_parser
            )
        except ValueError as e:
            raise RequestError(str(e), "tools" if "tools[" in str(e) else "tool_choice") from None
        self.reasoning = tm.reasoning_format if req.separate_reasoning else None
        prompt = tm.apply_chat_template(
            req.messages, self.tools.template_tools, req.chat_template_kwargs
        )
        params = _chat_sampling(tm, req)
        forced = self.tools.grammar()
        if forced is not None:
            if any(k in params for k in ("regex", "ebnf", "json_schema")):
                raise RequestError(
                    f"tool_choice {self.tools.mode!r} forces a call with its own grammar; it "
                    "cannot be combined with regex/ebnf/json_schema/response_format",
                    "tool_choice",
                )
            params["json_schema"] = forced
        images = message_images(req.messages)
        self.native = GenerateReqInput(
            text=[prompt],
            sampling_params=params,
            return_logprob=req.logprobs,
            top_logprobs_num=req.top_logprobs or 0,
            return_text_in_logprobs=True,
            stream=req.stream,
            image_data=[images] if images else None,  # a batch of one prompt
        )

    def logprobs(self, out: GenerateOutput, start: int = 0) -> Optional[dict[str, Any]]:
        if not self.req.logprobs:
            return None
        entries = out.output_token_logprobs[start:]
        tops = out.output_top_logprobs[start:]
        return {"content": _chat_logprobs(self.tm, entries, tops)}

    def message(self, text: str) -> tuple[dict[str, Any], bool]:
        """The assistant message of a whole output, and whether it calls tools."""
        reasoning = None
        if self.reasoning is not None:
            reasoning, text = split_reasoning(self.reasoning, text)
        content, calls = self.tools.parse(text)
        # As OpenAI: a reply that only calls tools has null content.
        message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
        if self.reasoning is not None:
            message["reasoning_content"] = reasoning or None
        if calls:
            message["tool_calls"] = [c.to_openai() for c in calls]
        return message, bool(calls)

    def choice(self, index: int, out: GenerateOutput) -> dict[str, Any]:
        finish, matched = _finish_reason(out)
        message, has_calls = self.message(out.text)
        return {
            "index": index,
            "message": message,
            "logprobs": self.logprobs(out),
            "finish_reason": "tool_calls" if has_calls and finish == "stop" else finish,
            "matched_stop": matched,
        }

    async def stream(self, first: Any, gen: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        streams: dict[int, _ChoiceStream] = {}
        finals: dict[int, GenerateOutput] = {}
        try:
            async for out in _chain(first, gen):
                k = out.index or 0
                if k not in streams:
                    streams[k] = _ChoiceStream(self, k)
                    role = {"role": "assistant", "content": ""}
                    yield self.chunk(
                        [{"index": k, "delta": role, "logprobs": None, "finish_reason": None}]
                    )
                for piece in streams[k].pieces(out):
                    yield self.chunk([piece])
                if out.finish_reason is not None:
                    finals[k] = out
            if self.req.stream_options and self.req.stream_options.include_usage:
                outs = [finals[k] for k in sorted(finals)]
                yield self.chunk([], _usage(outs, self.req.n))
        except (ValueError, RuntimeError) as e:
            yield sse_error(e)
        yield SSE_DONE


class _ChoiceStream:
    """The deltas of one streamed choice: reasoning, content, and tool calls as OpenAI sends
    them (each call in one delta, with its index, id, name and complete arguments)."""

    def __init__(self, call: _ChatCall, index: int) -> None:
        self.call, self.index = call, index
        self.sent_text = 0
        self.sent_lp = 0
        fmt = call.reasoning
        self.reasoning = ReasoningStream(fmt) if fmt is not None else None
        self.held_reasoning = ""  # stream_reasoning false: sent in one piece when it ends
        self.tool_stream = call.tools.stream()
        self.forced = call.tools.mode in ("required", "named")
        self.forced_text = ""

    def pieces(self, out: GenerateOutput) -> list[dict[str, Any]]:
        delta_text = out.text[self.sent_text :]
        self.sent_text = len(out.text)
        reasoning, content = self._split(delta_text)
        calls: list[ToolCall] = []
        finish, matched = _finish_reason(out)
        if finish is not None:
            more_reasoning, more_content, calls = self._finish()
            reasoning, content = reasoning + more_reasoning, content + more_content
        logprobs = self.call.logprobs(out, self.sent_lp)
        self.sent_lp = len(out.output_token_logprobs)
        pieces = []
        delta: dict[str, Any] = {}
        if reasoning:
            delta["reasoning_content"] = reasoning
        if content or (logprobs and logprobs["content"]):
            delta["content"] = content
        if delta or (logprobs and logprobs["content"]):
            pieces.append(self._piece(delta, logprobs))
        if calls:
            tool_calls = [c.to_openai(i) for i, c in enumerate(calls)]
            pieces.append(self._piece({"tool_calls": tool_calls}, None))
        if finish is not None:
            finish = "tool_calls" if calls and finish == "stop" else finish
            last = self._piece({}, None, finish)
            last["matched_stop"] = matched
            pieces.append(last)
        return pieces

    def _piece(self, delta: dict, logprobs: Any, finish: Optional[str] = None) -> dict[str, Any]:
        return {"index": self.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def _split(self, text: str) -> tuple[str, str]:
        """(reasoning, content) safe to send now."""
        reasoning, content = "", text
        if self.reasoning is not None:
            reasoning, content = self.reasoning.feed(text)
            if not self.call.req.stream_reasoning:
                self.held_reasoning += reasoning
                reasoning = ""
                if self.reasoning.state == "content" and self.held_reasoning:
                    reasoning, self.held_reasoning = self.held_reasoning, ""
        return reasoning, self._content(content)

    def _content(self, content: str) -> str:
        if self.forced:
            self.forced_text += content
            return ""
        if self.tool_stream is not None:
            return self.tool_stream.feed(content)
        return content

    def _finish(self) -> tuple[str, str, list[ToolCall]]:
        reasoning, content = "", ""
        if self.reasoning is not None:
            reasoning, content = self.reasoning.finish()
            reasoning, self.held_reasoning = self.held_reasoning + reasoning, ""
        content = self._content(content)
        if self.forced:
            rest, calls = self.call.tools.parse(self.forced_text)
            return reasoning, content + rest, calls
        if self.tool_stream is not None:
            rest, calls = self.tool_stream.finish()
            calls = calls if self.call.tools.parallel else calls[:1]
            return reasoning, content + rest, calls
        return reasoning, content, []


async def _chain(first: Any, gen: AsyncIterator[Any]) -> AsyncIterator[GenerateOutput]:
    """The primed first output (dict or list) followed by the rest of the generator."""
    try:
        for out in _as_list(first):
            yield out
        async for more in gen:
            for out in _as_list(more):
                yield out
    finally:
        await gen.aclose()


# -------------------------------------------------------------------- routes


def add_openai_routes(app: FastAPI, get_tokenizer_manager: GetTokenizerManager) -> None:
    """Register /v1/models, /v1/completions and /v1/chat/completions on the app."""

    @app.get("/v1/models")
    async def list_models() -> Response:
        return json_response({"object": "list", "data": [_model_card(get_tokenizer_manager())]})

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> Response:
        tm = get_tokenizer_manager()
        if model_id != tm.served_model_name:
            return error_response(
                f"the model {model_id!r} does not exist (this server serves "
                f"{tm.served_model_name!r})",
                404,
                "model",
            )
        return json_response(_model_card(tm))

    @app.post("/v1/tokenize")
    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        try:
            req = parse_body(TokenizeRequest, await read_json(request))
            return json_response(_tokenize(get_tokenizer_manager(), req))
        except ValueError as e:
            return exception_response(e)

    @app.post("/v1/detokenize")
    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        try:
            req = parse_body(DetokenizeRequest, await read_json(request))
            return json_response(_detokenize(get_tokenizer_manager(), req))
        except ValueError as e:
            return exception_response(e)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _serve(get_tokenizer_manager(), request, CompletionRequest, _CompletionCall)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _serve(get_tokenizer_manager(), request, ChatCompletionRequest, _ChatCall)


def _model_card(tm: TokenizerManager) -> dict[str, Any]:
    return {
        "id": tm.served_model_name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "sglang",
        "root": tm.served_model_name,
        "max_model_len": tm.context_len,
    }


class TokenizeRequest(_Strict):
    model: Optional[str] = None
    prompt: Union[str, list[str]]
    add_special_tokens: bool = True


class DetokenizeRequest(_Strict):
    model: Optional[str] = None
    tokens: Union[list[int], list[list[int]]]


def _tokenize(tm: TokenizerManager, req: TokenizeRequest) -> dict[str, Any]:
    """{"tokens", "count", "max_model_len"}; lists of them for a list of prompts."""
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    ids = [list(tm.tokenizer.encode(p, add_special_tokens=req.add_special_tokens)) for p in prompts]
    if isinstance(req.prompt, str):
        return {"tokens": ids[0], "count": len(ids[0]), "max_model_len": tm.context_len}
    return {"tokens": ids, "count": [len(i) for i in ids], "max_model_len": tm.context_len}


def _detokenize(tm: TokenizerManager, req: DetokenizeRequest) -> dict[str, Any]:
    single = not req.tokens or isinstance(req.tokens[0], int)
    rows: list[list[int]] = [req.tokens] if single else req.tokens  # type: ignore[list-item]
    for row in rows:
        tm.builder.check_vocab(row, "tokens")
    texts = [tm.tokenizer.decode(row) for row in rows]
    return {"text": texts[0] if single else texts}


async def _serve(tm: TokenizerManager, request: Request, model: type, call_type: type) -> Response:
    try:
        body = await read_json(request)
        if isinstance(body, dict):
            body = pop_default_only(body, _DEFAULT_ONLY[model])
        req = parse_body(model, body)
        call = call_type(tm, req)
        gen = tm.generate_request(call.native, request)
        first = await first_output(gen)
    except SERVING_ERRORS as e:
        return exception_response(e)
    if req.stream:
        return StreamingResponse(call.stream(first, gen), media_type="text/event-stream")
    await gen.aclose()
    return json_response(call.response(_as_list(first)))
