"""Chat templates: how each model family formats roles, matched by model path or read from Jinja."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional

ROLES = ("system", "user", "assistant")


class ChatTemplateStyle(Enum):
    PLAIN = "plain"
    # The system prompt opens the first user turn (llama-2, gemma): the user's own prefix is
    # then left out of the turn that follows the system message.
    SYSTEM_IN_FIRST_USER = "system_in_first_user"


@dataclass
class ChatTemplate:
    """Role prefixes/suffixes of one model family.

    `default_system_prompt` is inserted before a conversation that starts without a system
    message: None means nothing is inserted, "" an empty system turn.
    """

    name: str
    role_prefix_and_suffix: dict[str, tuple[str, str]]
    stop_str: tuple[str, ...] = ()
    default_system_prompt: Optional[str] = None
    image_token: str = "<image>"
    style: ChatTemplateStyle = ChatTemplateStyle.PLAIN
    # Only for templates built from a model's Jinja source
    jinja_source: Optional[str] = field(default=None, repr=False)

    def get_prefix_and_suffix(
        self, role: str, hist_messages: list[dict[str, Any]]
    ) -> tuple[str, str]:
        """The text around a `role` turn that follows `hist_messages`."""
        if role not in self.role_prefix_and_suffix:
            raise ValueError(f"role={role!r}: the {self.name!r} chat template knows {ROLES}")
        prefix, suffix = self.role_prefix_and_suffix[role]
        follows_system = bool(hist_messages) and hist_messages[-1]["role"] == "system"
        if (
            self.style == ChatTemplateStyle.SYSTEM_IN_FIRST_USER
            and role == "user"
            and follows_system
        ):
            prefix = ""
        return prefix, suffix

    def get_prompt(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = False
    ) -> str:
        """Render OpenAI-style text messages into one prompt string."""
        history: list[dict[str, Any]] = []
        if messages and messages[0]["role"] != "system" and self.default_system_prompt is not None:
            messages = [{"role": "system", "content": self.default_system_prompt}, *messages]
        out = []
        for m in messages:
            prefix, suffix = self.get_prefix_and_suffix(m["role"], history)
            out.append(prefix + m["content"] + suffix)
            history.append(m)
        if add_generation_prompt:
            out.append(self.get_prefix_and_suffix("assistant", history)[0])
        return "".join(out)


_TEMPLATES: dict[str, ChatTemplate] = {}
_MATCHERS: list[Callable[[str], Optional[str]]] = []


def register_chat_template(template: ChatTemplate) -> None:
    _TEMPLATES[template.name] = template


def register_chat_template_matcher(
    matcher: Callable[[str], Optional[str]],
) -> Callable[[str], Optional[str]]:
    """Register f(lowercased model path) -> template name or None; later ones are tried first."""
    _MATCHERS.insert(0, matcher)
    return matcher


def get_chat_template(name: str = "default") -> ChatTemplate:
    if name not in _TEMPLATES:
        raise ValueError(f"chat template {name!r} is unknown; known: {sorted(_TEMPLATES)}")
    return _TEMPLATES[name]


def list_chat_templates() -> list[str]:
    return sorted(_TEMPLATES)


def get_chat_template_by_model_path(model_path: Optional[str]) -> ChatTemplate:
    """The template of the model family the path names, else the plain "default" one."""
    path = (model_path or "").lower()
    for matcher in _MATCHERS:
        name = matcher(path)
        if name is not None:
            return get_chat_template(name)
    return get_chat_template("default")


# ---------------------------------------------------------------- templates built from Jinja

_MARK = {"system": "SGLMARKSYSTEM", "user": "SGLMARKUSER", "assistant": "SGLMARKASSISTANT"}


def _jinja_renderer(source: str) -> Callable[[list[dict[str, str]], bool], str]:
    # NOTE: the same environment options transformers uses to render chat templates.
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    def strftime_now(fmt: str) -> str:
        import datetime

        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    template = env.from_string(source)

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token="",
            eos_token="",
        )

    return render


def _msgs(*roles: str, suffix: str = "") -> list[dict[str, str]]:
    return [{"role": r, "content": _MARK[r] + suffix} for r in roles]


def _split_once(text: str, mark: str) -> Optional[tuple[str, str]]:
    if text.count(mark) != 1:
        return None
    head, tail = text.split(mark)
    return head, tail


def _derive_roles(
    render: Callable[[list[dict[str, str]], bool], str],
) -> Optional[dict[str, tuple[str, str]]]:
    """Render growing conversations and read each role's prefix/suffix off the differences."""
    sys_only = render(_msgs("system"), False)
    user_turn = render(_msgs("system", "user"), False)
    gen_prompt = render(_msgs("system", "user"), True)
    full = render(_msgs("system", "user", "assistant"), False)
    if not (
        user_turn.startswith(sys_only)
        and gen_prompt.startswith(user_turn)
        and full.startswith(gen_prompt)
    ):
        return None
    sys_split = _split_once(sys_only, _MARK["system"])
    user_split = _split_once(user_turn[len(sys_only) :], _MARK["user"])
    asst_split = _split_once(full[len(gen_prompt) :], _MARK["assistant"])
    if sys_split is None or user_split is None or asst_split is None or asst_split[0]:
        return None
    return {
        "system": sys_split,
        "user": user_split,
        "assistant": (gen_prompt[len(user_turn) :], asst_split[1]),
    }


