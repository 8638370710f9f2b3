"""LiteLLM backend: any provider LiteLLM routes to, through `litellm.completion`."""

from __future__ import annotations

import json
from typing import Any, Iterator, Optional, Union

from sglang.lang.backend.api_base import (
    ApiModelBackend,
    ApiRequest,
    ApiResult,
    StreamPiece,
    finish_reason,
    import_sdk,
    reject_unsupported,
)
from sglang.lang.chat_template import ChatTemplate
from sglang.lang.ir import SglSamplingParams

_LITELLM_PARAMS = frozenset(
    {
        "max_new_tokens",
        "n",
        "stop",
        "temperature",
        "top_p",
        "top_k",
        "frequency_penalty",
        "presence_penalty",
        "json_schema",
    }
)


class LiteLLM(ApiModelBackend):
    """A chat model of any provider LiteLLM supports ("openai/gpt-4o", "anthropic/claude-...").

    Parameters
    ----------
    model_name
        A LiteLLM model string, "<provider>/<model>".
    chat_template
        A template name or ChatTemplate for the program text (default "default").
    max_retries, retry_base_delay
        Rate-limit, timeout and connection errors are retried max_retries times with
        exponential backoff starting at retry_base_delay seconds.
    **kwargs
        Passed to every `litellm.completion` call: api_base, api_key, timeout, ...

    Notes
    -----
    Messages are sent in the OpenAI format, which LiteLLM converts for each provider (images
    included). A parameter the provider lacks (such as top_k on OpenAI) fails with LiteLLM's
    own error. Logprobs and constrained decoding raise ValueError; `select` sends a JSON
    schema response_format whose "choice" is an enum of the choices.
    """

    api_name = "LiteLLM"

    def __init__(
        self,
        model_name: str,
        chat_template: Optional[Union[str, ChatTemplate]] = None,
        max_retries: int = 5,
        retry_base_delay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name, chat_template, "default", max_retries, retry_base_delay)
        self.litellm = import_sdk("litellm", "litellm")
        self.completion_kwargs = kwargs
        if not kwargs.get("api_key"):
            _require_provider_key(self.litellm, model_name)
        self.retryable_errors = (
            self.litellm.RateLimitError,
            self.litellm.APIConnectionError,
            self.litellm.Timeout,
        )

    def check_params(self, params: SglSamplingParams) -> None:
        reject_unsupported(params, _LITELLM_PARAMS, "The LiteLLM backend")

    def request_kwargs(self, request: ApiRequest) -> dict[str, Any]:
        """The keyword arguments of `litellm.completion` for a request."""
        params = request.params
        kw: dict[str, Any] = {
            **self.completion_kwargs,
            "model": self.model_name,
            "messages": request.messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
        }
        optional = {
            "stop": params.stop_list() or None,
            "top_p": params.top_p if params.top_p != 1.0 else None,
            "top_k": params.top_k if params.top_k != -1 else None,
            "n": params.n if params.n != 1 else None,
            "frequency_penalty": params.frequency_penalty or None,
            "presence_penalty": params.presence_penalty or None,
        }
        kw.update({k: v for k, v in optional.items() if v is not None})
        if params.json_schema:
            schema = {"name": "output", "schema": json.loads(params.json_schema)}
            kw["response_format"] = {"type": "json_schema", "json_schema": schema}
        return kw

    def call(self, request: ApiRequest) -> ApiResult:
        kw = self.request_kwargs(request)
        resp = self.with_retries(lambda: self.litellm.completion(**kw))
        choices = sorted(resp.choices, key=lambda c: c.index)
        usage = getattr(resp, "usage", None)
        return ApiResult(
            texts=[c.message.content or "" for c in choices],
            finish_reasons=[finish_reason(c.finish_reason) for c in choices],
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )

    def call_stream(self, request: ApiRequest) -> Iterator[StreamPiece]:
        kw = self.request_kwargs(request)
        kw.update(stream=True, stream_options={"include_usage": True})
        for chunk in self.with_retries(lambda: self.litellm.completion(**kw)):
            piece = StreamPiece()
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                piece.prompt_tokens = usage.prompt_tokens
                piece.completion_tokens = usage.completion_tokens
            if chunk.choices:
                choice = chunk.choices[0]
                piece.text = choice.delta.content or ""
                if choice.finish_reason:
                    piece.finish_reason = finish_reason(choice.finish_reason)
            yield piece


def _require_provider_key(litellm: Any, model_name: str) -> None:
    """Fail early, naming the environment variables the provider's key is read from."""
    try:
        report = litellm.validate_environment(model=model_name)
    except Exception:  # an unknown provider: let litellm.completion report it
        return
    missing = report.get("missing_keys") or []
    if not report.get("keys_in_environment", True) and missing:
        raise ValueError(
            f"The LiteLLM backend for {model_name!r} needs an API key: set the "
            f"{' or '.join(missing)} environment variable, or pass api_key="
        )
