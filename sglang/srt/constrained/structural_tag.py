"""SGLang's structural tags: free text in which tagged segments (tool calls) follow a schema.

The request's `structural_tag` (sampling params) or `response_format` (OpenAI routes) is

    {"type": "structural_tag",
     "structures": [{"begin": "<function=get_weather>", "schema": {...}, "end": "</function>"}],
     "triggers": ["<function="]}

The output is free text until it writes one of the triggers; from there it must complete one
of the structures that begin with that trigger (the rest of `begin`, JSON matching `schema`,
then `end`) before free text resumes. Each structure's `begin` starts with one trigger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Structure:
    begin: str
    schema: dict[str, Any]
    end: str
    trigger: str  # the trigger its begin starts with


def parse_structural_tag(text: str) -> list[Structure]:
    """The structures of a structural tag (a JSON string); ValueError names what is wrong."""
    try:
        tag = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"structural_tag is not valid JSON: {e}") from None
    if not isinstance(tag, dict):
        raise ValueError(f"structural_tag must be a JSON object, got {tag!r:.100}")
    if tag.get("type", "structural_tag") != "structural_tag":
        raise ValueError(f"structural_tag.type must be 'structural_tag', got {tag.get('type')!r}")
    unknown = sorted(set(tag) - {"type", "structures", "triggers"})
    if unknown:
        raise ValueError(
            f"structural_tag: unknown key(s) {unknown}; supported: the structures/triggers form"
        )
    triggers = _triggers(tag.get("triggers"))
    structures = tag.get("structures")
    if not isinstance(structures, list) or not structures:
        raise ValueError("structural_tag.structures must be a non-empty list")
    return [_structure(i, s, triggers) for i, s in enumerate(structures)]


def _triggers(triggers: Any) -> list[str]:
    if not isinstance(triggers, list) or not triggers:
        raise ValueError("structural_tag.triggers must be a non-empty list of strings")
    if not all(isinstance(t, str) and t for t in triggers):
        raise ValueError(f"structural_tag.triggers must be non-empty strings, got {triggers!r}")
    return triggers


def _structure(i: int, s: Any, triggers: list[str]) -> Structure:
    where = f"structural_tag.structures[{i}]"
    if not isinstance(s, dict) or set(s) - {"begin", "schema", "end"}:
        raise ValueError(f"{where} must be an object with begin, schema and end")
    begin, schema, end = s.get("begin"), s.get("schema"), s.get("end", "")
    if not isinstance(begin, str) or not isinstance(end, str):
        raise ValueError(f"{where}: begin and end must be strings")
    if not isinstance(schema, dict):
        raise ValueError(f"{where}.schema must be a JSON schema object")
    starts = [t for t in triggers if begin.startswith(t)]
    if not starts:
        raise ValueError(f"{where}.begin {begin!r} starts with none of the triggers {triggers}")
    return Structure(begin, schema, end, max(starts, key=len))


def to_llguidance(structures: list[Structure]) -> str:
    """The Lark grammar llguidance compiles for these structures (its StructTag form)."""
    import llguidance

    tags = [
        llguidance.StructTag(trigger=s.trigger, begin=s.begin, grammar=s.schema, end=s.end)
        for s in structures
    ]
    # NOTE: triggers are matched as text, not assumed to be special tokens.
    return llguidance.StructTag.to_grammar(tags, assume_special=False)