def _derive_default_system(
    render: Callable[[list[dict[str, str]], bool], str], roles: dict[str, tuple[str, str]]
) -> tuple[bool, Optional[str]]:
    """(representable, default system prompt) from a conversation that starts with a user turn."""
    head = render(_msgs("user"), False).split(_MARK["user"])[0]
    user_prefix = roles["user"][0]
    if head == user_prefix:
        return True, None
    sys_prefix, sys_suffix = roles["system"]
    body = head[: len(head) - len(user_prefix)] if head.endswith(user_prefix) else None
    if body is None or not (body.startswith(sys_prefix) and body.endswith(sys_suffix)):
        return False, None
    return True, body[len(sys_prefix) : len(body) - len(sys_suffix)]


def chat_template_from_jinja(
    source: str, name: str = "jinja", image_token: str = "<image>"
) -> Optional[ChatTemplate]:
    """Build a ChatTemplate from a model's own Jinja chat template, or None if it cannot be.

    The template is rendered on placeholder messages and split around the placeholders; the
    result is checked by re-rendering a two-turn conversation, so a template whose turns do not
    compose from fixed prefixes and suffixes is rejected rather than approximated.
    """
    try:
        render = _jinja_renderer(source)
        roles = _derive_roles(render)
        if roles is None:
            return None
        ok, default_system = _derive_default_system(render, roles)
    except Exception:  # a template that raises on our placeholders cannot be used
        return None
    if not ok:
        return None
    stop = roles["assistant"][1].strip()
    template = ChatTemplate(
        name=name,
        role_prefix_and_suffix=roles,
        stop_str=(stop,) if stop else (),
        default_system_prompt=default_system,
        image_token=image_token,
        jinja_source=source,
    )
    return template if _agrees_with_jinja(template, render) else None


def _agrees_with_jinja(
    template: ChatTemplate, render: Callable[[list[dict[str, str]], bool], str]
) -> bool:
    for roles in (
        ("system", "user", "assistant", "user", "assistant"),
        ("user", "assistant", "user"),
    ):
        msgs = _msgs(*roles[:3]) + _msgs(*roles[3:], suffix="2")
        for add_generation_prompt in (False, True):
            expected = render(msgs, add_generation_prompt)
            if template.get_prompt(msgs, add_generation_prompt) != expected:
                return False
    return True


# ---------------------------------------------------------------- the registry

_CHATML = {
    "system": ("<|im_start|>system\n", "<|im_end|>\n"),
    "user": ("<|im_start|>user\n", "<|im_end|>\n"),
    "assistant": ("<|im_start|>assistant\n", "<|im_end|>\n"),
}

