"""Splitting a reasoning model's output into its reasoning and its answer (--reasoning-parser).

deepseek-r1: the output starts inside the reasoning (the template opened `<think>`), which ends at
`</think>`; a `<think>` the model writes itself is dropped. qwen3: reasoning only when the output
starts with `<think>` (with enable_thinking off the model answers directly).
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_START, THINK_END = "<think>", "</think>"


@dataclass(frozen=True)
class ReasoningFormat:
    name: str
    # True: the output is reasoning until THINK_END even without a THINK_START.
    starts_in_reasoning: bool


REASONING_FORMATS = {
    "deepseek-r1": ReasoningFormat("deepseek-r1", starts_in_reasoning=True),
    "qwen3": ReasoningFormat("qwen3", starts_in_reasoning=False),
}


def get_reasoning_format(name: str) -> ReasoningFormat:
    if name not in REASONING_FORMATS:
        raise ValueError(f"reasoning_parser={name!r}: expected one of {sorted(REASONING_FORMATS)}")
    return REASONING_FORMATS[name]


def split_reasoning(fmt: ReasoningFormat, text: str) -> tuple[str, str]:
    """(reasoning, content) of a whole output."""
    stream = ReasoningStream(fmt)
    r1, c1 = stream.feed(text)
    r2, c2 = stream.finish()
    return r1 + r2, c1 + c2


class ReasoningStream:
    """Feeds output deltas; returns (reasoning delta, content delta), holding back only text that
    could still be part of a think tag."""

    def __init__(self, fmt: ReasoningFormat) -> None:
        self.fmt = fmt
        self.buffer = ""
        # "start": before the first non-space text; "reasoning"; "content"
        self.state = "start"
        self._after_end = False  # newlines right after `</think>` belong to neither part

    def feed(self, delta: str) -> tuple[str, str]:
        self.buffer += delta
        reasoning, content = "", ""
        while True:
            step = self._step()
            if step is None:
                return reasoning, content
            r, c = step
            reasoning, content = reasoning + r, content + c

    def finish(self) -> tuple[str, str]:
        """What is left: held-back text goes where the current state says."""
        rest, self.buffer = self.buffer, ""
        if self.state == "reasoning" or (self.state == "start" and self.fmt.starts_in_reasoning):
            return rest, ""
        return "", rest

    def _step(self) -> "tuple[str, str] | None":
        """Consume what can be decided from the buffer; None when nothing more can be."""
        buf = self.buffer
        if self.state == "start":
            stripped = buf.lstrip()
            if stripped.startswith(THINK_START):
                self.buffer = stripped[len(THINK_START) :]
                self.state = "reasoning"
                return "", ""
            if not stripped or THINK_START.startswith(stripped):
                return None  # could still become `<think>`
            self.state = "reasoning" if self.fmt.starts_in_reasoning else "content"
            return "", ""
        if self.state == "content":
            if self._after_end:
                buf = buf.lstrip("\n")
                self._after_end = not buf
            self.buffer = ""
            return ("", buf) if buf else None
        end = buf.find(THINK_END)
        if end >= 0:
            self.buffer = buf[end + len(THINK_END) :]
            self.state = "content"
            self._after_end = True
            return buf[:end], ""
        keep = _partial_suffix(buf, THINK_END)
        if keep == len(buf):
            return None
        self.buffer = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], ""


def _partial_suffix(text: str, token: str) -> int:
    for n in range(min(len(token) - 1, len(text)), 0, -1):
        if token.startswith(text[-n:]):
            return n
    return 0
