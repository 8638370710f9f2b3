"""Chat messages and templates in the HTTP process: --chat-template, OpenAI-style messages."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional

_CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"chatml": _CHATML_TEMPLATE}
_CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


def load_chat_template(value: Optional[str]) -> Optional[str]:
    """--chat-template: a file with a Jinja template, the Jinja text itself, or a known name."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if value in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[value]
    if "{{" in value or "{%" in value:
        return value
    raise ValueError(
        f"chat_template={value!r}: not a file, not a Jinja template, and not one of "
        f"{sorted(NAMED_TEMPLATES)}"
    )


def normalize_messages(messages: Any, image_token: Optional[str] = None) -> list[dict[str, Any]]:
    """OpenAI-style messages -> [{"role", "content": str, ...}]; ValueError names a bad message.

    An assistant message keeps its `tool_calls` (arguments as objects, as chat templates expect
    them); a tool message keeps `tool_call_id` and `name`. An image part becomes `image_token`
    where it stands (a model that reads no images has none: the part is refused).
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    return [_normalize_message(i, m, image_token) for i, m in enumerate(messages)]


def message_images(messages: Any) -> list[str]:
    """The URLs of the image parts of OpenAI-style messages, in order."""
    urls = []
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                urls.append(_image_url(part))
    return urls


def _image_url(part: dict[str, Any]) -> str:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise ValueError(f"an image_url part needs image_url.url, got {value!r}")
    return url


def _normalize_message(i: int, message: Any, image_token: Optional[str] = None) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise ValueError(f"messages[{i}] must be an object, got {message!r}")
    role = message.get("role")
    if role not in _CHAT_ROLES:
        raise ValueError(f"messages[{i}].role={role!r}: expected one of {_CHAT_ROLES}")
    role = "system" if role == "developer" else role
    content = _content_text(i, message.get("content"), image_token)
    out: dict[str, Any] = {"role": role, "content": content}
    if role == "assistant" and message.get("tool_calls"):
        out["tool_calls"] = _tool_calls(i, message["tool_calls"])
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(message.get(key), str):
                out[key] = message[key]
    return out


def _tool_calls(i: int, calls: Any) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise ValueError(f"messages[{i}].tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"messages[{i}].tool_calls[{j}] needs function.name")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise ValueError(
                    f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON"
                ) from None
        if not isinstance(args, dict):
            raise ValueError(f"messages[{i}].tool_calls[{j}].function.arguments must be an object")
        out.append(
            {
                "id": call.get("id") or f"call_{j}",
                "type": "function",
                "function": {"name": fn["name"], "arguments": args},
            }
        )
    return out


def _content_text(i: int, content: Any, image_token: Optional[str] = None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"messages[{i}].content must be a string or a list of parts")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url" and image_token is not None:
            texts.append(image_token)
            continue
        if kind != "text" or not isinstance(part.get("text"), str):
            raise ValueError(
                f"messages[{i}].content: part of type {kind!r} is not supported "
                "(the served model takes text parts only)"
            )
        texts.append(part["text"])
    return "".join(texts)


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI `tools` ([{"type": "function", "function": {"name", "parameters", ...}}]), checked."""
    if not isinstance(tools, list):
        raise ValueError("tools must be a list")
    seen: set[str] = set()
    for k, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ValueError(f"tools[{k}]: only tools of type 'function' are supported")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"tools[{k}].function.name must be a non-empty string")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"tools[{k}].function.parameters must be a JSON schema object")
        if fn["name"] in seen:
            raise ValueError(f"tools[{k}]: the function name {fn['name']!r} is given twice")
        seen.add(fn["name"])
    return tools


def with_tools_in_text(
    messages: list[dict[str, Any]],
    tools: Optional[list[dict[str, Any]]],
    instructions: str,
    format_calls: Callable[[list[dict[str, Any]]], str],
    template: str,
) -> list[dict[str, Any]]:
    """For a chat template that renders neither `tools` nor `tool_calls`: the tools described
    in the system message and each assistant turn's calls written out as the model would."""
    out = [dict(m) for m in messages]
    if "tool_calls" not in template:
        for m in out:
            calls = m.pop("tool_calls", None)
            if calls:
                written = format_calls([c["function"] for c in calls])
                m["content"] = (m["content"] + "\n" + written).strip()
    if tools and "tools" not in template:
        listing = "\n".join(json.dumps(t.get("function", t)) for t in tools)
        text = f"You can call these functions:\n{listing}\n\n{instructions}"
        if out[0]["role"] == "system":
            out[0]["content"] = (out[0]["content"] + "\n\n" + text).strip()
        else:
            out.insert(0, {"role": "system", "content": text})
    return out
