"""Scoring methods of `select`: pick one choice from per-token logprobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ChoicesDecision:
    decision: str
    meta_info: dict[str, Any] = field(default_factory=dict)


class ChoicesSamplingMethod:
    """Base class: __call__(choices=..., normalized_prompt_logprobs=..., input_token_logprobs=...,
    output_token_logprobs=..., unconditional_token_logprobs=...) -> ChoicesDecision."""

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return False

    def __call__(self, **kwargs: Any) -> ChoicesDecision:
        raise NotImplementedError()
