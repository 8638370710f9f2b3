"""The grammar backend interface: compile constraints off-thread, match tokens, mask the vocab."""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, NamedTuple, Optional, Sequence

import torch

GRAMMAR_KINDS = ("regex", "json_schema", "ebnf", "structural_tag")

# Bit b of int32 word w in a mask row allows token 32 * w + b.
_BITS_PER_WORD = 32


class JumpForward(NamedTuple):
    """Tokens forced by the grammar, already accepted by the matcher.

    The caller drops its last `num_rollback` output tokens (the matcher has already rolled them
    back) and appends `tokens`. `num_rollback` is 0 or 1: it is 1 when the last sampled token
    merges with the forced text into a different canonical tokenization (e.g. `"` followed by
    forced `,\\n` becomes `",` + `\\n`), so the sequence reads as the tokenizer would encode it.
    The positions from the first changed one onwards must be re-run through the model.
    """

    num_rollback: int
    tokens: list[int]


class BaseGrammarObject(ABC):
    """One request's matcher: follows the tokens of one output and says which may come next.

    Invariant: every token the matcher holds was allowed by the mask at its position, so the
    output text so far is always a prefix of some string the grammar matches.
    """

    @abstractmethod
    def copy(self) -> BaseGrammarObject:
        """A fresh matcher for the same grammar, at its start state."""

    @abstractmethod
    def accept_token(self, token_id: int) -> None:
        """Advance by one sampled token; ValueError (state unchanged) if it is not allowed."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True when nothing but EOS may follow: the request must finish with reason `stop`."""

    @abstractmethod
    def fill_vocab_mask(self, mask: torch.Tensor, idx: int) -> None:
        """Write the allowed next tokens into row `idx` of a mask from `allocate_vocab_mask`."""

    @abstractmethod
    def try_jump_forward(self) -> Optional[JumpForward]:
        """Accept the continuation the grammar forces, if any; None when nothing is forced."""

    @abstractmethod
    def rollback(self, k: int) -> None:
        """Undo the last `k` accepted tokens (ValueError if fewer were accepted)."""


class BaseGrammarBackend(ABC):
    """Compiles (kind, text) constraints into grammar templates, in a thread pool, with an LRU cache.

    The scheduler calls `get_future` when a constrained request arrives, polls the future between
    steps (so compiling never blocks its loop), and gives each request `template.copy()`. The
    scheduler ends a request whose grammar fails to compile as invalid (the HTTP process answers
    it with a 400); `validate` compiles and raises, for callers outside the scheduler.
    """

    def __init__(self, vocab_size: int, max_cache_size: int = 256, num_threads: int = 2,
                 validate_timeout_s: float = 60.0) -> None:
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = vocab_size
        self.max_cache_size = max_cache_size
        self.validate_timeout_s = validate_timeout_s
        self._cache: OrderedDict[tuple[str, str], Future[BaseGrammarObject]] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="grammar")
        self.cache_hits = 0

    # ---- compiling ----------------------------------------------------------------------------

    def get_future(self, kind: str, text: str) -> Future[BaseGrammarObject]:
        """The compiled template for (kind, text); errors resolve the future with a ValueError."""
        key = (kind, text)
        with self._lock:
            future = self._cache.get(key)
            if future is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return future
            future = self._pool.submit(self.compile, kind, text)
            self._cache[key] = future
            if len(self._cache) > self.max_cache_size:
                self._cache.popitem(last=False)
        return future

    def validate(self, kind: str, text: str) -> None:
        """Raise ValueError naming the problem if (kind, text) cannot constrain a generation."""
        future = self.get_future(kind, text)
        try:
            future.result(timeout=self.validate_timeout_s)
        except FutureTimeout:
            # NOTE: a safety net only; the parser limits keep compiles far below this.
            raise ValueError(f"{kind} is too complex: compiling took over "
                             f"{self.validate_timeout_s:g}s") from None

    def compile(self, kind: str, text: str) -> BaseGrammarObject:
        """Compile now, in this thread, bypassing the cache (get_future is the usual way)."""
        check_grammar_args(kind, text)
        try:
            return self._compile(kind, text)
        except RuntimeError as e:  # native libraries report parse errors this way
            raise ValueError(f"invalid {kind}: {e}") from None

    @abstractmethod
    def _compile(self, kind: str, text: str) -> BaseGrammarObject:
        """Build the start-state template; ValueError naming the problem for bad input."""

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- masks --------------------------------------------------------------------------------

    def allocate_vocab_mask(self, batch_size: int, device: Optional[torch.device] = None
                            ) -> torch.Tensor:
        return allocate_vocab_mask(self.vocab_size, batch_size, device)

    def fill_vocab_masks(self, grammars: Sequence[Optional[BaseGrammarObject]],
                         mask: torch.Tensor) -> None:
        """Fill row i from grammars[i]; rows whose grammar is None become all-allowed."""
        assert mask.shape[0] >= len(grammars), f"mask has {mask.shape[0]} rows < {len(grammars)}"
        for i, grammar in enumerate(grammars):
            if grammar is None:
                mask[i].fill_(-1)
            else:
                grammar.fill_vocab_mask(mask, i)

    @staticmethod
    def apply_vocab_mask(logits: torch.Tensor, mask: torch.Tensor) -> None:
        apply_vocab_mask(logits, mask)


