"""select's scoring methods on given logprobs, and how a choice's own tokens are found."""

from __future__ import annotations

import math

import pytest
from scripted_backend import ScriptedBackend

import sglang as sgl
from sglang.lang.backend.runtime_endpoint import choice_token_logprobs
from sglang.lang.choices import (
    greedy_token_selection,
    mean_logprob,
    token_length_normalized,
    unconditional_likelihood_normalized,
)


def entries(*lps: float) -> list[list[object]]:
    return [[lp, i, f"t{i}"] for i, lp in enumerate(lps)]


def decide(method, choices, lps, uncond=None):
    return method(
        choices=choices,
        normalized_prompt_logprobs=[mean_logprob(x) for x in lps],
        input_token_logprobs=lps,
        output_token_logprobs=[[] for _ in choices],
        unconditional_token_logprobs=uncond,
    )


def test_token_length_normalized_picks_the_best_mean() -> None:
    # "long" has the lower total (-3.0 < -2.0) but the higher mean (-0.75 > -1.0).
    lps = [entries(-1.0, -1.0), entries(-0.75, -0.75, -0.75, -0.75)]
    d = decide(token_length_normalized, ["short", "long"], lps)
    assert d.decision == "long"
    assert d.meta_info["normalized_prompt_logprobs"] == [-1.0, -0.75]
    assert d.meta_info["input_token_logprobs"] is lps


def test_ties_go_to_the_first_choice() -> None:
    d = decide(token_length_normalized, ["a", "b"], [entries(-1.0), entries(-1.0)])
    assert d.decision == "a"


def test_greedy_token_selection_compares_token_by_token() -> None:
    # Means favour "b"; greedy looks at the first token first, where "a" wins.
    lps = [entries(-0.1, -5.0), entries(-0.2, -0.2)]
    assert decide(token_length_normalized, ["a", "b"], lps).decision == "b"
    assert decide(greedy_token_selection, ["a", "b"], lps).decision == "a"


def test_greedy_pads_shorter_choices_with_their_mean() -> None:
    # Tie on token 0; at token 1, "a" (one token) counts its mean -0.5 against "b"'s -0.9.
    lps = [entries(-0.5), entries(-0.5, -0.9)]
    assert decide(greedy_token_selection, ["a", "b"], lps).decision == "a"
    lps = [entries(-0.5), entries(-0.5, -0.1)]
    assert decide(greedy_token_selection, ["a", "b"], lps).decision == "b"


def test_unconditional_likelihood_normalized_subtracts_the_choice_alone() -> None:
    lps = [entries(-1.0), entries(-2.0)]
    # On its own "b" is very unlikely (-6.0), so the prompt raises it most.
    uncond = [[[None, 0, "a"], [-1.5, 1, "x"]], [[None, 0, "b"], [-6.0, 1, "y"]]]
    d = decide(unconditional_likelihood_normalized, ["a", "b"], lps, uncond)
    assert d.decision == "b"
    assert d.meta_info["normalized_unconditional_prompt_logprobs"] == [-1.0 + 1.5, -2.0 + 6.0]
    assert unconditional_likelihood_normalized.requires_unconditional_logprobs
    assert not token_length_normalized.requires_unconditional_logprobs


def test_unconditional_method_without_unconditional_logprobs_is_an_error() -> None:
    with pytest.raises(ValueError, match="unconditional"):
        decide(unconditional_likelihood_normalized, ["a"], [entries(-1.0)])


def test_mean_logprob_skips_missing_logprobs() -> None:
    assert mean_logprob([[None, 0, "x"], [-1.0, 1, "y"], [-3.0, 2, "z"]]) == -2.0
    assert mean_logprob([]) == 0.0


def test_choice_tokens_drop_prompt_tokens_and_keep_a_merged_boundary_token() -> None:
    # Prompt "The answer is" + choice " Paris": the two entries before the choice are the
    # prompt's last tokens and are dropped.
    clean = [[-1.0, 1, " answer"], [-2.0, 2, " is"], [-0.5, 3, " Par"], [-0.1, 4, "is"]]
    assert choice_token_logprobs(clean, " Paris", 2) == clean[2:]
    # Prompt "The answer is " + choice "Paris": the tokenizer merged the trailing space with
    # the choice into " Par", which reaches into the choice and is kept.
    merged = [[-1.0, 1, " answer"], [-2.0, 2, " is"], [-0.5, 3, " Par"], [-0.1, 4, "is"]]
    assert choice_token_logprobs(merged, "Paris", 3) == merged[2:]


def test_choice_tokens_without_token_texts_use_the_prompt_length() -> None:
    lps = [[-1.0, 1, None], [-2.0, 2, None], [-0.5, 3, None]]
    assert choice_token_logprobs(lps, "x", 2) == lps[2:]


def test_select_in_a_program_stores_the_decision_and_its_scores() -> None:
    table = {" red": [-0.2, -0.2], " green": [-0.1, -2.0], " blue": [-3.0]}
    backend = ScriptedBackend(choice_logprobs=lambda p, c: entries(*table[c]))

    @sgl.function
    def prog(s):
        s += "Color:" + sgl.select("c", choices=[" red", " green", " blue"])
        s += "|" + sgl.gen(
            "g", choices=[" red", " green", " blue"], choices_method=sgl.greedy_token_selection
        )

    state = prog.run(backend=backend)
    assert state["c"] == " red"
    assert state["g"] == " green"
    meta = state.get_meta_info("c")
    scores = meta["normalized_prompt_logprobs"]
    assert scores.index(max(scores)) == 0
    assert math.isclose(scores[1], -1.05)
    assert state.text() == "Color: red| green"
