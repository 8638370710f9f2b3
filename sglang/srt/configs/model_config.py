"""ModelConfig: the architecture facts the runtime needs, read from a Hugging Face folder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

_REQUIRED = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "vocab_size",
)
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class ModelConfig:
    """What the model code, the memory pools and the scheduler read about one model."""

    path: str
    architecture: str  # config.architectures[0], the key of the model registry
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    context_len: int
    eos_token_ids: frozenset[int]
    rope_theta: float
    rope_scaling: Optional[dict]  # None, or HF's dict with "rope_type" (linear | llama3)
    tie_word_embeddings: bool
    rms_norm_eps: float
    attention_bias: bool
    dtype: torch.dtype  # the dtype the runtime computes in
    # the whole (text) config.json, for the facts only one family reads (sliding windows,
    # soft-capping, expert counts, ...): read with hf.get(key, default) in the model's code
    hf: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_path(
        cls,
        path: str,
        context_length: Optional[int] = None,
        dtype: str = "auto",
        tokenizer_path: Optional[str] = None,
    ) -> ModelConfig:
        """Read path/config.json (+ generation_config.json, tokenizer files for the EOS ids)."""
        cfg = _read_json(os.path.join(path, "config.json"))
        if cfg is None:
            raise ValueError(f"model path {path!r}: no config.json there")
        cfg = _with_text_config(cfg)
        missing = [k for k in _REQUIRED if k not in cfg]
        if missing:
            raise ValueError(f"model path {path!r}: config.json lacks {missing}")
        hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        return cls(
            path=path,
            architecture=(cfg.get("architectures") or ["LlamaForCausalLM"])[0],
            num_layers=cfg["num_hidden_layers"],
            hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            vocab_size=cfg["vocab_size"],
            context_len=context_length or cfg.get("max_position_embeddings") or 2048,
            eos_token_ids=_eos_token_ids(path, cfg, tokenizer_path or path),
            rope_theta=float(_rope_theta(cfg)),
            rope_scaling=_rope_scaling(cfg),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            dtype=resolve_dtype(dtype),
            hf=cfg,
        )

    def sliding_window_of(self, layer_id: int) -> Optional[int]:
        """The attention window of layer `layer_id` (None: full attention), as transformers
        reads the config: `layer_types` where the config lists them ("sliding_attention"
        layers get `sliding_window`), else Qwen2-style `use_sliding_window` from
        `max_window_layers` on, else `sliding_window` on every layer (Mistral, Phi-3)."""
        window = self.hf.get("sliding_window")
        if not window:
            return None
        layer_types = self.hf.get("layer_types")
        if layer_types:
            return int(window) if layer_types[layer_id] == "sliding_attention" else None
        if "use_sliding_window" in self.hf:
            first = self.hf.get("max_window_layers", 0)
            return int(window) if self.hf["use_sliding_window"] and layer_id >= first else None
        return int(window)


def resolve_dtype(dtype: str) -> torch.dtype:
    """'auto' -> bfloat16 (on CPU and CUDA alike); otherwise the named dtype."""
    if dtype == "auto":
        return torch.bfloat16
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected auto or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _with_text_config(cfg: dict) -> dict:
    """A vision-language config's decoder facts (its text_config) at the top level."""
    text = cfg.get("text_config")
    if not isinstance(text, dict):
        return cfg
    return {**cfg, **text, "architectures": cfg.get("architectures")}


def _read_json(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _rope_theta(cfg: dict) -> float:
    # transformers 5 nests it in rope_parameters; older configs keep it at the top level.
    params = cfg.get("rope_parameters") or {}
    return cfg.get("rope_theta") or params.get("rope_theta") or 10000.0


def _rope_scaling(cfg: dict) -> Optional[dict]:
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if not scaling:
        return None
    scaling = dict(scaling)
    kind = scaling.pop("type", None) or scaling.get("rope_type") or "default"
    if kind == "default":
        return None
    scaling["rope_type"] = kind
    return scaling


def _as_ids(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, list) else {int(value)}


def _eos_token_ids(path: str, cfg: dict, tokenizer_path: str) -> frozenset[int]:
    ids = _as_ids(cfg.get("eos_token_id"))
    gen = _read_json(os.path.join(path, "generation_config.json")) or {}
    ids |= _as_ids(gen.get("eos_token_id"))
    tok_eos = _tokenizer_eos_id(tokenizer_path)
    if tok_eos is not None:
        ids.add(tok_eos)
    return frozenset(ids)


def _tokenizer_eos_id(tokenizer_path: str) -> Optional[int]:
    """The tokenizer's EOS id from tokenizer_config.json + tokenizer.json, if both are there."""
    tok_cfg = _read_json(os.path.join(tokenizer_path, "tokenizer_config.json")) or {}
    eos = tok_cfg.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    for token_id, added in (tok_cfg.get("added_tokens_decoder") or {}).items():
        if added.get("content") == eos:
            return int(token_id)
    tok = _read_json(os.path.join(tokenizer_path, "tokenizer.json")) if eos else None
    if tok is None:
        return None
    for added in tok.get("added_tokens", []):
        if added.get("content") == eos:
            return int(added["id"])
    vocab = (tok.get("model") or {}).get("vocab")
    return vocab.get(eos) if isinstance(vocab, dict) else None
