"""Grammar-constrained decoding: pick a backend by name; the backends import lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from sglang.srt.constrained.base_grammar_backend import BaseGrammarBackend

GRAMMAR_BACKENDS = ("llguidance", "xgrammar", "none")

__all__ = ["GRAMMAR_BACKENDS", "create_grammar_backend"]


def create_grammar_backend(name: str, tokenizer: Any, vocab_size: int,
                           eos_token_ids: Optional[set[int]] = None,
                           **options: Any) -> Optional[BaseGrammarBackend]:
    """The grammar backend `name` for a model, or None for "none".

    Parameters
    ----------
    name : "llguidance" (default), "xgrammar" (optional package) or "none".
    tokenizer : a fast transformers tokenizer of the model.
    vocab_size : the model's vocab size, i.e. the logits' width (may exceed len(tokenizer);
        tokens past the tokenizer are never allowed).
    eos_token_ids : the model's EOS ids; each is allowed exactly where the grammar may end.
    options : backend keyword options (e.g. json_whitespace_pattern, jump_forward_backtrack).
    """
    if name == "none":
        return None
    if name == "llguidance":
        from sglang.srt.constrained.llguidance_backend import LLGuidanceBackend

        return LLGuidanceBackend(tokenizer, vocab_size, eos_token_ids, **options)
    if name == "xgrammar":
        from sglang.srt.constrained.xgrammar_backend import XGrammarBackend

        return XGrammarBackend(tokenizer, vocab_size, eos_token_ids, **options)
    raise ValueError(f"unknown grammar backend {name!r}; expected one of {GRAMMAR_BACKENDS}")
