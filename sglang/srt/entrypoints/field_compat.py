"""Request fields SGLang 0.5 (or OpenAI) defines that we accept only at their default value.

The field compatibility rule (docs/api-compatibility.md): a field that SGLang or OpenAI defines
is accepted; one we implement does what it does there; one we do not implement is accepted at
its default value (so clients that send every field, like sglang-router, work) and gets a 400
naming it otherwise. A field neither defines gets a 400 from the route's own parser.
"""

from __future__ import annotations

from typing import Any

from sglang.srt.entrypoints.http_common import RequestError

# Values that count as "left at its default" for the fields below: each of these fields is
# off by default in SGLang (None, False, 0, or an empty container).
_EMPTY: tuple[Any, ...] = (None, False, 0, "", [], {})

# Fields of SGLang's GenerateReqInput (POST /generate) with no meaning here.
GENERATE_DEFAULT_ONLY = frozenset(
    {
        "input_embeds",
        "video_data",
        "audio_data",
        "mm_hashes",
        "mm_content_hashes",
        "use_audio_in_video",
        "video_config",
        "token_ids_logprob",
        "return_sampling_mask",
        "return_flat_raw_top_logprobs",
        "return_flat_raw_top_logprobs_b64",
        "return_hidden_states",
        "return_routed_experts",
        "routed_experts_start_len",
        "return_indexer_topk",
        "modalities",
        "session_params",
        "session_id",
        "lora_path",
        "lora_id",
        "custom_logit_processor",
        "positional_embed_overrides",
        "bootstrap_host",
        "bootstrap_port",
        "bootstrap_room",
        "bootstrap_pair_key",
        "decode_tp_size",
        "routed_dp_rank",
        "data_parallel_rank",
        "disagg_prefill_dp_rank",
        "kv_router_hint",
        "routing_key",
        "conversation_id",
        "http_worker_ipc",
        "background",
        "require_reasoning",
        "max_thinking_tokens",
        "priority",
        "extra_key",
        "custom_labels",
        "return_bytes",
        "return_entropy",
        "return_prompt_token_ids",
        "external_trace_header",
        "received_time",
        "need_wait_for_mm_inputs",
        "num_items_assigned",
        "encoder_urls",
        "max_dynamic_patch",
        "min_dynamic_patch",
        "image_max_dynamic_patch",
        "video_max_dynamic_patch",
        "images_config",
        "multi_item_delimiter_indices",
        "cache_salt",
    }
)

# SGLang extensions both OpenAI routes share, with no meaning here.
_OPENAI_SHARED_DEFAULT_ONLY = frozenset(
    {
        "return_hidden_states",
        "return_routed_experts",
        "routed_experts_start_len",
        "return_cached_tokens_details",
        "return_token_ids",
        "lora_path",
        "session_id",
        "session_params",
        "custom_logit_processor",
        "images_config",
        "bootstrap_host",
        "bootstrap_port",
        "bootstrap_room",
        "routed_dp_rank",
        "disagg_prefill_dp_rank",
        "data_parallel_rank",
        "extra_key",
        "cache_salt",
        "ngram_corpus_id",
        "priority",
        "custom_labels",
        "rid",
    }
)

COMPLETION_DEFAULT_ONLY = _OPENAI_SHARED_DEFAULT_ONLY

CHAT_DEFAULT_ONLY = _OPENAI_SHARED_DEFAULT_ONLY | frozenset(
    {
        "return_prompt_token_ids",
        "return_meta_info",
        "reasoning_effort",
        "task",
        "continue_final_message",
        "max_dynamic_patch",
        "min_dynamic_patch",
        "use_audio_in_video",
        "input_ids",
        "audio",
        "modalities",
        "prediction",
        "web_search_options",
        "verbosity",
        "prompt_cache_key",
        "safety_identifier",
        "functions",
        "function_call",
    }
)


# Fields of SGLang's EmbeddingReqInput (POST /encode) with no meaning here.
ENCODE_DEFAULT_ONLY = frozenset(
    {
        "input_embeds",
        "image_data",
        "video_data",
        "audio_data",
        "embed_override_token_id",
        "embed_overrides",
        "modalities",
        "is_cross_encoder_request",
        "lora_path",
        "lora_id",
        "positional_embed_overrides",
        "routing_key",
        "http_worker_ipc",
        "background",
        "priority",
        "return_pooled_hidden_states",
        "return_prompt_token_ids",
        "external_trace_header",
        "received_time",
        "multi_item_delimiter_indices",
        "token_indices_to_pool",
        "decision_layout",
    }
)

# SGLang's extensions of OpenAI's embeddings request (POST /v1/embeddings) with no meaning here.
EMBEDDINGS_DEFAULT_ONLY = frozenset(
    {"priority", "lora_path", "embed_override_token_id", "embed_overrides"}
)


def pop_default_only(body: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    """`body` without the default-only `fields`; RequestError naming those set otherwise."""
    given = [k for k in fields if k in body]
    bad = sorted(k for k in given if not _is_default(body[k]))
    if bad:
        raise RequestError(
            f"unsupported field(s) set to a non-default value: {', '.join(bad)} "
            "(accepted only at their default; see docs/api-compatibility.md)",
            bad[0],
        )
    return {k: v for k, v in body.items() if k not in fields}


def _is_default(value: Any) -> bool:
    return any(value is e or (type(value) is type(e) and value == e) for e in _EMPTY)
