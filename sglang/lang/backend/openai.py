"""OpenAI backend: OpenAI, Azure, or any OpenAI-compatible server (ours included)."""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

from sglang.lang.backend.api_base import (
    ApiModelBackend,
    ApiRequest,
    ApiResult,
    StreamPiece,
    finish_reason,
    import_sdk,
    reject_unsupported,
    require_env,
)
from sglang.lang.chat_template import ChatTemplate
from sglang.lang.choices import ChoicesDecision, ChoicesSamplingMethod, mean_logprob
from sglang.lang.ir import SglSamplingParams

if TYPE_CHECKING:
    from sglang.lang.interpreter import StreamExecutor

logger = logging.getLogger(__name__)

REASONING_MODEL_PREFIXES = ("o1", "o3", "o4", "gpt-5")
COMPLETION_MODEL_NAMES = ("davinci-002", "babbage-002")

_OPENAI_PARAMS = frozenset(
    {
        "max_new_tokens",
        "n",
        "stop",
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "json_schema",
        "return_logprob",
        "top_logprobs_num",
        "return_text_in_logprobs",
    }
)


def is_reasoning_model(model_name: str) -> bool:
    """o1/o3/o4/gpt-5 models take max_completion_tokens and only the default temperature."""
    return model_name.rsplit("/", 1)[-1].startswith(REASONING_MODEL_PREFIXES)


def is_completion_model(model_name: str) -> bool:
    """`*-instruct` models and the base completion models use /v1/completions."""
    base = model_name.rsplit("/", 1)[-1]
    return base.endswith("-instruct") or base in COMPLETION_MODEL_NAMES


