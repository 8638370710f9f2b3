"""Parsers of the tool calls a model writes in its text, one class per format (--tool-call-parser).

A parser splits a finished output into its normal text and its calls; ToolCallStream does the
same for a stream, holding back only text that could still turn out to start a call, so what it
has sent as content is never taken back. A call section that does not parse (or names a
function the request did not offer) stays normal text.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self, index: Optional[int] = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        if index is not None:
            out["index"] = index
        return out


class ToolCallParser(ABC):
    """One model family's tool-call format."""

    name: ClassVar[str]

    def parse(self, text: str, tool_names: set[str]) -> tuple[str, list[ToolCall]]:
        """(normal text, calls) of a whole output."""
        start = self.call_start(text)
        if start is None:
            return text, []
        calls = self.parse_section(text[start:])
        if calls is None or not calls or any(c.name not in tool_names for c in calls):
            return text, []
        return text[:start], calls

    @abstractmethod
    def call_start(self, text: str) -> Optional[int]:
        """Where the tool-call section begins in `text`, or None."""

    @abstractmethod
    def holdback(self, text: str) -> int:
        """How many trailing characters of `text` (no call started yet) could begin one."""

    @abstractmethod
    def parse_section(self, section: str) -> Optional[list[ToolCall]]:
        """The calls of a section that starts where call_start said; None if it is malformed."""

    @abstractmethod
    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        """An assistant turn's calls ({"name", "arguments": dict}) written as the model would."""

    @abstractmethod
    def instructions(self) -> str:
        """How to call a function in this format (for templates that do not render tools)."""


def _json_args(value: Any) -> Optional[str]:
    """Arguments as JSON object text; None when they are not an object."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if not isinstance(value, dict):
        return None
    return json.dumps(value, ensure_ascii=False)


def _call_from_obj(obj: Any, args_keys: tuple[str, ...]) -> Optional[ToolCall]:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args: Any = {}
    for key in args_keys:
        if key in obj:
            args = obj[key]
            break
    text = _json_args(args)
    return None if text is None else ToolCall(obj["name"], text)


def _prefix_holdback(text: str, token: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `token`."""
    for n in range(min(len(token) - 1, len(text)), 0, -1):
        if token.startswith(text[-n:]):
            return n
    return 0


def _leading_holdback(text: str) -> int:
    """For formats whose calls start the output: hold it all while it is only whitespace."""
    return len(text) if not text.strip() else 0


class _MarkerParser(ToolCallParser):
    """A format whose calls begin with the marker START, anywhere in the text."""

    START = ""

    def call_start(self, text: str) -> Optional[int]:
        i = text.find(self.START)
        return None if i < 0 else i

    def holdback(self, text: str) -> int:
        return _prefix_holdback(text, self.START)


class HermesParser(_MarkerParser):
    """`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call."""

    name = "hermes"
    START, END = "<tool_call>", "</tool_call>"
    _BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

    def parse_section(self, section: str) -> Optional[list[ToolCall]]:
        blocks = self._BLOCK.findall(section)
        rest = self._BLOCK.sub("", section).strip()
        if not blocks or rest:
            return None
        calls = []
        for block in blocks:
            try:
                call = _call_from_obj(json.loads(block), ("arguments", "parameters"))
            except json.JSONDecodeError:
                return None
            if call is None:
                return None
            calls.append(call)
        return calls

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        return "\n".join(
            f"{self.START}\n{json.dumps({'name': c['name'], 'arguments': c['arguments']})}\n{self.END}"
            for c in calls
        )

    def instructions(self) -> str:
        return (
            "To call a function, reply with one block per call:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <arguments-json-object>}\n'
            "</tool_call>"
        )


class Qwen25Parser(HermesParser):
    """Qwen2.5's format: Hermes' `<tool_call>` blocks."""

    name = "qwen25"


class MistralParser(_MarkerParser):
    """`[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`."""

    name = "mistral"
    START = "[TOOL_CALLS]"

    def parse_section(self, section: str) -> Optional[list[ToolCall]]:
        try:
            items = json.loads(section[len(self.START) :].strip())
        except json.JSONDecodeError:
            return None
        items = items if isinstance(items, list) else [items]
        calls = [_call_from_obj(item, ("arguments", "parameters")) for item in items]
        return None if any(c is None for c in calls) else calls  # type: ignore[return-value]

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        body = [{"name": c["name"], "arguments": c["arguments"]} for c in calls]
        return f"{self.START} {json.dumps(body)}"

    def instructions(self) -> str:
        return (
            "To call functions, reply with [TOOL_CALLS] followed by a JSON list of calls: "
            '[TOOL_CALLS] [{"name": <function-name>, "arguments": <arguments-json-object>}]'
        )


