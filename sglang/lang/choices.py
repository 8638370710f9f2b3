"""Scoring methods of `select`: pick one choice from per-token logprobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

# A logprob entry as the runtime returns it: [logprob, token_id, token_text_or_None]
TokenLogprob = Sequence[Any]


@dataclass
class ChoicesDecision:
    decision: str
    meta_info: dict[str, Any] = field(default_factory=dict)


class ChoicesSamplingMethod:
    """Base class: __call__(choices=..., normalized_prompt_logprobs=..., input_token_logprobs=...,
    output_token_logprobs=..., unconditional_token_logprobs=...) -> ChoicesDecision.

    `input_token_logprobs[i]` holds the entries of choice i's own tokens only (the prompt's
    tokens already dropped); `normalized_prompt_logprobs[i]` is their mean logprob.
    """

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return False

    def __call__(self, **kwargs: Any) -> ChoicesDecision:
        raise NotImplementedError()


def token_logprob_values(entries: Sequence[TokenLogprob]) -> list[float]:
    """The logprobs of `entries`, skipping those without one (the very first token of a text)."""
    return [float(e[0]) for e in entries if e[0] is not None]


def mean_logprob(entries: Sequence[TokenLogprob]) -> float:
    values = token_logprob_values(entries)
    return sum(values) / len(values) if values else 0.0


def argmax(scores: Sequence[float]) -> int:
    """Index of the highest score; the first one on ties."""
    best = 0
    for i, score in enumerate(scores):
        if score > scores[best]:
            best = i
    return best


def _base_meta(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "normalized_prompt_logprobs": list(kwargs["normalized_prompt_logprobs"]),
        "input_token_logprobs": kwargs["input_token_logprobs"],
        "output_token_logprobs": kwargs.get("output_token_logprobs"),
    }


class TokenLengthNormalized(ChoicesSamplingMethod):
    """Pick the choice with the highest mean token logprob (the default)."""

    def __call__(self, **kwargs: Any) -> ChoicesDecision:
        scores = kwargs["normalized_prompt_logprobs"]
        return ChoicesDecision(kwargs["choices"][argmax(scores)], _base_meta(kwargs))


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Compare choices token by token: keep those with the best logprob at each position.

    A choice shorter than the position being compared counts with its mean logprob there.
    """

    def __call__(self, **kwargs: Any) -> ChoicesDecision:
        rows = [token_logprob_values(e) for e in kwargs["input_token_logprobs"]]
        remaining = list(range(len(rows)))
        for pos in range(max((len(r) for r in rows), default=0)):
            at_pos = {i: _value_at(rows[i], pos) for i in remaining}
            best = max(at_pos.values())
            remaining = [i for i in remaining if at_pos[i] == best]
            if len(remaining) == 1:
                break
        return ChoicesDecision(kwargs["choices"][remaining[0]], _base_meta(kwargs))


def _value_at(row: list[float], pos: int) -> float:
    if pos < len(row):
        return row[pos]
    return sum(row) / len(row) if row else 0.0


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """Pick the choice whose mean logprob gains most from the prompt.

    score_i = mean logprob of choice i after the prompt - mean logprob of choice i on its own
    (the first token of a lone choice has no logprob and is left out of its mean).
    """

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return True

    def __call__(self, **kwargs: Any) -> ChoicesDecision:
        unconditional: Optional[list[Any]] = kwargs.get("unconditional_token_logprobs")
        if unconditional is None:
            raise ValueError(
                "unconditional_likelihood_normalized needs unconditional_token_logprobs"
            )
        conditional = kwargs["normalized_prompt_logprobs"]
        scores = [c - mean_logprob(u) for c, u in zip(conditional, unconditional)]
        meta = _base_meta(kwargs)
        meta["unconditional_token_logprobs"] = unconditional
        meta["normalized_unconditional_prompt_logprobs"] = scores
        return ChoicesDecision(kwargs["choices"][argmax(scores)], meta)


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