class OpenAI(ApiModelBackend):
    """A model behind the OpenAI API, Azure OpenAI, or any OpenAI-compatible server.

    Parameters
    ----------
    model_name
        The model id, e.g. "gpt-4o-mini" or the served name of an OpenAI-compatible server.
    is_chat_model
        Chat models get `messages` (/v1/chat/completions); completion models get the program
        text (/v1/completions). None: `*-instruct`, davinci-002 and babbage-002 are completion
        models, every other name a chat model.
    chat_template
        A template name or ChatTemplate; formats roles into the text of completion models.
    is_azure
        Use `openai.AzureOpenAI` (client_kwargs then take azure_endpoint, api_version, ...).
    max_retries, retry_base_delay
        Rate-limit and connection errors are retried max_retries times, waiting
        retry_base_delay * 2**attempt seconds (at most 30) before each retry.
    **client_kwargs
        Passed to the SDK client: api_key (default: OPENAI_API_KEY), base_url, timeout, ...
        With a base_url and no key, the key "EMPTY" is sent (local servers need none).

    Notes
    -----
    `select` scores choices on completion models (prompt logprobs with `echo`); on chat models
    it asks for a JSON response_format whose "choice" is an enum of the choices. `regex`, `grammar`, `top_k`, `min_p`, `min_tokens`, `stop_token_ids`
    and `ignore_eos` raise ValueError. `json_schema` is sent as response_format (chat models).
    `token_usage` sums the usage of every call.
    """

    api_name = "OpenAI"

    def __init__(
        self,
        model_name: str,
        is_chat_model: Optional[bool] = None,
        chat_template: Optional[Union[str, ChatTemplate]] = None,
        is_azure: bool = False,
        max_retries: int = 5,
        retry_base_delay: float = 1.0,
        **client_kwargs: Any,
    ) -> None:
        super().__init__(model_name, chat_template, "default", max_retries, retry_base_delay)
        openai = import_sdk("openai", "openai")
        self.is_chat_model = (
            not is_completion_model(model_name) if is_chat_model is None else is_chat_model
        )
        self.is_reasoning = is_reasoning_model(model_name)
        self.retryable_errors = (openai.RateLimitError, openai.APIConnectionError)
        client_kwargs.setdefault("max_retries", 0)  # NOTE: retries are ours (self.retry)
        if is_azure:
            _require_azure_key(client_kwargs)
            self.client = openai.AzureOpenAI(**client_kwargs)
        else:
            _require_openai_key(client_kwargs)
            self.client = openai.OpenAI(**client_kwargs)

    def check_params(self, params: SglSamplingParams) -> None:
        reject_unsupported(params, _OPENAI_PARAMS, "The OpenAI API")
        if params.json_schema and not self.is_chat_model:
            raise ValueError(
                "json_schema needs a chat model on the OpenAI backend "
                f"({self.model_name!r} is a completion model)"
            )

    def request_kwargs(self, params: SglSamplingParams) -> dict[str, Any]:
        """The SDK keyword arguments for a gen's sampling parameters."""
        reasoning_chat = self.is_reasoning and self.is_chat_model
        kw: dict[str, Any] = {"model": self.model_name}
        kw["max_completion_tokens" if reasoning_chat else "max_tokens"] = params.max_new_tokens
        if not self.is_reasoning or params.temperature != 1.0:
            kw["temperature"] = params.temperature
        optional = {
            "stop": params.stop_list() or None,
            "top_p": params.top_p if params.top_p != 1.0 else None,
            "frequency_penalty": params.frequency_penalty or None,
            "presence_penalty": params.presence_penalty or None,
            "n": params.n if params.n != 1 else None,
        }
        kw.update({k: v for k, v in optional.items() if v is not None})
        if params.json_schema:
            schema = {"name": "output", "schema": json.loads(params.json_schema)}
            kw["response_format"] = {"type": "json_schema", "json_schema": schema}
        if params.return_logprob:
            kw.update(self._logprob_kwargs(params.top_logprobs_num or 0))
        return kw

    def _logprob_kwargs(self, top: int) -> dict[str, Any]:
        if self.is_chat_model:
            return {"logprobs": True, "top_logprobs": top} if top else {"logprobs": True}
        return {"logprobs": max(top, 1)}

    def call(self, request: ApiRequest) -> ApiResult:
        kw = self.request_kwargs(request.params)
        if self.is_chat_model:
            resp = self.with_retries(
                lambda: self.client.chat.completions.create(messages=request.messages, **kw)
            )
            choices = sorted(resp.choices, key=lambda c: c.index)
            texts = [c.message.content or "" for c in choices]
        else:
            resp = self.with_retries(
                lambda: self.client.completions.create(prompt=request.prompt, **kw)
            )
            choices = sorted(resp.choices, key=lambda c: c.index)
            texts = [c.text for c in choices]
        usage = resp.usage
        return ApiResult(
            texts=texts,
            finish_reasons=[finish_reason(c.finish_reason) for c in choices],
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            extra_meta=[self._logprob_meta(c) for c in choices]
            if request.params.return_logprob
            else [],
        )

    def call_stream(self, request: ApiRequest) -> Iterator[StreamPiece]:
        kw = self.request_kwargs(request.params)
        kw.update(stream=True, stream_options={"include_usage": True})
        if self.is_chat_model:
            create = lambda: self.client.chat.completions.create(messages=request.messages, **kw)  # noqa: E731
        else:
            create = lambda: self.client.completions.create(prompt=request.prompt, **kw)  # noqa: E731
        for chunk in self.with_retries(create):
            yield _openai_piece(chunk, self.is_chat_model)

    def _logprob_meta(self, choice: Any) -> dict[str, Any]:
        """Output logprobs as the runtime's entries: [logprob, token_id (None here), text]."""
        lp = choice.logprobs
        if lp is None:
            return {}
        if self.is_chat_model:
            tokens = [(t.logprob, t.token) for t in lp.content or []]
            tops = [[(x.logprob, x.token) for x in t.top_logprobs or []] for t in lp.content or []]
        else:
            tokens = list(zip(lp.token_logprobs or [], lp.tokens or []))
            tops = [[(v, k) for k, v in (d or {}).items()] for d in lp.top_logprobs or []]
        return {
            "output_token_logprobs": [[v, None, t] for v, t in tokens],
            "output_top_logprobs": [[[v, None, t] for v, t in top] for top in tops],
        }

    def select(
        self,
        s: "StreamExecutor",
        choices: list[str],
        temperature: float,
        choices_method: Optional[ChoicesSamplingMethod] = None,
    ) -> ChoicesDecision:
        """Score each choice by the logprobs of its tokens after the prompt (completion models).

        One call echoes prompt + choice for every choice (`echo`, `logprobs`); the chosen
        method (default: token_length_normalized) picks from those logprobs.
        """
        if self.is_chat_model:
            return super().select(s, choices, temperature, choices_method)
        if not choices:
            raise ValueError("select needs at least one choice, got []")
        method = choices_method or _default_choices_method()
        scored = self._echo_logprobs(s.text_, choices)
        uncond = (
            self._echo_logprobs("", choices) if method.requires_unconditional_logprobs else None
        )
        normalized = [mean_logprob(lps) for lps in scored]
        return method(
            choices=choices,
            normalized_prompt_logprobs=normalized,
            input_token_logprobs=scored,
            output_token_logprobs=[[] for _ in choices],
            unconditional_token_logprobs=uncond,
        )

    def _echo_logprobs(self, prefix: str, choices: list[str]) -> list[list[list[Any]]]:
        """Per choice, the [logprob, None, token] entries of the tokens that cover the choice."""
        kw = {"model": self.model_name, "max_tokens": 1, "temperature": 0.0}
        resp = self.with_retries(
            lambda: self.client.completions.create(
                prompt=[prefix + c for c in choices], echo=True, logprobs=1, **kw
            )
        )
        usage = resp.usage
        self.token_usage.add(usage and usage.prompt_tokens, usage and usage.completion_tokens)
        ordered = sorted(resp.choices, key=lambda c: c.index)
        if any(c.logprobs is None or not c.logprobs.tokens for c in ordered):
            raise RuntimeError(
                f"the server did not return prompt logprobs (echo=True) for {self.model_name!r}; "
                "select needs them"
            )
        return [
            _span_logprobs(c.logprobs, len(prefix), len(prefix + choice))
            for c, choice in zip(ordered, choices)
        ]


