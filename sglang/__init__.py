"""SGLang: a structured generation language for LLM programs, and the runtime it runs on."""

from __future__ import annotations

import importlib
from typing import Any

from sglang.api import (
    Runtime,
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    function,
    gen,
    gen_int,
    gen_string,
    get_server_info,
    image,
    select,
    separate_reasoning,
    set_default_backend,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
    video,
)
from sglang.global_config import global_config
from sglang.lang.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)

__version__ = "0.1.0"

# Backends and the in-process Engine import their (heavy or optional) dependencies on first use.
_LAZY = {
    "RuntimeEndpoint": "sglang.lang.backend.runtime_endpoint",
    "OpenAI": "sglang.lang.backend.openai",
    "Anthropic": "sglang.lang.backend.anthropic",
    "VertexAI": "sglang.lang.backend.vertexai",
    "LiteLLM": "sglang.lang.backend.litellm",
    "Engine": "sglang.srt.entrypoints.engine",
}

__all__ = [
    "Anthropic",
    "Engine",
    "LiteLLM",
    "OpenAI",
    "Runtime",
    "RuntimeEndpoint",
    "VertexAI",
    "assistant",
    "assistant_begin",
    "assistant_end",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_server_info",
    "global_config",
    "greedy_token_selection",
    "image",
    "select",
    "separate_reasoning",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
    "user",
    "user_begin",
    "user_end",
    "video",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sglang' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