def check_grammar_args(kind: str, text: str) -> None:
    """Reject an unknown kind, a non-string, an empty constraint, or a schema that is not JSON."""
    if kind not in GRAMMAR_KINDS:
        raise ValueError(f"unknown constraint kind {kind!r}; expected one of {GRAMMAR_KINDS}")
    if not isinstance(text, str):
        raise ValueError(f"{kind} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{kind} is empty: {text!r}")
    if kind == "json_schema":
        parse_json_schema(text)


def resolve_eos_ids(tokenizer: Any, vocab_size: int, eos_token_ids: Optional[set[int]]
                    ) -> list[int]:
    """The EOS ids a grammar allows where it may end: the model's set, else the tokenizer's."""
    ids = set(eos_token_ids or ())
    if not ids and getattr(tokenizer, "eos_token_id", None) is not None:
        ids = {tokenizer.eos_token_id}
    bad = sorted(i for i in ids if not 0 <= i < vocab_size)
    if bad:
        raise ValueError(f"eos_token_ids {bad} are outside the vocab of size {vocab_size}")
    if not ids:
        raise ValueError("no EOS token id: pass eos_token_ids")
    return sorted(ids)


def parse_json_schema(text: str) -> object:
    """The schema as a JSON value; ValueError unless it is a JSON object or boolean."""
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"json_schema is not valid JSON ({e}): {text[:200]!r}") from None
    if not isinstance(schema, (dict, bool)):
        raise ValueError(f"json_schema must be a JSON object or boolean, got {text[:200]!r}")
    return schema


# Keywords whose values are subschemas (dict), lists of them, or maps of name -> subschema.
_SUBSCHEMA_KEYS = ("additionalProperties", "items", "not", "if", "then", "else", "contains",
                   "propertyNames", "unevaluatedProperties", "unevaluatedItems")
_SUBSCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAP_KEYS = ("properties", "patternProperties", "$defs", "definitions",
                       "dependentSchemas")


