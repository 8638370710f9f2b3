"""Anthropic backend: Claude models through the anthropic SDK's Messages API."""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional, Union

from sglang.lang.backend.api_base import (
    ApiModelBackend,
    ApiRequest,
    ApiResult,
    ImagePart,
    StreamPiece,
    choice_schema,
    content_parts,
    finish_reason,
    import_sdk,
    reject_unsupported,
    require_env,
)
from sglang.lang.chat_template import ChatTemplate
from sglang.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from sglang.lang.ir import SglSamplingParams

SELECT_TOOL = "answer"
_ANTHROPIC_PARAMS = frozenset({"max_new_tokens", "stop", "temperature", "top_p", "top_k"})


class Anthropic(ApiModelBackend):
    """A Claude model behind the Anthropic Messages API (or a server speaking it, like ours).

    Parameters
    ----------
    model_name
        The model id, e.g. "claude-3-5-haiku-latest".
    chat_template
        A template name or ChatTemplate for the program text (default "claude").
    max_retries, retry_base_delay
        Rate-limit, overload and connection errors are retried max_retries times with
        exponential backoff starting at retry_base_delay seconds.
    **client_kwargs
        Passed to `anthropic.Anthropic`: api_key (default: ANTHROPIC_API_KEY), base_url, ...
        With a base_url and no key, the key "EMPTY" is sent.

    Notes
    -----
    System messages become `system`; images become base64 image blocks. An assistant turn
    with text before its gen is sent as a prefill, which the reply continues. `n`, penalties,
    `json_schema`, logprobs and constrained decoding raise ValueError; `select` is a forced
    tool call whose input is an enum of the choices.
    """

    api_name = "Anthropic"
    supports_prefill = True

    def __init__(
        self,
        model_name: str,
        chat_template: Optional[Union[str, ChatTemplate]] = None,
        max_retries: int = 5,
        retry_base_delay: float = 1.0,
        **client_kwargs: Any,
    ) -> None:
        super().__init__(model_name, chat_template, "claude", max_retries, retry_base_delay)
        anthropic = import_sdk("anthropic", "anthropic")
        _require_key(client_kwargs)
        client_kwargs.setdefault("max_retries", 0)  # NOTE: retries are ours (self.retry)
        self.client = anthropic.Anthropic(**client_kwargs)
        overloaded = getattr(anthropic, "OverloadedError", anthropic.RateLimitError)
        self.retryable_errors = (anthropic.RateLimitError, anthropic.APIConnectionError, overloaded)

    def check_params(self, params: SglSamplingParams) -> None:
        reject_unsupported(params, _ANTHROPIC_PARAMS, "The Anthropic API")

    def request_kwargs(self, request: ApiRequest) -> dict[str, Any]:
        """The SDK keyword arguments of `messages.create` for a request."""
        params = request.params
        system, messages = to_anthropic_messages(request.messages)
        prefill = request.prefill.rstrip()  # NOTE: the API rejects a prefill ending in spaces
        if prefill:
            messages.append({"role": "assistant", "content": prefill})
        kw: dict[str, Any] = {
            "model": self.model_name,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
        }
        if system:
            kw["system"] = system
        if params.stop_list():
            kw["stop_sequences"] = params.stop_list()
        # NOTE: sent as body fields: recent SDKs dropped these keyword arguments, not the API.
        sampling = {
            "temperature": params.temperature,
            "top_p": params.top_p if params.top_p != 1.0 else None,
            "top_k": params.top_k if params.top_k != -1 else None,
        }
        kw["extra_body"] = {k: v for k, v in sampling.items() if v is not None}
        return kw

    def call(self, request: ApiRequest) -> ApiResult:
        kw = self.request_kwargs(request)
        resp = self.with_retries(lambda: self.client.messages.create(**kw))
        text = "".join(b.text for b in resp.content if b.type == "text")
        return ApiResult(
            texts=[_after_prefill(request.prefill, text)],
            finish_reasons=[finish_reason(resp.stop_reason, resp.stop_sequence)],
            prompt_tokens=resp.usage.input_tokens,
            completion_tokens=resp.usage.output_tokens,
        )

    def select(
        self,
        s: Any,
        choices: list[str],
        temperature: float,
        choices_method: Optional[ChoicesSamplingMethod] = None,
    ) -> ChoicesDecision:
        """One of `choices`, by a forced call of a tool whose input schema is the choices' enum
        (the Messages API's structured output). `choices_method` is ignored; the meta info's
        `select_method` is "tool_use_enum". The text an open assistant turn holds before the
        select is not sent: the API takes no assistant prefill with a forced tool call."""
        request = self.select_request(s, choices, temperature)
        if request.messages and request.messages[-1]["role"] == "assistant":
            request.messages.pop()
        kw = self.request_kwargs(request)
        kw["tools"] = [
            {
                "name": SELECT_TOOL,
                "description": "Give the answer: exactly one of the allowed choices.",
                "input_schema": choice_schema(choices),
            }
        ]
        kw["tool_choice"] = {"type": "tool", "name": SELECT_TOOL}
        resp = self.with_retries(lambda: self.client.messages.create(**kw))
        calls = [b for b in resp.content if b.type == "tool_use" and b.name == SELECT_TOOL]
        result = ApiResult(
            texts=[""],
            finish_reasons=[finish_reason(resp.stop_reason, resp.stop_sequence)],
            prompt_tokens=resp.usage.input_tokens,
            completion_tokens=resp.usage.output_tokens,
        )
        self.token_usage.add(result.prompt_tokens, result.completion_tokens)
        reply = (
            calls[0].input if calls else "".join(b.text for b in resp.content if b.type == "text")
        )
        return self.select_decision(reply, choices, "tool_use_enum", result)

    def call_stream(self, request: ApiRequest) -> Iterator[StreamPiece]:
        kw = self.request_kwargs(request)
        stream = self.with_retries(lambda: self.client.messages.create(stream=True, **kw))
        first = True
        for event in stream:
            piece = _stream_piece(event)
            if first and piece.text:
                piece.text, first = _after_prefill(request.prefill, piece.text), False
            yield piece