register_chat_template(
    ChatTemplate(
        name="default",
        role_prefix_and_suffix={
            "system": ("SYSTEM: ", "\n"),
            "user": ("USER: ", "\n"),
            "assistant": ("ASSISTANT:", "\n"),
        },
    )
)
register_chat_template(
    ChatTemplate(name="chatml", role_prefix_and_suffix=dict(_CHATML), stop_str=("<|im_end|>",))
)
register_chat_template(
    ChatTemplate(
        name="qwen",
        role_prefix_and_suffix=dict(_CHATML),
        stop_str=("<|im_end|>",),
        default_system_prompt="You are a helpful assistant.",
        image_token="<|vision_start|><|image_pad|><|vision_end|>",
    )
)
register_chat_template(
    ChatTemplate(
        name="llama-2-chat",
        role_prefix_and_suffix={
            "system": ("[INST] <<SYS>>\n", "\n<</SYS>>\n\n"),
            "user": ("[INST] ", " [/INST]"),
            "assistant": (" ", " </s><s>"),
        },
        stop_str=("</s>",),
        style=ChatTemplateStyle.SYSTEM_IN_FIRST_USER,
    )
)
register_chat_template(
    ChatTemplate(
        name="llama-3-instruct",
        role_prefix_and_suffix={
            role: (f"<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>")
            for role in ROLES
        },
        stop_str=("<|eot_id|>",),
        image_token="<|image|>",
    )
)
register_chat_template(
    ChatTemplate(
        name="mistral",
        role_prefix_and_suffix={
            "system": ("[SYSTEM_PROMPT] ", " [/SYSTEM_PROMPT]"),
            "user": ("[INST] ", " [/INST]"),
            "assistant": (" ", "</s>"),
        },
        stop_str=("</s>",),
        image_token="[IMG]",
    )
)
register_chat_template(
    ChatTemplate(
        name="vicuna",
        role_prefix_and_suffix={
            "system": ("", " "),
            "user": ("USER: ", " "),
            "assistant": ("ASSISTANT:", "</s>"),
        },
        stop_str=("</s>",),
        default_system_prompt=(
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions."
        ),
        image_token=" <image>\n",
    )
)
register_chat_template(
    ChatTemplate(
        name="gemma-it",
        role_prefix_and_suffix={
            "system": ("<start_of_turn>user\n", "\n\n"),
            "user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
            "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n"),
        },
        stop_str=("<end_of_turn>",),
        style=ChatTemplateStyle.SYSTEM_IN_FIRST_USER,
    )
)
register_chat_template(
    ChatTemplate(
        name="claude",
        role_prefix_and_suffix={
            "system": ("", ""),
            "user": ("\n\nHuman: ", ""),
            "assistant": ("\n\nAssistant:", ""),
        },
    )
)


def _has_word(path: str, *words: str) -> bool:
    return any(re.search(rf"(^|[^a-z0-9]){w}([^a-z0-9]|$)", path) for w in words)


@register_chat_template_matcher
def _match_chatml(path: str) -> Optional[str]:
    families = ("smollm", "tinyllama", "openhermes", "hermes", "dolphin", "chatml")
    return "chatml" if any(f in path for f in families) else None


@register_chat_template_matcher
def _match_vicuna(path: str) -> Optional[str]:
    return "vicuna" if "vicuna" in path or "llava-v1.5" in path else None


@register_chat_template_matcher
def _match_mistral(path: str) -> Optional[str]:
    return "mistral" if ("mistral" in path or "mixtral" in path) and "instruct" in path else None


@register_chat_template_matcher
def _match_gemma(path: str) -> Optional[str]:
    return "gemma-it" if "gemma" in path and _has_word(path, "it") else None


@register_chat_template_matcher
def _match_qwen(path: str) -> Optional[str]:
    return "qwen" if "qwen" in path and ("chat" in path or "instruct" in path) else None


@register_chat_template_matcher
def _match_llama(path: str) -> Optional[str]:
    if re.search(r"llama-?2", path) and "chat" in path:
        return "llama-2-chat"
    if re.search(r"llama-?3", path) and "instruct" in path:
        return "llama-3-instruct"
    return None


@register_chat_template_matcher
def _match_claude(path: str) -> Optional[str]:
    return "claude" if "claude" in path else None