def _span_logprobs(logprobs: Any, start: int, end: int) -> list[list[Any]]:
    """Entries of the echoed tokens overlapping text[start:end] (a boundary token included)."""
    tokens = logprobs.tokens
    offsets = logprobs.text_offset
    if not offsets or len(offsets) != len(tokens):
        offsets, pos = [], 0
        for tok in tokens:
            offsets.append(pos)
            pos += len(tok)
    return [
        [lp, None, tok]
        for tok, off, lp in zip(tokens, offsets, logprobs.token_logprobs)
        if off < end and off + len(tok) > start
    ]


def _default_choices_method() -> ChoicesSamplingMethod:
    from sglang.lang.choices import token_length_normalized

    return token_length_normalized


def _openai_piece(chunk: Any, is_chat: bool) -> StreamPiece:
    piece = StreamPiece()
    if chunk.usage is not None:
        piece.prompt_tokens = chunk.usage.prompt_tokens
        piece.completion_tokens = chunk.usage.completion_tokens
    if chunk.choices:
        choice = chunk.choices[0]
        piece.text = (choice.delta.content if is_chat else choice.text) or ""
        if choice.finish_reason:
            piece.finish_reason = finish_reason(choice.finish_reason)
    return piece


def _require_openai_key(client_kwargs: dict[str, Any]) -> None:
    if client_kwargs.get("api_key") or os.environ.get("OPENAI_API_KEY"):
        return
    if client_kwargs.get("base_url") or os.environ.get("OPENAI_BASE_URL"):
        client_kwargs["api_key"] = "EMPTY"  # an OpenAI-compatible server that checks no key
        return
    require_env(("OPENAI_API_KEY",), "The OpenAI backend")


def _require_azure_key(client_kwargs: dict[str, Any]) -> None:
    keys = ("api_key", "azure_ad_token", "azure_ad_token_provider")
    if not any(client_kwargs.get(k) for k in keys):
        require_env(("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN"), "The Azure OpenAI backend")
