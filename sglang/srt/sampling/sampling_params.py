"""SamplingParams of one request: parsed from the HTTP dict, validated, normalized."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

# The constraint fields, at most one per request (the grammar kinds of constrained/)
GRAMMAR_FIELDS = ("regex", "json_schema", "ebnf", "structural_tag")

_GREEDY_EPS = 1e-6


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    stop: Union[str, list[str], None] = None
    stop_token_ids: Optional[list[int]] = None
    stop_regex: Union[str, list[str], None] = None  # stop where the output matches a pattern
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    n: int = 1
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    regex: Optional[str] = None
    json_schema: Optional[str] = None  # always a JSON string after normalize()
    ebnf: Optional[str] = None
    seed: Optional[int] = None  # SGLang's `sampling_seed` is accepted as an alias
    # {token id (a string, as JSON keys are): bias added to its logit}; -100 bans a token
    logit_bias: Optional[dict[str, float]] = None
    # Free-form parameters for a custom logit processor (kept with the request, unused by us)
    custom_params: Optional[dict[str, Any]] = None
    stream_interval: Optional[int] = None  # per-request override of --stream-interval
    # SGLang's structural tag (a JSON string or object): free text with schema-bound tagged
    # segments (constrained/structural_tag.py)
    structural_tag: Optional[Union[str, dict[str, Any]]] = None
    # Filled by normalize(): the stop strings and stop patterns as lists
    stop_strs: list[str] = field(default_factory=list)
    stop_regexes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]]) -> "SamplingParams":
        """Build from a request's `sampling_params`; ValueError names an unknown or bad field."""
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ValueError(f"sampling_params must be an object, got {type(d).__name__}")
        d = _merge_seed_alias(d)
        known = {f.name for f in dataclasses.fields(cls)} - {"stop_strs", "stop_regexes"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        d = {k: v for k, v in d.items() if v is not None or k in _NULLABLE}
        params = cls(**d)
        params.verify()
        params.normalize()
        return params

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS or self.top_k == 1

    @property
    def grammar(self) -> Optional[tuple[str, str]]:
        """(kind, text) of the constraint, or None."""
        for kind in GRAMMAR_FIELDS:
            value = getattr(self, kind)
            if value is not None:
                return kind, value
        return None

    def verify(self) -> None:
        _check_type("max_new_tokens", self.max_new_tokens, int)
        _check_type("min_new_tokens", self.min_new_tokens, int)
        _check_type("n", self.n, int)
        _check_type("top_k", self.top_k, int)
        for name in ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty",
                     "repetition_penalty"):
            _check_type(name, getattr(self, name), (int, float))
        for name in ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
                     "no_stop_trim"):
            _check_type(name, getattr(self, name), bool)
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens "
                f"({self.max_new_tokens})"
            )
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 1 and self.top_k != -1:
            raise ValueError(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not -2 <= self.frequency_penalty <= 2:
            raise ValueError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        if not -2 <= self.presence_penalty <= 2:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        if not 0 < self.repetition_penalty <= 2:
            raise ValueError(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        if not 1 <= self.n <= 128:
            raise ValueError(f"n must be in [1, 128], got {self.n}")
        self._verify_stop()
        self._verify_grammar()
        if self.seed is not None:
            _check_type("seed", self.seed, int)
        self._verify_extras()

    def _verify_extras(self) -> None:
        if self.logit_bias is not None:
            self.logit_bias_ids()  # raises on bad keys or values
            if self.logit_bias and self.repetition_penalty != 1.0:
                raise ValueError("logit_bias cannot be combined with repetition_penalty != 1")
        if self.custom_params is not None and not isinstance(self.custom_params, dict):
            raise ValueError(f"custom_params must be an object, got {self.custom_params!r}")
        if self.stream_interval is not None:
            _check_type("stream_interval", self.stream_interval, int)
            if self.stream_interval < 1:
                raise ValueError(f"stream_interval must be >= 1, got {self.stream_interval}")

    def logit_bias_ids(self) -> dict[int, float]:
        """logit_bias with int keys; ValueError names a key that is not a token id or a bias
        outside [-100, 100]."""
        if self.logit_bias is None:
            return {}
        if not isinstance(self.logit_bias, dict):
            raise ValueError(f"logit_bias must be an object, got {self.logit_bias!r}")
        out: dict[int, float] = {}
        for key, value in self.logit_bias.items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"logit_bias key {key!r} is not a token id") from None
            if token < 0:
                raise ValueError(f"logit_bias key {key!r} is not a token id")
            _check_type(f"logit_bias[{key!r}]", value, (int, float))
            if not -100 <= value <= 100:
                raise ValueError(f"logit_bias[{key!r}] must be in [-100, 100], got {value}")
            out[token] = float(value)
        return out

    def _verify_stop(self) -> None:
        stop = self.stop
        if stop is not None and not isinstance(stop, (str, list)):
            raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")
        if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
            raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")
        if self.stop_token_ids is not None:
            ids = self.stop_token_ids
            if not isinstance(ids, list) or not all(_is_int(i) and i >= 0 for i in ids):
                raise ValueError(f"stop_token_ids must be a list of token ids, got {ids!r}")
        for pattern in _as_list(self.stop_regex, "stop_regex"):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"stop_regex {pattern!r} is not a valid regex: {e}") from None

    def _verify_grammar(self) -> None:
        given = [k for k in GRAMMAR_FIELDS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"at most one of {', '.join(GRAMMAR_FIELDS)} may be set; got {given}")
        if self.regex is not None:
            _check_type("regex", self.regex, str)
            if self.regex == "":
                raise ValueError("regex must not be empty")
        if self.ebnf is not None:
            _check_type("ebnf", self.ebnf, str)
            if not self.ebnf.strip():
                raise ValueError("ebnf must not be empty")
        if self.json_schema is not None and not isinstance(self.json_schema, (str, dict, bool)):
            raise ValueError(f"json_schema must be a JSON string or an object, got {self.json_schema!r}")
        if self.structural_tag is not None:
            from sglang.srt.constrained.structural_tag import parse_structural_tag

            tag = self.structural_tag
            if not isinstance(tag, (str, dict)):
                raise ValueError(f"structural_tag must be a JSON string or an object, got {tag!r}")
            parse_structural_tag(tag if isinstance(tag, str) else json.dumps(tag))

    def normalize(self) -> None:
        if self.stop is None:
            self.stop_strs = []
        elif isinstance(self.stop, str):
            self.stop_strs = [self.stop] if self.stop else []
        else:
            self.stop_strs = [s for s in self.stop if s]
        self.stop_regexes = [p for p in _as_list(self.stop_regex, "stop_regex") if p]
        if self.json_schema is not None and not isinstance(self.json_schema, str):
            self.json_schema = json.dumps(self.json_schema)
        if self.structural_tag is not None and not isinstance(self.structural_tag, str):
            self.structural_tag = json.dumps(self.structural_tag)
        if self.json_schema is not None:
            try:
                json.loads(self.json_schema)
            except json.JSONDecodeError as e:
                raise ValueError(f"json_schema is not valid JSON: {e}") from None
        self.temperature = float(self.temperature)
        self.top_p = float(self.top_p)
        self.min_p = float(self.min_p)
        if self.top_k == -1:
            self.top_k = 1 << 30  # "off": larger than any vocabulary

    def max_stop_str_len(self) -> int:
        return max((len(s) for s in self.stop_strs), default=0)


_NULLABLE = {
    "stop",
    "stop_token_ids",
    "stop_regex",
    "regex",
    "json_schema",
    "ebnf",
    "seed",
    "logit_bias",
    "custom_params",
    "stream_interval",
    "structural_tag",
}


def _merge_seed_alias(d: dict[str, Any]) -> dict[str, Any]:
    """SGLang names the seed `sampling_seed`; ours is `seed`. Either is accepted, not both."""
    if "sampling_seed" not in d:
        return d
    d = dict(d)
    alias = d.pop("sampling_seed")
    if alias is not None:
        if d.get("seed") is not None and d["seed"] != alias:
            raise ValueError(f"seed ({d['seed']}) and sampling_seed ({alias}) disagree")
        d["seed"] = alias
    return d


def _as_list(value: Union[str, list[str], None], name: str) -> list[str]:
    """A string-or-list field as a list; ValueError for anything else."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{name} must be a string or a list of strings, got {value!r}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_type(name: str, value: Any, types: Any) -> None:
    ok = isinstance(value, types)
    if types is int or types == (int, float):
        ok = ok and not isinstance(value, bool)
    if not ok:
        raise ValueError(f"{name} has the wrong type: {value!r}")
