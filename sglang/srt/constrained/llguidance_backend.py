"""Grammar backend on llguidance: regex, JSON schema and Lark/GBNF grammars, with jump-forward."""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import llguidance
import llguidance.hf
import torch
from llguidance import LLMatcher, LLTokenizer

from sglang.srt.constrained.base_grammar_backend import (
    BaseGrammarBackend,
    BaseGrammarObject,
    JumpForward,
    forbid_additional_properties,
    parse_json_schema,
    resolve_eos_ids,
    vocab_mask_width,
)
from sglang.srt.constrained.structural_tag import parse_structural_tag, to_llguidance

# Python-style regexes get re.ASCII meaning for \d \w \s (as SGLang's other backends give them).
_REGEX_ASCII_CLASSES = "dws"
# Compact JSON as json.dumps writes it; free whitespace lets weak models loop on newlines.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_MAX_ERROR_CHARS = 600


class LLGuidanceGrammar(BaseGrammarObject):
    """One request's llguidance matcher plus the tokens it accepted (context for jump-forward)."""

    def __init__(self, start: LLMatcher, ll_tokenizer: LLTokenizer, vocab_size: int,
                 heal_last_token: bool) -> None:
        self._start = start  # NOTE: never advanced; every copy() deep-copies it
        self.matcher = start.deep_copy()
        self.ll_tokenizer = ll_tokenizer
        self.vocab_size = vocab_size
        self.heal_last_token = heal_last_token
        self.tokens: list[int] = []

    def copy(self) -> LLGuidanceGrammar:
        return LLGuidanceGrammar(self._start, self.ll_tokenizer, self.vocab_size,
                                 self.heal_last_token)

    def accept_token(self, token_id: int) -> None:
        # Check first: a rejected consume would leave the matcher in a permanent error state.
        if not 0 <= token_id < self.vocab_size or self.matcher.validate_tokens([token_id]) != 1:
            raise ValueError(f"token {token_id} is not allowed by the grammar here")
        ok = self.matcher.consume_token(token_id)
        assert ok, f"validated token {token_id} was rejected: {self.matcher.get_error()}"
        self.tokens.append(token_id)

    def is_terminated(self) -> bool:
        # Stopped: only EOS may follow (or the matcher hit a parser limit and must stop).
        return self.matcher.is_stopped()

    def fill_vocab_mask(self, mask: torch.Tensor, idx: int) -> None:
        _check_mask(mask, self.vocab_size)
        row = mask[idx]  # int32 [W]
        self.matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())

    def rollback(self, k: int) -> None:
        if not 0 <= k <= len(self.tokens):
            raise ValueError(f"cannot roll back {k} tokens: {len(self.tokens)} accepted")
        if k == 0:
            return
        ok = self.matcher.rollback(k)
        assert ok, f"rollback({k}) failed: {self.matcher.get_error()}"
        del self.tokens[-k:]

    def try_jump_forward(self) -> Optional[JumpForward]:
        if self.matcher.is_stopped():
            return None
        forced = self.matcher.compute_ff_bytes()
        if not forced:
            return None
        num_rollback, tokens = 0, []
        healed = self._healed_tokens(forced)
        if healed is not None:
            last = self.tokens[-1]
            self.rollback(1)
            if self._consume_all(healed):
                num_rollback, tokens = 1, healed
            else:  # cannot happen for a byte-level grammar; keep the sampled token then
                self.accept_token(last)
        # The forced tokens llguidance picks are the canonical split of the forced bytes,
        # minus a tail that might merge with the text after them.
        ff = self.matcher.compute_ff_tokens()
        if ff and self._consume_all(ff):
            tokens = tokens + ff
        if not tokens:
            return None
        return JumpForward(num_rollback, tokens)

    def _healed_tokens(self, forced: bytes) -> Optional[list[int]]:
        """Canonical tokens for (last token's bytes + forced bytes) if they re-split the last token.

        None when the last sampled token already starts the canonical split (no backtrack).
        """
        if not self.heal_last_token or not self.tokens:
            return None
        last = self.tokens[-1]
        if self.ll_tokenizer.is_special_token(last):
            return None
        last_bytes = self.ll_tokenizer.decode_bytes([last])
        tokens, _ = self.ll_tokenizer.tokenize_partial(last_bytes + forced,
                                                       recent_tokens=self.tokens[-2:-1])
        if not tokens or tokens[0] == last:
            return None
        if len(self.ll_tokenizer.decode_bytes(tokens)) <= len(last_bytes):
            return None  # the split would not move past the sampled token
        return tokens

    def _consume_all(self, tokens: list[int]) -> bool:
        """Accept all of `tokens` or none of them."""
        n = self.matcher.try_consume_tokens(tokens)
        if n == len(tokens):
            self.tokens.extend(tokens)
            return True
        if n:
            self.matcher.rollback(n)
        return False