def to_anthropic_messages(
    messages: list[dict[str, Any]],
) -> tuple[str, list[dict[str, Any]]]:
    """OpenAI-style messages as (system text, Anthropic messages with text and image blocks)."""
    system = "".join(_text_only(m["content"]) for m in messages if m["role"] == "system")
    converted = []
    for m in messages:
        if m["role"] == "system":
            continue
        parts = content_parts(m["content"])
        if all(isinstance(p, str) for p in parts):
            converted.append({"role": m["role"], "content": "".join(parts)})
        else:
            converted.append({"role": m["role"], "content": [_block(p) for p in parts]})
    return system, converted


def _text_only(content: Any) -> str:
    parts = content_parts(content)
    if any(isinstance(p, ImagePart) for p in parts):
        raise ValueError("the Anthropic API takes no images in the system prompt")
    return "".join(parts)  # type: ignore[arg-type]


def _block(part: Union[str, ImagePart]) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    source = {"type": "base64", "media_type": part.media_type, "data": part.data}
    return {"type": "image", "source": source}


def _after_prefill(prefill: str, text: str) -> str:
    """The reply as it follows the prefill the program holds: the API was sent the prefill
    without its trailing whitespace, so a reply that opens with whitespace repeats it."""
    if prefill and prefill != prefill.rstrip():
        return text.lstrip()
    return text


def _stream_piece(event: Any) -> StreamPiece:
    kind = getattr(event, "type", None)
    if kind == "message_start":
        return StreamPiece(prompt_tokens=event.message.usage.input_tokens)
    if kind == "content_block_delta" and getattr(event.delta, "type", None) == "text_delta":
        return StreamPiece(text=event.delta.text)
    if kind == "message_delta":
        reason = finish_reason(event.delta.stop_reason, event.delta.stop_sequence)
        return StreamPiece(finish_reason=reason, completion_tokens=event.usage.output_tokens)
    return StreamPiece()


def _require_key(client_kwargs: dict[str, Any]) -> None:
    if client_kwargs.get("api_key") or client_kwargs.get("auth_token"):
        return
    if os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN"):
        return
    if client_kwargs.get("base_url") or os.environ.get("ANTHROPIC_BASE_URL"):
        client_kwargs["api_key"] = "EMPTY"  # a local server that checks no key
        return
    require_env(("ANTHROPIC_API_KEY",), "The Anthropic backend")
