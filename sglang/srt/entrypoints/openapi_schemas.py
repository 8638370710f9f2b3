"""Request-body schemas in the OpenAPI document (/openapi.json): one pydantic model per route.

The routes read their bodies themselves (http_common.read_json, field_compat, the models'
`model_validate`), so bad input gets our 400 error format rather than FastAPI's 422; this
module only publishes what those bodies look like, for clients and fuzzers. The OpenAI,
Anthropic and embeddings routes are described by the very models they parse with; /generate
and /encode by models built from their dataclasses (GenerateReqInput, SamplingParams,
EmbeddingReqInput), so a field added there shows up here by itself.
"""

from __future__ import annotations

import dataclasses
import re
import typing
import warnings
from typing import Any, Optional, Union

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, create_model

from sglang.srt.entrypoints.embeddings_api import EmbeddingRequest
from sglang.srt.entrypoints.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from sglang.srt.managers.io_struct import EmbeddingReqInput, GenerateReqInput
from sglang.srt.sampling.sampling_params import SamplingParams

_REF_TEMPLATE = "#/components/schemas/{model}"


class _Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


def model_of_dataclass(
    cls: type, name: str, overrides: Optional[dict[str, Any]] = None
) -> type[BaseModel]:
    """A pydantic model with the fields (types, defaults) of dataclass `cls`, unknown fields
    forbidden; `overrides` replaces some fields' types. Fields filled later (a
    default_factory) are not part of a request and are left out."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING:
            continue
        fields[f.name] = ((overrides or {}).get(f.name, hints[f.name]), f.default)
    return create_model(name, __base__=_Forbid, __module__=__name__, **fields)


def _nullable(cls: type) -> dict[str, Any]:
    """Every field of `cls` as Optional: SamplingParams.from_dict takes null as "the default"."""
    hints = typing.get_type_hints(cls)
    return {f.name: Optional[hints[f.name]] for f in dataclasses.fields(cls)}


SamplingParamsBody = model_of_dataclass(
    SamplingParams,
    "SamplingParams",
    {
        **_nullable(SamplingParams),
        # JSON objects are accepted where the dataclass keeps their JSON text
        "json_schema": Optional[Union[str, dict[str, Any]]],
    },
)

GenerateRequest = model_of_dataclass(
    GenerateReqInput,
    "GenerateRequest",
    {"sampling_params": Optional[Union[SamplingParamsBody, list[SamplingParamsBody]]]},
)

EncodeRequest = model_of_dataclass(EmbeddingReqInput, "EncodeRequest")


class AbortRequest(_Forbid):
    """The body of POST /abort_request: one request's id, or abort_all."""

    rid: Optional[str] = Field(None, min_length=1)
    abort_all: bool = False


def _messages_request() -> Optional[type[BaseModel]]:
    try:  # NOTE: as in http_server: the Anthropic route is optional
        from sglang.srt.entrypoints.anthropic_api import MessagesRequest
    except ImportError:
        return None
    return MessagesRequest


# The body model of every route that takes one (all its methods but GET/HEAD).
ROUTE_BODIES: dict[str, Optional[type[BaseModel]]] = {
    "/generate": GenerateRequest,
    "/encode": EncodeRequest,
    "/abort_request": AbortRequest,
    "/flush_cache": None,  # no body
    "/tokenize": TokenizeRequest,
    "/v1/tokenize": TokenizeRequest,
    "/detokenize": DetokenizeRequest,
    "/v1/detokenize": DetokenizeRequest,
    "/v1/completions": CompletionRequest,
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/messages": _messages_request(),
}

_BODY_METHODS = ("post", "put", "patch")


def install(app: FastAPI) -> None:
    """Make `app.openapi()` publish each route's request body (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document for `app`, with a requestBody on every route ROUTE_BODIES names."""
    with warnings.catch_warnings():  # routes with two methods share an id; renamed below
        warnings.simplefilter("ignore", UserWarning)
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            operation["operationId"] = _operation_id(method, path)
        model = ROUTE_BODIES.get(path)
        if model is None:
            continue
        ref = _add_component(components, model)
        for method in _BODY_METHODS:
            if method in operations:
                operations[method]["requestBody"] = _request_body(ref)
    return doc


def _operation_id(method: str, path: str) -> str:
    """A unique id per (method, path), e.g. post_v1_chat_completions."""
    return method + "_" + re.sub(r"[^0-9A-Za-z]+", "_", path).strip("_")


def _add_component(components: dict[str, Any], model: type[BaseModel]) -> dict[str, str]:
    """Put `model` and the models it nests in the components; a $ref to it."""
    schema = model.model_json_schema(ref_template=_REF_TEMPLATE)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": _REF_TEMPLATE.format(model=model.__name__)}


def _request_body(ref: dict[str, str]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref}}}