class Llama3Parser(ToolCallParser):
    """Llama 3.x JSON calls: `{"name": ..., "parameters": {...}}` at the start of the output
    (or after `<|python_tag|>`), several separated by `;`."""

    name = "llama3"
    TAG = "<|python_tag|>"

    def call_start(self, text: str) -> Optional[int]:
        i = text.find(self.TAG)
        if i >= 0:
            return i
        return 0 if text.lstrip().startswith("{") else None

    def holdback(self, text: str) -> int:
        return max(_leading_holdback(text), _prefix_holdback(text, self.TAG))

    def parse_section(self, section: str) -> Optional[list[ToolCall]]:
        section = section.replace(self.TAG, "").strip()
        decoder = json.JSONDecoder()
        calls, pos = [], 0
        while pos < len(section):
            try:
                obj, end = decoder.raw_decode(section, pos)
            except json.JSONDecodeError:
                return None
            call = _call_from_obj(obj, ("parameters", "arguments"))
            if call is None:
                return None
            calls.append(call)
            pos = end
            while pos < len(section) and section[pos] in " \n\t;":
                pos += 1
        return calls

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        return "; ".join(
            json.dumps({"name": c["name"], "parameters": c["arguments"]}) for c in calls
        )

    def instructions(self) -> str:
        return (
            "To call a function, reply with only a JSON object: "
            '{"name": <function-name>, "parameters": <arguments-json-object>} '
            "(several calls separated by ;)."
        )


class PythonicParser(ToolCallParser):
    """A Python list of calls as the whole output: `[get_weather(city="Paris"), now()]`."""

    name = "pythonic"

    def call_start(self, text: str) -> Optional[int]:
        return 0 if text.lstrip().startswith("[") else None

    def holdback(self, text: str) -> int:
        return _leading_holdback(text)

    def parse_section(self, section: str) -> Optional[list[ToolCall]]:
        try:
            tree = ast.parse(section.strip(), mode="eval").body
        except SyntaxError:
            return None
        if not isinstance(tree, ast.List):
            return None
        calls = []
        for node in tree.elts:
            call = _pythonic_call(node)
            if call is None:
                return None
            calls.append(call)
        return calls

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        def one(c: dict[str, Any]) -> str:
            args = ", ".join(f"{k}={v!r}" for k, v in (c["arguments"] or {}).items())
            return f"{c['name']}({args})"

        return "[" + ", ".join(one(c) for c in calls) + "]"

    def instructions(self) -> str:
        return (
            "To call functions, reply with only a Python list of calls with keyword "
            'arguments, e.g. [func_name(param="value"), other_func()].'
        )


def _pythonic_call(node: ast.AST) -> Optional[ToolCall]:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
        return None
    args = {}
    for kw in node.keywords:
        if kw.arg is None:
            return None
        try:
            args[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            return None
    return ToolCall(node.func.id, json.dumps(args, ensure_ascii=False))


PARSERS: dict[str, type[ToolCallParser]] = {
    p.name: p for p in (HermesParser, Qwen25Parser, Llama3Parser, MistralParser, PythonicParser)
}


def get_parser(name: str) -> ToolCallParser:
    if name not in PARSERS:
        raise ValueError(f"tool_call_parser={name!r}: expected one of {sorted(PARSERS)}")
    return PARSERS[name]()


class ToolCallStream:
    """Splits a streamed output into content deltas and, at the end, its calls.

    feed() returns content that is safe to send now; finish() returns the rest of the content
    and the calls (a section that did not parse comes back as content).
    """

    def __init__(self, parser: ToolCallParser, tool_names: set[str]) -> None:
        self.parser = parser
        self.tool_names = tool_names
        self.text = ""
        self.sent = 0  # characters of self.text sent as content
        self.section_start: Optional[int] = None

    def feed(self, delta: str) -> str:
        self.text += delta
        if self.section_start is None:
            start = self.parser.call_start(self.text)
            if start is not None and start >= self.sent:
                self.section_start = start
        if self.section_start is not None:
            safe = self.section_start
        else:
            safe = len(self.text) - self.parser.holdback(self.text)
        out = self.text[self.sent : max(safe, self.sent)]
        self.sent = max(safe, self.sent)
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        rest = self.text[self.sent :]
        if self.section_start is None:
            self.sent = len(self.text)
            return rest, []
        # NOTE: in a call section nothing past its start was sent, so `rest` is the section.
        calls = self.parser.parse_section(rest)
        self.sent = len(self.text)
        if not calls or any(c.name not in self.tool_names for c in calls):
            return rest, []
        return "", calls
