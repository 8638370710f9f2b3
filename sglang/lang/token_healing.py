"""Token healing: back the prompt up by its last token and let the model re-choose it.

A prompt that ends in a token which could merge with what follows (a trailing space, part of
a word) puts the model where its training data never was: after "Answer: " the lone space token
is almost never followed by a word, since " Paris" is one token. Healing removes that token's
text from the prompt and constrains the output to start with it, so the model picks " Paris"
itself. The constraint is composed with the gen's own (regex, JSON schema or grammar): the
output must be the removed text followed by something the gen's constraint accepts. The
removed text is then taken off the front of the output, so the program's text reads as the
prompt plus the value, exactly as without healing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

# Whatever the model likes: `[\s\S]` is every character, newlines included.
ANY_TEXT = r"[\s\S]*"
_REGEX_META = set(r"\.^$|?*+()[]{}-#&~")
# Tokens that read like a chat template's special tokens: never healed.
_SPECIAL_TOKEN = re.compile(r"^(<[^\s<>]+>|\[[^\s\[\]]+\])$")
# Server defaults for JSON (compact separators, no keys beyond `properties`), kept when a
# healed JSON gen is sent as a grammar instead of a json_schema.
_JSON_X_GUIDANCE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
_SUBSCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAP_KEYS = ("properties", "$defs", "definitions", "patternProperties")


@dataclass(frozen=True)
class HealingPlan:
    """How one gen is healed: send `prompt` (the state's text less `removed`) with `sampling`."""

    removed: str
    prompt: str
    sampling: dict[str, Any]

    def value_of(self, output: str) -> str:
        """The gen's value: the output without the removed text it starts with.

        An output that stops inside the removed text (max_new_tokens hit, or an abort) adds
        nothing: the prompt still holds the removed text.
        """
        return output[len(self.removed) :] if output.startswith(self.removed) else ""


def can_heal_token(token_text: Optional[str], prompt: str) -> bool:
    """Whether the prompt's last token (its text) is one to heal."""
    if not token_text or not prompt.endswith(token_text) or len(token_text) == len(prompt):
        return False
    if "\n" in token_text or _SPECIAL_TOKEN.match(token_text):
        return False  # a turn boundary or a special token: nothing merges with it usefully
    return True


def stops_overlap(removed: str, stops: list[str], stop_regexes: list[str]) -> bool:
    """True when a stop could match inside the removed text (the output starts with it)."""
    for stop in stops:
        for i in range(len(removed)):
            tail = removed[i:]
            if stop.startswith(tail) or stop in tail:
                return True
    for pattern in stop_regexes:
        if re.search(pattern, removed):
            return True
    return False


def regex_literal(text: str) -> str:
    """A regex matching exactly `text` (metacharacters escaped, control characters as \\xNN),
    in the syntax both Python's `re` and the runtime's Rust regex engine read."""
    out = []
    for ch in text:
        if ch in _REGEX_META:
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def heal_regex(removed: str, regex: Optional[str]) -> str:
    """The removed text followed by what `regex` accepts (anything when None)."""
    return regex_literal(removed) + (f"(?:{regex})" if regex is not None else ANY_TEXT)


def heal_json_schema(removed: str, schema_text: str) -> Optional[str]:
    """A Lark grammar (llguidance's dialect): the removed text, then a JSON value of the schema.

    None for a boolean schema (nothing to compose with).
    """
    schema = json.loads(schema_text)
    if not isinstance(schema, dict):
        return None
    schema = _no_extra_keys(schema)
    schema["x-guidance"] = dict(_JSON_X_GUIDANCE)
    return f"start: {_lark_string(removed)} sgl_healed_json\nsgl_healed_json: %json {json.dumps(schema)}\n"


def heal_grammar(removed: str, grammar: str) -> str:
    """The removed text, then what the grammar accepts (GBNF with `root`, or Lark with `start`).

    The grammar's root rule is renamed (outside string, class and regex literals) and a new root
    puts the removed text in front of it.
    """
    if "::=" in grammar:
        body = _rename_rule(grammar, "root", "sgl_healed_root", gbnf=True)
        return f"root ::= {_lark_string(removed)} sgl_healed_root\n{body}"
    body = _rename_rule(grammar, "start", "sgl_healed_start", gbnf=False)
    return f"start: {_lark_string(removed)} sgl_healed_start\n{body}"


def _lark_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


_GBNF_SKIP = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\n]*')
_LARK_SKIP = re.compile(r'"(?:\\.|[^"\\])*"i?|//[^\n]*|/(?:\\.|[^/\\\n])+/[imslux]*')


def _rename_rule(grammar: str, old: str, new: str, gbnf: bool) -> str:
    """Rename the identifier `old` to `new` everywhere but inside literals and comments."""
    skip = _GBNF_SKIP if gbnf else _LARK_SKIP
    word = re.compile(rf"(?<![\w-]){re.escape(old)}(?![\w-])")
    out, pos = [], 0
    for m in skip.finditer(grammar):
        out.append(word.sub(new, grammar[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(word.sub(new, grammar[pos:]))
    return "".join(out)


def _no_extra_keys(schema: Any) -> Any:
    """Objects that list `properties` allow no other keys unless the schema says so: the
    runtime's default for json_schema, kept for a healed gen sent as a grammar."""
    if isinstance(schema, list):
        return [_no_extra_keys(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_KEYS:
        if isinstance(out.get(key), (dict, list)):
            out[key] = _no_extra_keys(out[key])
    for key in _SUBSCHEMA_LIST_KEYS:
        if isinstance(out.get(key), list):
            out[key] = [_no_extra_keys(item) for item in out[key]]
    for key in _SUBSCHEMA_MAP_KEYS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _no_extra_keys(sub) for name, sub in out[key].items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def plan_constraint(
    removed: str, sampling: dict[str, Any], grammar_backend: Optional[str]
) -> Optional[dict[str, Any]]:
    """The gen's `sampling_params` with its constraint composed behind the removed text; None
    when it cannot be composed (JSON and grammars need the llguidance backend)."""
    out = dict(sampling)
    if "regex" in out:
        out["regex"] = heal_regex(removed, out["regex"])
        return out
    if "json_schema" in out or "ebnf" in out:
        if grammar_backend != "llguidance":
            return None
        if "json_schema" in out:
            grammar = heal_json_schema(removed, out.pop("json_schema"))
            if grammar is None:
                return None
            out["ebnf"] = grammar
        else:
            out["ebnf"] = heal_grammar(removed, out["ebnf"])
        return out
    out["regex"] = heal_regex(removed, None)
    return out
