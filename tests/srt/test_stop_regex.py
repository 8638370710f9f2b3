"""stop_regex: validated in SamplingParams, matched by StopChecker like a stop string."""

from __future__ import annotations

import pytest

from sglang.srt.managers.detokenizer import StopChecker
from sglang.srt.sampling.sampling_params import SamplingParams


def test_stop_regex_is_a_pattern_or_a_list() -> None:
    assert SamplingParams.from_dict({"stop_regex": r"\d+"}).stop_regexes == [r"\d+"]
    assert SamplingParams.from_dict({"stop_regex": ["a+", "b"]}).stop_regexes == ["a+", "b"]
    assert SamplingParams.from_dict({"stop_regex": None}).stop_regexes == []
    with pytest.raises(ValueError, match="stop_regex"):
        SamplingParams.from_dict({"stop_regex": "(unclosed"})
    with pytest.raises(ValueError, match="stop_regex"):
        SamplingParams.from_dict({"stop_regex": [1]})


def test_a_pattern_match_trims_like_a_stop_string() -> None:
    checker = StopChecker.from_params(SamplingParams.from_dict({"stop_regex": r"[0-9]+\."}))
    assert checker.check("Step one", 0) is None
    assert checker.check("Step 12. next", 5) == (5, "12.")
    kept = StopChecker([], no_stop_trim=True, stop_regexes=[r"[0-9]+\."])
    assert kept.check("Step 12. next", 5) == (8, "12.")


def test_the_earliest_ending_match_wins_among_strings_and_patterns() -> None:
    checker = StopChecker(["END"], stop_regexes=[r"\n\n"])
    assert checker.check("a\n\nb END", 0) == (1, "\n\n")
    assert checker.check("a END\n\n", 0) == (2, "END")
    assert checker.safe_prefix_len("abc\n") == 4  # patterns hold nothing back
