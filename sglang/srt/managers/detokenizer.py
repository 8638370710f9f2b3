"""Incremental detokenization of generated tokens and stop-string handling on the text."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Sequence

if TYPE_CHECKING:
    from sglang.srt.sampling.sampling_params import SamplingParams

_REPLACEMENT = "\ufffd"  # what a decoder makes of an incomplete UTF-8 sequence
CONTEXT_TOKENS = 5  # prompt tokens decoded ahead of the output (leading spaces of its first token)
MAX_UNSTABLE_STEPS = 32  # appends without a clean UTF-8 boundary before the text is forced out


class IncrementalDetokenizer:
    """Turns output token ids, a few at a time, into text deltas that never change later.

    Each step decodes only a small window: the tokens of the previous step and the new ones
    (plus a few prompt tokens at the start, so a SentencePiece token's leading space decodes as
    it reads after the prompt). Text whose UTF-8 is still incomplete (it decodes to a trailing
    run of U+FFFD) is held back until a later token completes it, or until `flush()`.

    NOTE: the concatenation of all deltas and `flush()` equals
    `tokenizer.decode(output_ids, skip_special_tokens=..., clean_up_tokenization_spaces=False)`
    for byte-level BPE tokenizers; for SentencePiece ones the first token keeps the leading space
    it has after the prompt. The exception is a run of MAX_UNSTABLE_STEPS appends that never
    reaches a UTF-8 boundary (only invalid byte soup does that): it is emitted as decoded.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self._decode_kwargs: dict[str, Any] = {
            "skip_special_tokens": skip_special_tokens,
            "clean_up_tokenization_spaces": False,  # cleanup differs between windows
        }
        if not spaces_between_special_tokens:  # the default of every tokenizer that knows it
            self._decode_kwargs["spaces_between_special_tokens"] = False
        context = list(prompt_ids[-CONTEXT_TOKENS:]) if CONTEXT_TOKENS else []
        if context and self._decode(context).endswith(_REPLACEMENT):
            context = []  # the prompt ends inside a character: its bytes must not join ours
        self._ids: list[int] = context  # context tokens, then every output token
        self._prefix_offset = 0  # window start: the previous step's tokens (or the context)
        self._read_offset = len(context)  # tokens before this are fully emitted
        self._emitted = len(self._decode(context))  # chars of decode(window) already returned
        self._unstable_steps = 0

    def append(self, new_ids: Sequence[int]) -> str:
        """Add output tokens; return the newly stable text (possibly empty)."""
        self._ids.extend(new_ids)
        text = self._decode(self._ids[self._prefix_offset :])
        stable = text.rstrip(_REPLACEMENT)
        self._unstable_steps = self._unstable_steps + 1 if len(stable) < len(text) else 0
        if self._unstable_steps == 0 or self._unstable_steps > MAX_UNSTABLE_STEPS:
            return self._take_all(text)
        delta = stable[self._emitted :]
        self._emitted = max(self._emitted, len(stable))
        return delta

    def checkpoint(self) -> tuple[int, int, int, int, int]:
        """The state before the next `append`, for `restore` (a rolled-back token)."""
        return (
            len(self._ids),
            self._prefix_offset,
            self._read_offset,
            self._emitted,
            self._unstable_steps,
        )

    def restore(self, state: tuple[int, int, int, int, int]) -> None:
        """Go back to a `checkpoint()`: as if the tokens appended since were never seen."""
        n, self._prefix_offset, self._read_offset, self._emitted, self._unstable_steps = state
        del self._ids[n:]

    def flush(self) -> str:
        """All text not yet returned, an incomplete character included (as U+FFFD)."""
        return self._take_all(self._decode(self._ids[self._prefix_offset :]))

    def _take_all(self, text: str) -> str:
        """Return the rest of `text` (the window's decode) and start the next window."""
        delta = text[self._emitted :]
        if text.endswith(_REPLACEMENT):
            # NOTE: windows start at character boundaries only; past a forced-out tail there is
            # none to be found, so the next window starts empty.
            self._prefix_offset = self._read_offset = len(self._ids)
        else:
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._emitted = len(self._decode(self._ids[self._prefix_offset :]))
        self._unstable_steps = 0
        return delta

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(ids, **self._decode_kwargs)


class StopMatch(NamedTuple):
    cut: int  # keep text[:cut]: the stop string's start, or its end with no_stop_trim
    stop_str: str  # the stop string that matched


