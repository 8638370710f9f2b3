"""Chat messages and templates in the HTTP process: --chat-template, OpenAI-style messages."""

from __future__ import annotations

import os
from typing import Any, Optional

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


def normalize_messages(messages: Any) -> list[dict[str, str]]:
    """OpenAI-style messages -> [{"role", "content": str}]; ValueError names a bad message."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    return [_normalize_message(i, m) for i, m in enumerate(messages)]


def _normalize_message(i: int, message: Any) -> dict[str, str]:
    if not isinstance(message, dict):
        raise ValueError(f"messages[{i}] must be an object, got {message!r}")
    role = message.get("role")
    if role not in _CHAT_ROLES:
        raise ValueError(f"messages[{i}].role={role!r}: expected one of {_CHAT_ROLES}")
    role = "system" if role == "developer" else role
    return {"role": role, "content": _content_text(i, message.get("content"))}


def _content_text(i: int, content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"messages[{i}].content must be a string or a list of parts")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise ValueError(
                f"messages[{i}].content: part of type {kind!r} is not supported "
                "(the served model takes text parts only)"
            )
        texts.append(part["text"])
    return "".join(texts)


