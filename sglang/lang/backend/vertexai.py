"""VertexAI backend: Gemini models through the google-genai SDK (Vertex AI or API-key mode)."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Optional, Union

from sglang.lang.backend.api_base import (
    ApiModelBackend,
    ApiRequest,
    ApiResult,
    ImagePart,
    StreamPiece,
    content_parts,
    finish_reason,
    import_sdk,
    reject_unsupported,
)
from sglang.lang.chat_template import ChatTemplate
from sglang.lang.ir import SglSamplingParams

_GEMINI_PARAMS = frozenset(
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
_API_KEY_VARS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
_ROLES = {"user": "user", "assistant": "model"}


class VertexAI(ApiModelBackend):
    """A Gemini model through google-genai, on Vertex AI or the Gemini API.

    Parameters
    ----------
    model_name
        The model id, e.g. "gemini-2.0-flash".
    chat_template
        A template name or ChatTemplate for the program text (default "default").
    max_retries, retry_base_delay
        Rate-limit (HTTP 429), unavailable (503) and connection errors are retried
        max_retries times with exponential backoff starting at retry_base_delay seconds.
    **client_kwargs
        Passed to `google.genai.Client` (api_key, vertexai, project, location, credentials,
        http_options). Without them the environment decides: GOOGLE_API_KEY or GEMINI_API_KEY
        selects the Gemini API; GOOGLE_CLOUD_PROJECT (with GOOGLE_CLOUD_LOCATION, default
        "us-central1") selects Vertex AI, as does GOOGLE_GENAI_USE_VERTEXAI=true.

    Notes
    -----
    Roles map to user/model, system messages to `system_instruction`, images to inline data
    parts; `n` is `candidate_count`, `json_schema` a JSON response schema. Logprobs and
    constrained decoding raise ValueError; `select` asks for a JSON response whose "choice"
    is an enum of the choices.
    """

    api_name = "Gemini"

    def __init__(
        self,
        model_name: str,
        chat_template: Optional[Union[str, ChatTemplate]] = None,
        max_retries: int = 5,
        retry_base_delay: float = 1.0,
        **client_kwargs: Any,
    ) -> None:
        super().__init__(model_name, chat_template, "default", max_retries, retry_base_delay)
        genai = import_sdk("google.genai", "vertexai")
        self._errors = import_sdk("google.genai.errors", "vertexai")
        self._types = import_sdk("google.genai.types", "vertexai")
        self.client = genai.Client(**client_settings(client_kwargs))

    def is_retryable(self, error: Exception) -> bool:
        if isinstance(error, self._errors.APIError):
            return error.code in (429, 503)
        return _is_transport_error(error)

    def check_params(self, params: SglSamplingParams) -> None:
        reject_unsupported(params, _GEMINI_PARAMS, "The Gemini API")

    def request_kwargs(self, request: ApiRequest) -> dict[str, Any]:
        """The SDK keyword arguments of `models.generate_content` for a request."""
        system, contents = to_gemini_contents(request.messages)
        return {
            "model": self.model_name,
            "contents": contents,
            "config": self._types.GenerateContentConfig(**self.config(request.params, system)),
        }

    def config(self, params: SglSamplingParams, system: str) -> dict[str, Any]:
        """GenerateContentConfig fields for a gen's sampling parameters."""
        fields: dict[str, Any] = {
            "max_output_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "system_instruction": system or None,
            "stop_sequences": params.stop_list() or None,
            "top_p": params.top_p if params.top_p != 1.0 else None,
            "top_k": params.top_k if params.top_k != -1 else None,
            "candidate_count": params.n if params.n != 1 else None,
            "presence_penalty": params.presence_penalty or None,
            "frequency_penalty": params.frequency_penalty or None,
        }
        if params.json_schema:
            fields["response_mime_type"] = "application/json"
            fields["response_json_schema"] = json.loads(params.json_schema)
        return {k: v for k, v in fields.items() if v is not None}

    def call(self, request: ApiRequest) -> ApiResult:
        kw = self.request_kwargs(request)
        resp = self.with_retries(lambda: self.client.models.generate_content(**kw))
        candidates = sorted(resp.candidates or [], key=lambda c: c.index or 0)
        if not candidates:
            raise RuntimeError(f"Gemini returned no candidates: {_feedback(resp)}")
        usage = resp.usage_metadata
        return ApiResult(
            texts=[_candidate_text(c) for c in candidates],
            finish_reasons=[_finish(c) for c in candidates],
            prompt_tokens=usage.prompt_token_count if usage else None,
            completion_tokens=usage.candidates_token_count if usage else None,
        )

    def call_stream(self, request: ApiRequest) -> Iterator[StreamPiece]:
        kw = self.request_kwargs(request)
        stream = self.with_retries(lambda: self.client.models.generate_content_stream(**kw))
        for chunk in stream:
            piece = StreamPiece()
            if chunk.candidates:
                cand = chunk.candidates[0]
                piece.text = _candidate_text(cand)
                piece.finish_reason = _finish(cand) if cand.finish_reason else None
            if chunk.usage_metadata:
                piece.prompt_tokens = chunk.usage_metadata.prompt_token_count
                piece.completion_tokens = chunk.usage_metadata.candidates_token_count
            yield piece