class StopChecker:
    """Finds stop strings in streamed text, looking only where a new match can be.

    Stop patterns (`stop_regexes`) are searched over the whole output each time (a match may
    start anywhere); text that could still grow into a pattern match is not held back, so a
    streamed request may already have sent text that a later match trims from the final text.
    """

    def __init__(
        self, stop_strs: Sequence[str], no_stop_trim: bool = False, stop_regexes: Sequence[str] = ()
    ) -> None:
        for s in stop_strs:
            if not isinstance(s, str):
                raise ValueError(f"stop strings must be strings, got {s!r}")
        self.stop_strs = [s for s in stop_strs if s]  # "" would match everywhere
        self.stop_patterns = [re.compile(p) for p in stop_regexes if p]
        self.no_stop_trim = no_stop_trim
        self.max_len = max((len(s) for s in self.stop_strs), default=0)
        # every proper prefix of a stop string: text ending in one may still become a stop
        self._partials = {s[:k] for s in self.stop_strs for k in range(1, len(s))}
        self._first_chars = {s[0] for s in self.stop_strs}

    def check(self, text_so_far: str, new_text_start: int) -> Optional[StopMatch]:
        """The stop string that ends in text_so_far[new_text_start:] and ends first, if any.

        Older text was checked before; only the last `max_len - 1` characters before
        `new_text_start` are searched again, for matches that span the boundary.
        """
        best: Optional[tuple[int, int, str]] = None  # (end, start, stop string)
        for s in self.stop_strs:
            start = text_so_far.find(s, max(0, new_text_start - len(s) + 1))
            if start >= 0 and (best is None or (start + len(s), start) < best[:2]):
                best = (start + len(s), start, s)
        for pattern in self.stop_patterns:
            m = pattern.search(text_so_far)
            if m is not None and (best is None or (m.end(), m.start()) < best[:2]):
                best = (m.end(), m.start(), m.group(0))
        if best is None:
            return None
        end, start, s = best
        return StopMatch(end if self.no_stop_trim else start, s)

    @classmethod
    def from_params(cls, params: SamplingParams) -> StopChecker:
        """The checker of a normalized SamplingParams (stop strings, stop patterns, trimming)."""
        return cls(params.stop_strs, params.no_stop_trim, params.stop_regexes)

    def safe_prefix_len(self, text: str) -> int:
        """How much of `text` may be streamed: all but the longest suffix that could still
        grow into a stop string (a proper prefix of one)."""
        for k in range(min(len(text), self.max_len - 1), 0, -1):
            if text[-k] in self._first_chars and text[-k:] in self._partials:
                return len(text) - k
        return len(text)


class StreamStep(NamedTuple):
    text: str  # text the client may see now (a delta, stop string already trimmed)
    matched_stop: Optional[str]  # the stop string that finished the request, else None


class OutputStream:
    """One request's output: token ids in, client-visible text deltas out.

    Composes IncrementalDetokenizer and StopChecker the way the scheduler needs them: text
    that might be the start of a stop string is held back, a completed stop string finishes
    the stream (trimmed unless no_stop_trim), and `finish()` releases whatever is held when
    the request ends for another reason. The concatenation of every `StreamStep.text` is the
    request's final output text. Per step, only the new text and at most `max_len - 1` held
    characters are looked at.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: Sequence[int] = (),
        stop_strs: Sequence[str] = (),
        no_stop_trim: bool = False,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        stop_regexes: Sequence[str] = (),
    ) -> None:
        self.detokenizer = IncrementalDetokenizer(
            tokenizer, prompt_ids, skip_special_tokens, spaces_between_special_tokens
        )
        self.stop_checker = StopChecker(stop_strs, no_stop_trim, stop_regexes)
        self._held = ""  # decoded text not yet streamed: a possible start of a stop string
        # Text already streamed; kept only for stop patterns, which search the whole output.
        self._sent = ""
        self.finished = False

    @classmethod
    def from_params(
        cls, tokenizer: Any, prompt_ids: Sequence[int], params: SamplingParams
    ) -> OutputStream:
        """Build from a normalized SamplingParams (its stop_strs and decoding flags)."""
        return cls(
            tokenizer,
            prompt_ids,
            params.stop_strs,
            params.no_stop_trim,
            params.skip_special_tokens,
            params.spaces_between_special_tokens,
            params.stop_regexes,
        )

    def append(self, new_ids: Sequence[int], check_stop: bool = True) -> StreamStep:
        """Add output tokens. With check_stop=False (e.g. before min_new_tokens) no stop
        string can end in this step's text, but possible stop prefixes are still held."""
        assert not self.finished, "append() after the stream finished"
        return self._push(self.detokenizer.append(new_ids), check_stop)

    def checkpoint(self) -> tuple[Any, str, str, bool]:
        """The state before the next `append` (see `rewind`)."""
        return self.detokenizer.checkpoint(), self._held, self._sent, self.finished

    def rewind(self, state: tuple[Any, str, str, bool]) -> None:
        """Undo the appends since `checkpoint()`; the caller drops the text they returned."""
        detok, self._held, self._sent, self.finished = state
        self.detokenizer.restore(detok)

    def finish(self) -> StreamStep:
        """End the stream: flush the detokenizer and release held text (a stop string that
        the flushed text completes still trims it)."""
        if self.finished:
            return StreamStep("", None)
        step = self._push(self.detokenizer.flush(), check_stop=True)
        self.finished = True
        rest, self._held = self._held, ""
        return StreamStep(step.text + rest, step.matched_stop)

    def _push(self, delta: str, check_stop: bool) -> StreamStep:
        window = self._held + delta
        if check_stop:
            match = self._match(window)
            if match is not None:
                self._held = ""
                self.finished = True
                return self._emit(window[: match.cut], match.stop_str)
        safe = self.stop_checker.safe_prefix_len(window)
        self._held = window[safe:]
        return self._emit(window[:safe], None)

    def _match(self, window: str) -> Optional[StopMatch]:
        if not self.stop_checker.stop_patterns:
            return self.stop_checker.check(window, len(self._held))
        # NOTE: a pattern may match across text already streamed; that text stays sent.
        match = self.stop_checker.check(self._sent + window, len(self._sent) + len(self._held))
        if match is None:
            return None
        return StopMatch(max(match.cut - len(self._sent), 0), match.stop_str)

    def _emit(self, text: str, matched_stop: Optional[str]) -> StreamStep:
        if self.stop_checker.stop_patterns:
            self._sent += text
        return StreamStep(text, matched_stop)
