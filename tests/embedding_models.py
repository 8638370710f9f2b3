"""Tiny random-weight embedding models saved as Hugging Face folders (unit and end-to-end tests).

A base model (transformers' `Qwen2Model` / `LlamaModel`, saved without lm_head, as embedding
models ship), a byte-level tokenizer of its own (no download), and optionally
sentence-transformers' pooling files.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch

VOCAB = 320  # the tokenizer's ~260 ids and some room
_TINY = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,  # the served model must not need an lm_head even so
)


def save_embedding_model(
    path: str, arch: str = "qwen2", pooling: Optional[str] = None, seed: int = 0, **overrides
) -> str:
    """Save a random float32 base model to path; `pooling` ("mean", "cls", "last") adds
    sentence-transformers' modules.json + 1_Pooling/config.json + Normalize; return path."""
    import transformers

    config_cls, model_cls = {
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2Model),
        "llama": (transformers.LlamaConfig, transformers.LlamaModel),
    }[arch]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**_TINY, **overrides}))
    if arch == "qwen2":  # zero-initialized biases would not test the bias path
        with torch.no_grad():
            for layer in model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    proj.bias.normal_(0, 0.5)
    model.to(torch.float32).save_pretrained(path)
    save_tokenizer(path)
    if pooling is not None:
        _save_st_pooling(path, pooling)
    return path


def save_tokenizer(path: str) -> None:
    """A byte-level BPE tokenizer (the 256 bytes, a few merges): every text tokenizes."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world"] * 4
    specials = ["<unk>", "<s>", "</s>"]
    bpe.train_from_iterator(corpus, vocab_size=280, special_tokens=specials, show_progress=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(path)


def _save_st_pooling(path: str, mode: str) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]  # fmt: skip
    _write_json(os.path.join(path, "modules.json"), modules)
    keys = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "lasttoken")
    on = {"cls": "cls_token", "mean": "mean_tokens", "last": "lasttoken"}[mode]
    pooling = {"word_embedding_dimension": _TINY["hidden_size"]}
    pooling |= {f"pooling_mode_{k}": k == on for k in keys}
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    _write_json(os.path.join(path, "1_Pooling", "config.json"), pooling)


def _write_json(path: str, obj: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