def client_settings(client_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Client arguments: the caller's choice of mode, else Vertex or API-key mode from the
    environment (project, location and credentials may come from either)."""
    if "api_key" in client_kwargs or "vertexai" in client_kwargs:
        return client_kwargs
    use_vertex = os.environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in ("1", "true")
    key = next((os.environ[v] for v in _API_KEY_VARS if os.environ.get(v)), None)
    if key and not use_vertex:
        return {**client_kwargs, "api_key": key}
    project = client_kwargs.get("project") or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if project:
        location = client_kwargs.get("location") or os.environ.get("GOOGLE_CLOUD_LOCATION")
        location = location or "us-central1"
        return {**client_kwargs, "vertexai": True, "project": project, "location": location}
    raise ValueError(
        "The VertexAI backend needs credentials: set GOOGLE_API_KEY or GEMINI_API_KEY "
        "(Gemini API), or GOOGLE_CLOUD_PROJECT and GOOGLE_CLOUD_LOCATION (Vertex AI)"
    )


def to_gemini_contents(
    messages: list[dict[str, Any]],
) -> tuple[str, list[dict[str, Any]]]:
    """OpenAI-style messages as (system instruction, Gemini contents with text/inline parts)."""
    system = ""
    contents = []
    for m in messages:
        parts = content_parts(m["content"])
        if m["role"] == "system":
            if any(isinstance(p, ImagePart) for p in parts):
                raise ValueError("the Gemini backend takes no images in the system prompt")
            system += "".join(parts)  # type: ignore[arg-type]
            continue
        contents.append({"role": _ROLES[m["role"]], "parts": [_part(p) for p in parts]})
    return system, contents


def _part(part: Union[str, ImagePart]) -> dict[str, Any]:
    if isinstance(part, str):
        return {"text": part}
    return {"inline_data": {"mime_type": part.media_type, "data": part.raw_bytes()}}


def _is_transport_error(error: Exception) -> bool:
    """A connection-level failure of the SDK's HTTP client (httpx, or httpx2 in newer SDKs)."""
    return any(
        cls.__name__ == "TransportError" and cls.__module__.split(".")[0].startswith("httpx")
        for cls in type(error).__mro__
    )


def _candidate_text(candidate: Any) -> str:
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    return "".join(p.text for p in parts if p.text and not getattr(p, "thought", False))


def _finish(candidate: Any) -> dict[str, Any]:
    reason = candidate.finish_reason
    return finish_reason(getattr(reason, "name", reason))


def _feedback(resp: Any) -> str:
    feedback = getattr(resp, "prompt_feedback", None)
    return str(feedback) if feedback else "no prompt feedback"