class LLGuidanceBackend(BaseGrammarBackend):
    """Compiles constraints with llguidance.

    Accepted input:
      - regex: Python `re` syntax (Rust regex engine: no backreferences or lookaround), with
        re.ASCII meaning for \\d \\w \\s; `.` excludes newline; the whole output must match.
      - json_schema: a JSON object or boolean schema (draft 2020-12 subset llguidance
        implements); output is compact JSON with ", " and ": " separators unless
        `json_whitespace_pattern` allows more; with `strict_json` (default) objects that
        list `properties` allow no other keys unless `additionalProperties` says so.
      - ebnf: a Lark grammar (root rule `start`, llguidance's Lark dialect) or a GBNF grammar
        (root rule `root`, llama.cpp syntax), told apart by its syntax.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Optional[set[int]] = None,
                 *, json_whitespace_pattern: Optional[str] = None,
                 strict_json: bool = True, jump_forward_backtrack: bool = True,
                 max_cache_size: int = 256,
                 num_threads: int = 2) -> None:
        super().__init__(vocab_size, max_cache_size, num_threads)
        eos = resolve_eos_ids(tokenizer, vocab_size, eos_token_ids)
        self.ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size,
                                                         eos_token=eos)
        self.eos_token_ids = set(eos)
        self.jump_forward_backtrack = jump_forward_backtrack
        self.strict_json = strict_json
        self._limits = llguidance.LLParserLimits(verbose_errors=False)
        self._json_options: dict[str, Any] = dict(_JSON_OPTIONS)
        if json_whitespace_pattern is not None:
            self._json_options = {"whitespace_flexible": True,
                                  "whitespace_pattern": json_whitespace_pattern}
        # llguidance's own default: 80% of the cores; one thread is only overhead.
        self.mask_threads = max(1, min(32, (os.cpu_count() or 1) * 4 // 5))
        self._executor = llguidance.LLExecutor(num_threads=self.mask_threads)

    def _compile(self, kind: str, text: str) -> LLGuidanceGrammar:
        grammar = self._grammar_text(kind, text)
        matcher = LLMatcher(self.ll_tokenizer, grammar, log_level=0, limits=self._limits)
        if matcher.is_error():
            raise self._matcher_error(kind, matcher)
        _check_can_match(kind, text, matcher)
        return LLGuidanceGrammar(matcher, self.ll_tokenizer, self.vocab_size,
                                 self.jump_forward_backtrack)

    def _grammar_text(self, kind: str, text: str) -> str:
        """The llguidance grammar (a JSON string) for one constraint."""
        try:
            if kind == "regex":
                lark_regex = llguidance.regex_to_lark(text, _REGEX_ASCII_CLASSES)
                return LLMatcher.grammar_from_lark(f"start: /{lark_regex}/")
            if kind == "json_schema":
                schema = parse_json_schema(text)
                if schema is False:
                    raise ValueError("Unsatisfiable schema: false matches no value")
                if schema is True:
                    schema = {}  # options apply to object schemas only; {} accepts any JSON
                if self.strict_json:
                    schema = forbid_additional_properties(schema)
                return LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                          defaults=self._json_options)
            if kind == "structural_tag":
                return LLMatcher.grammar_from_lark(to_llguidance(parse_structural_tag(text)))
            return llguidance.grammar_from("grammar", text)  # Lark, or GBNF turned into Lark
        except ValueError as e:
            raise ValueError(f"invalid {kind}: {_short(str(e))}") from None

    def _matcher_error(self, kind: str, matcher: LLMatcher) -> ValueError:
        # Drop the echo of the internal `start: /.../` rule a regex is wrapped in.
        message = matcher.get_error().split("\n   1 | start: /")[0]
        return ValueError(f"invalid {kind}: {_short(message)}")

    def fill_vocab_masks(self, grammars: Sequence[Optional[BaseGrammarObject]],
                         mask: torch.Tensor) -> None:
        """Fill all constrained rows, in parallel where several cores exist (GIL released)."""
        if self.mask_threads == 1:
            super().fill_vocab_masks(grammars, mask)
            return
        _check_mask(mask, self.vocab_size)
        assert mask.shape[0] >= len(grammars), f"mask has {mask.shape[0]} rows < {len(grammars)}"
        jobs = []
        for i, grammar in enumerate(grammars):
            if grammar is None:
                mask[i].fill_(-1)
            else:
                assert isinstance(grammar, LLGuidanceGrammar), type(grammar).__name__
                jobs.append((grammar.matcher, i))
        if jobs:
            row_bytes = mask.shape[1] * mask.element_size()
            self._executor.unsafe_compute_mask_ptr(jobs, mask.data_ptr(), row_bytes, mask.shape[0])


def _check_can_match(kind: str, text: str, matcher: LLMatcher) -> None:
    """ValueError if the grammar cannot produce even its first token (or end at once)."""
    probe = matcher.deep_copy()
    probe.compute_bitmask()
    if probe.is_error():
        raise ValueError(f"{kind} cannot match any text: {text[:200]!r}")


def _check_mask(mask: torch.Tensor, vocab_size: int) -> None:
    assert mask.dtype == torch.int32 and mask.device.type == "cpu", "int32 CPU mask expected"
    assert mask.is_contiguous(), "mask must be contiguous"
    assert mask.shape[1] == vocab_mask_width(vocab_size), (
        f"mask width {mask.shape[1]} != {vocab_mask_width(vocab_size)} for vocab {vocab_size}")


def _short(message: str) -> str:
    message = message.strip()
    return message if len(message) <= _MAX_ERROR_CHARS else message[:_MAX_ERROR_CHARS] + " ..."
