"""ToolPlan: what a chat request's `tools` and `tool_choice` mean for its prompt, its grammar and
the parsing of its output.

none: the tools are not shown and nothing is parsed. auto: the model may call; its text is
parsed with the server's --tool-call-parser. required: the grammar forces a JSON list of
{"name", "parameters"} calls (one at most without parallel calls). A named function: the grammar
forces that function's arguments object. Forced outputs are parsed here, not by a parser.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from sglang.srt.function_call.parsers import ToolCall, ToolCallParser, ToolCallStream
from sglang.srt.managers.chat_messages import check_tools


@dataclass
class ToolPlan:
    mode: str  # "none" | "auto" | "required" | "named"
    tools: list[dict[str, Any]] = field(default_factory=list)
    forced_name: Optional[str] = None  # mode "named"
    parallel: bool = True
    parser: Optional[ToolCallParser] = None  # mode "auto"

    @classmethod
    def from_request(
        cls,
        tools: Optional[list[dict[str, Any]]],
        tool_choice: Union[str, dict[str, Any], None],
        parallel_tool_calls: Optional[bool],
        parser: Optional[ToolCallParser],
    ) -> ToolPlan:
        """ValueError names a bad tool, an unknown tool_choice, or auto without a parser."""
        tools = check_tools(tools) if tools else []
        parallel = parallel_tool_calls is not False
        choice = tool_choice if tool_choice is not None else ("auto" if tools else "none")
        if choice == "none":
            return cls("none")
        if not tools:
            raise ValueError(f"tool_choice={choice!r} needs tools")
        if choice == "auto":
            if parser is None:
                raise ValueError(
                    "tool_choice 'auto' needs the server started with --tool-call-parser "
                    "(or use tool_choice 'required' or a named function, which need none)"
                )
            return cls("auto", tools, parallel=parallel, parser=parser)
        if choice == "required":
            return cls("required", tools, parallel=parallel)
        return cls("named", tools, _named_choice(choice, tools), parallel)

    @property
    def names(self) -> set[str]:
        return {t["function"]["name"] for t in self.tools}

    @property
    def template_tools(self) -> Optional[list[dict[str, Any]]]:
        """The tools the prompt shows (none for tool_choice none)."""
        return self.tools or None

    def grammar(self) -> Optional[str]:
        """The JSON schema that forces a call (required / named), or None."""
        if self.mode == "named":
            return json.dumps(self._parameters(self.forced_name))
        if self.mode != "required":
            return None
        calls = [
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [t["function"]["name"]]},
                    "parameters": self._parameters(t["function"]["name"]),
                },
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for t in self.tools
        ]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
        if not self.parallel:
            schema["maxItems"] = 1
        return json.dumps(schema)

    def _parameters(self, name: Optional[str]) -> dict[str, Any]:
        for t in self.tools:
            if t["function"]["name"] == name:
                return t["function"].get("parameters") or {"type": "object"}
        raise AssertionError(f"no tool named {name!r}")

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """(content, calls) of a whole output."""
        if self.mode == "none":
            return text, []
        if self.mode == "auto":
            assert self.parser is not None
            return self._limit(*self.parser.parse(text, self.names))
        return self._parse_forced(text)

    def stream(self) -> Optional[ToolCallStream]:
        """A streaming splitter for auto mode (forced modes parse the whole output at the end)."""
        if self.mode != "auto":
            return None
        assert self.parser is not None
        return ToolCallStream(self.parser, self.names)

    def _limit(self, content: str, calls: list[ToolCall]) -> tuple[str, list[ToolCall]]:
        return content, calls if self.parallel else calls[:1]

    def _parse_forced(self, text: str) -> tuple[str, list[ToolCall]]:
        """A forced output that did not complete (cut by max_tokens) stays content."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text, []
        if self.mode == "named":
            assert self.forced_name is not None
            if not isinstance(value, dict):
                return text, []
            return "", [ToolCall(self.forced_name, json.dumps(value, ensure_ascii=False))]
        if not isinstance(value, list):
            return text, []
        calls = [
            ToolCall(item["name"], json.dumps(item.get("parameters", {}), ensure_ascii=False))
            for item in value
            if isinstance(item, dict) and item.get("name") in self.names
        ]
        return ("", calls) if calls else (text, [])


def _named_choice(choice: Any, tools: list[dict[str, Any]]) -> str:
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(choice, dict) or choice.get("type", "function") != "function" or not name:
        raise ValueError(
            f"tool_choice={choice!r}: expected 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}'
        )
    if name not in {t["function"]["name"] for t in tools}:
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
    return name
