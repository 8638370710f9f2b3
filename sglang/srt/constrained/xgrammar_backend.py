"""Grammar backend on xgrammar (optional package): regex, JSON schema and GBNF grammars."""

from __future__ import annotations

import json
import warnings
from typing import Any, Optional

import torch

from sglang.srt.constrained.base_grammar_backend import (
    BaseGrammarBackend,
    BaseGrammarObject,
    JumpForward,
    allocate_vocab_mask,
    resolve_eos_ids,
    unpack_vocab_mask,
)
from sglang.srt.constrained.structural_tag import parse_structural_tag

_MAX_ROLLBACK_TOKENS = 256


def import_xgrammar() -> Any:
    """The xgrammar module, or an ImportError that says how to install it."""
    try:
        import xgrammar
    except ImportError as e:
        raise ImportError("the xgrammar grammar backend needs the xgrammar package: "
                          "pip install xgrammar (or use --grammar-backend llguidance)") from e
    return xgrammar


class XGrammarGrammar(BaseGrammarObject):
    """One request's xgrammar matcher plus the tokens it accepted (context for jump-forward)."""

    def __init__(self, compiled: Any, backend: XGrammarBackend) -> None:
        self._compiled = compiled  # NOTE: immutable; every copy() starts a matcher from it
        self._backend = backend
        self.matcher = _new_matcher(backend.xgr, compiled)
        self.tokens: list[int] = []

    def copy(self) -> XGrammarGrammar:
        return XGrammarGrammar(self._compiled, self._backend)

    def accept_token(self, token_id: int) -> None:
        # xgrammar leaves the state unchanged when it refuses a token.
        if not 0 <= token_id < self._backend.vocab_size or not self.matcher.accept_token(token_id):
            raise ValueError(f"token {token_id} is not allowed by the grammar here")
        self.tokens.append(token_id)

    def is_terminated(self) -> bool:
        # NOTE: xgrammar terminates once it has accepted EOS; until then the mask allows only
        # EOS where the grammar has ended, so the request stops one step later than llguidance.
        return self.matcher.is_terminated()

    def fill_vocab_mask(self, mask: torch.Tensor, idx: int) -> None:
        self.matcher.fill_next_token_bitmask(mask, idx)

    def rollback(self, k: int) -> None:
        if not 0 <= k <= len(self.tokens):
            raise ValueError(f"cannot roll back {k} tokens: {len(self.tokens)} accepted")
        if k:
            self.matcher.rollback(k)
            del self.tokens[-k:]

    def try_jump_forward(self) -> Optional[JumpForward]:
        text = self.matcher.find_jump_forward_string()
        if not text:
            return None
        num_rollback, tokens = self._plan_jump(text)
        if not tokens:
            return None
        last = self.tokens[-1] if num_rollback else None
        self.rollback(num_rollback)
        for i, token in enumerate(tokens):
            if not self.matcher.accept_token(token):
                self.rollback(i)
                if last is not None:
                    self.accept_token(last)
                return None
            self.tokens.append(token)
        return JumpForward(num_rollback, tokens)

    def _plan_jump(self, text: str) -> tuple[int, list[int]]:
        """(tokens to roll back, tokens to add) giving the tokenizer's own split of the text."""
        tokenizer = self._backend.tokenizer
        last = self._heal_candidate()
        if last is not None:
            prefix = tokenizer.decode([last])
            ids = _encode_prefix(tokenizer, prefix + text)
            if ids and ids[0] == last:
                return 0, ids[1:]
            if ids and len(tokenizer.decode(ids)) > len(prefix):
                return 1, ids
        return 0, _encode_prefix(tokenizer, text)

    def _heal_candidate(self) -> Optional[int]:
        if not self._backend.jump_forward_backtrack or not self.tokens:
            return None
        last = self.tokens[-1]
        text = self._backend.tokenizer.decode([last])
        if not text or "\ufffd" in text or last in self._backend.special_ids:
            return None
        return last


class XGrammarBackend(BaseGrammarBackend):
    """Compiles constraints with xgrammar.

    Accepted input: regex (xgrammar's regex dialect: \\d \\w \\s are ASCII classes),
    json_schema (a JSON object or boolean), ebnf (GBNF, root rule `root`; not Lark).
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Optional[set[int]] = None,
                 *, any_whitespace: bool = False, jump_forward_backtrack: bool = True,
                 max_cache_size: int = 256, num_threads: int = 2) -> None:
        self.xgr = import_xgrammar()
        super().__init__(vocab_size, max_cache_size, num_threads)
        eos = resolve_eos_ids(tokenizer, vocab_size, eos_token_ids)
        self.eos_token_ids = set(eos)
        self.tokenizer = tokenizer
        self.special_ids = set(getattr(tokenizer, "all_special_ids", ()))
        self.any_whitespace = any_whitespace
        self.jump_forward_backtrack = jump_forward_backtrack
        info = self.xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                       stop_token_ids=eos)
        self.compiler = self.xgr.GrammarCompiler(info, max_threads=num_threads)

    def _compile(self, kind: str, text: str) -> XGrammarGrammar:
        try:
            compiled = self._compile_native(kind, text)
        except (ValueError, TypeError):
            raise
        except Exception as e:  # xgrammar's parse errors are RuntimeError or its own types
            raise ValueError(f"invalid {kind}: {e}") from None
        template = XGrammarGrammar(compiled, self)
        self._check_can_match(kind, text, template)
        return template

    def _compile_native(self, kind: str, text: str) -> Any:
        if kind == "regex":
            return self.compiler.compile_regex(text)
        if kind == "ebnf":
            return self.compiler.compile_grammar(text)
        if kind == "structural_tag":
            return self._compile_structural_tag(text)
        try:
            return self.compiler.compile_json_schema(text, any_whitespace=self.any_whitespace)
        except TypeError:  # versions before any_whitespace
            return self.compiler.compile_json_schema(text)

    def _compile_structural_tag(self, text: str) -> Any:
        structures = parse_structural_tag(text)
        items = [
            self.xgr.StructuralTagItem(begin=s.begin, schema=json.dumps(s.schema), end=s.end)
            for s in structures
        ]
        triggers = sorted({s.trigger for s in structures})
        return self.compiler.compile_structural_tag(items, triggers)

    def _check_can_match(self, kind: str, text: str, template: XGrammarGrammar) -> None:
        """ValueError if the start state allows no token at all (not even EOS)."""
        mask = allocate_vocab_mask(self.vocab_size, 1)
        template.copy().fill_vocab_mask(mask, 0)
        if not bool(unpack_vocab_mask(mask, self.vocab_size).any()):
            raise ValueError(f"{kind} cannot match any text: {text[:200]!r}")


def _new_matcher(xgr: Any, compiled: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # newer xgrammar: unlimited rollback
        try:
            return xgr.GrammarMatcher(compiled, max_rollback_tokens=_MAX_ROLLBACK_TOKENS)
        except TypeError:
            return xgr.GrammarMatcher(compiled)


def _encode_prefix(tokenizer: Any, text: str) -> list[int]:
    """Tokens for `text`, minus a last token that may merge with the text after it.

    Empty when the tokenizer does not reproduce `text` (e.g. it inserts a prefix space).
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) > 1:
        ids = ids[:-1]
    return ids if text.startswith(tokenizer.decode(ids)) else []