def forbid_additional_properties(schema: Any) -> Any:
    """A copy of the schema where objects that list `properties` default to no extra keys.

    JSON schema allows unlisted keys unless told otherwise; generation wants exactly the listed
    ones (OpenAI's strict mode and xgrammar's default). Data under const/enum/default is left
    alone: only subschema keywords are walked.
    """
    if isinstance(schema, list):
        return [forbid_additional_properties(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_KEYS:
        if isinstance(out.get(key), (dict, list)):
            out[key] = forbid_additional_properties(out[key])
    for key in _SUBSCHEMA_LIST_KEYS:
        if isinstance(out.get(key), list):
            out[key] = [forbid_additional_properties(item) for item in out[key]]
    for key in _SUBSCHEMA_MAP_KEYS:
        if isinstance(out.get(key), dict):
            out[key] = {name: forbid_additional_properties(sub) for name, sub in out[key].items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


# ---- vocab masks: int32 bitmasks [B, ceil(V / 32)], the layout llguidance and xgrammar fill ----


def vocab_mask_width(vocab_size: int) -> int:
    return (vocab_size + _BITS_PER_WORD - 1) // _BITS_PER_WORD


def allocate_vocab_mask(vocab_size: int, batch_size: int,
                        device: Optional[torch.device] = None) -> torch.Tensor:
    """An all-allowed mask: int32 [batch_size, ceil(vocab_size / 32)], every bit set.

    NOTE: the mask always lives on the CPU, where the grammars fill it; `device` is where it
    will be applied (a CUDA device gets pinned memory for a fast copy). Rows of unconstrained
    requests must stay all-allowed: allocate a fresh mask per step, or `reset_vocab_mask` it.
    """
    pin = device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available()
    shape = (batch_size, vocab_mask_width(vocab_size))
    return torch.full(shape, -1, dtype=torch.int32, pin_memory=pin)


def reset_vocab_mask(mask: torch.Tensor) -> None:
    """Make every row all-allowed again."""
    mask.fill_(-1)


_BIT_VALUES: dict[torch.device, torch.Tensor] = {}


def _bit_values(device: torch.device) -> torch.Tensor:
    """int32 [32]: 1 << b for b in 0..31 (bit 31 is the sign bit), cached per device."""
    values = _BIT_VALUES.get(device)
    if values is None:
        shifts = torch.arange(_BITS_PER_WORD, dtype=torch.int32, device=device)
        values = _BIT_VALUES.setdefault(device, torch.ones_like(shifts) << shifts)
    return values


def _blocked(mask: torch.Tensor, width: int) -> torch.Tensor:
    """bool [B, width]: True where mask [B, W] disallows the token (word w, bit b: 32w + b)."""
    blocked = (mask.unsqueeze(-1) & _bit_values(mask.device)) == 0  # [B, W, 32]
    return blocked.flatten(1)[:, :width]


def unpack_vocab_mask(mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bool [B, vocab_size]: True where the token is allowed; columns past the mask are False."""
    allowed = ~_blocked(mask, vocab_size)
    if allowed.shape[1] >= vocab_size:
        return allowed
    pad = allowed.new_zeros(allowed.shape[0], vocab_size - allowed.shape[1])
    return torch.cat([allowed, pad], dim=1)


def apply_vocab_mask(logits: torch.Tensor, mask: torch.Tensor) -> None:
    """In place: logits [B, V] get -inf where mask [B, ceil(V / 32)] (int32 bits) disallows.

    All-allowed rows (unconstrained requests) are skipped when the mask is on the CPU.
    """
    assert logits.dim() == 2 and mask.dim() == 2, "logits [B, V] and mask [B, W] expected"
    assert logits.shape[0] == mask.shape[0], f"batch {logits.shape[0]} != mask {mask.shape[0]}"
    assert mask.dtype == torch.int32, f"mask must be int32, got {mask.dtype}"
    vocab = logits.shape[1]
    covered = min(vocab, mask.shape[1] * _BITS_PER_WORD)
    if mask.device.type == "cpu" and covered == vocab:
        rows = (mask != -1).any(dim=1).nonzero().flatten()  # CPU: no device sync
        if rows.numel() == 0:
            return
        if rows.numel() < mask.shape[0]:
            rows_on_device = rows.to(logits.device, non_blocking=True)
            sub = logits[rows_on_device]  # [R, V]
            apply_vocab_mask(sub, mask[rows])
            logits[rows_on_device] = sub
            return
    mask = mask.to(logits.device, non_blocking=True)
    logits[:, :covered].masked_fill_(_blocked(mask, covered), float("-inf"))
    logits[:, covered:] = float("-inf")  # tokens past the mask are never allowed
