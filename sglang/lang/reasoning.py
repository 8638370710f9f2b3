"""Splitting a reasoning model's output into its reasoning and its answer (`separate_reasoning`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReasoningFormat:
    """How a model family marks its reasoning.

    `starts_in_reasoning`: the chat template opens the reasoning block itself, so the output
    is reasoning up to the end marker even without a start marker (DeepSeek-R1).
    """

    start: str
    end: str
    starts_in_reasoning: bool


REASONING_FORMATS: dict[str, ReasoningFormat] = {
    "deepseek-r1": ReasoningFormat("<think>", "</think>", starts_in_reasoning=True),
    "qwen3": ReasoningFormat("<think>", "</think>", starts_in_reasoning=False),
    "kimi": ReasoningFormat("\u25c1think\u25b7", "\u25c1/think\u25b7", starts_in_reasoning=False),
}


def reasoning_var_name(name: str) -> str:
    """The variable that receives the reasoning of variable `name` (SGLang's naming)."""
    return f"{name}_reasoning_content"


def split_reasoning(text: str, model_type: str) -> tuple[str, str]:
    """(reasoning, answer) of one output; the answer has the whitespace after the end marker
    removed. Without markers (and for a family that starts outside reasoning) all is answer."""
    fmt = REASONING_FORMATS.get(model_type)
    if fmt is None:
        raise ValueError(
            f"separate_reasoning(): unknown model_type {model_type!r}; "
            f"known: {sorted(REASONING_FORMATS)}"
        )
    body = text.lstrip()
    opened = body.startswith(fmt.start)
    if opened:
        body = body[len(fmt.start) :]
    elif not fmt.starts_in_reasoning:
        return "", text
    reasoning, sep, answer = body.partition(fmt.end)
    if not sep:
        return reasoning.strip(), ""  # still reasoning when the output ended
    return reasoning.strip(), answer.lstrip()
