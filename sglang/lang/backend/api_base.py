"""What every API-model backend shares: SDK import, retries, usage, images, speculative turns."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import importlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, TypeVar, Union

from sglang.lang.backend.base import BaseBackend
from sglang.lang.chat_template import ChatTemplate, get_chat_template
from sglang.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from sglang.lang.ir import SglSamplingParams
from sglang.utils import data_url, guess_mime

if TYPE_CHECKING:
    from sglang.lang.interpreter import StreamExecutor


logger = logging.getLogger(__name__)
T = TypeVar("T")


def import_sdk(module: str, extra: str) -> ModuleType:
    """Import a provider SDK, or fail with the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f'This backend needs the `{module}` package: pip install "sglang[{extra}]"'
        ) from e


def require_env(names: tuple[str, ...], what: str) -> str:
    """The first of `names` set in the environment, or a ValueError naming them all."""
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    raise ValueError(f"{what} needs an API key: set the {' or '.join(names)} environment variable")


@dataclass
class TokenUsage:
    """Tokens an API backend was billed for, summed over its calls (safe across threads).

    Attributes
    ----------
    prompt_tokens, completion_tokens
        Sums of the usage each API response reported.
    num_calls
        API calls that returned (retries of a failed call are not counted).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    num_calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, prompt_tokens: Optional[int], completion_tokens: Optional[int]) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens or 0
            self.completion_tokens += completion_tokens or 0
            self.num_calls += 1

    def reset(self) -> None:
        with self._lock:
            self.prompt_tokens = self.completion_tokens = self.num_calls = 0


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient API errors with exponential backoff: base_delay * 2**attempt, capped."""

    max_retries: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.base_delay < 0:
            raise ValueError(f"retry_base_delay must be >= 0, got {self.base_delay}")

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * (2**attempt))

    def call(self, fn: Callable[[], T], is_retryable: Callable[[Exception], bool]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as e:
                if attempt >= self.max_retries or not is_retryable(e):
                    raise
                wait = self.delay(attempt)
                logger.warning("API call failed (%s); retry %d in %.1fs", e, attempt + 1, wait)
                time.sleep(wait)
                attempt += 1


_DEFAULT_PARAMS = SglSamplingParams()


def set_params(params: SglSamplingParams) -> dict[str, Any]:
    """The sampling parameters that differ from their defaults (dtype excluded: the
    interpreter handles it)."""
    out = {}
    for f in dataclasses.fields(params):
        value, default = getattr(params, f.name), getattr(_DEFAULT_PARAMS, f.name)
        if f.name == "stop":
            value, default = params.stop_list(), []
        if f.name == "token_healing" and not value:
            continue  # turning healing off asks nothing of an API backend
        if f.name != "dtype" and value != default:
            out[f.name] = value
    return out


def reject_unsupported(params: SglSamplingParams, supported: frozenset[str], api: str) -> None:
    """Raise ValueError for the first set parameter the API cannot honour (never drop it)."""
    for name, value in set_params(params).items():
        if name not in supported:
            hint = " (constrained decoding needs a local model: use RuntimeEndpoint)"
            hint = hint if name in ("regex", "grammar") else ""
            raise ValueError(f"{api} does not support the gen parameter {name}={value!r}{hint}")


def choice_schema(choices: list[str]) -> dict[str, Any]:
    """A JSON schema for an object whose one key, "choice", is one of `choices`."""
    return {
        "type": "object",
        "properties": {"choice": {"type": "string", "enum": list(choices)}},
        "required": ["choice"],
        "additionalProperties": False,
    }


def parse_choice(reply: Any, choices: list[str]) -> Optional[str]:
    """The choice named by a structured reply: {"choice": c} (JSON text or object), or a bare
    string equal to a choice; None when it names none."""
    value = reply
    if isinstance(reply, str):
        try:
            value = json.loads(reply)
        except ValueError:
            value = reply.strip()
    if isinstance(value, dict):
        value = value.get("choice")
    return value if isinstance(value, str) and value in choices else None


def finish_reason(provider_reason: Optional[str], matched: Optional[str] = None) -> dict[str, Any]:
    """A provider's finish reason as the runtime's {"type": "stop"|"length"|"abort", ...}."""
    reason = (provider_reason or "stop").lower()
    if reason in ("length", "max_tokens"):
        return {"type": "length"}
    if reason in ("stop", "end_turn", "stop_sequence", "eos", "finish_reason_unspecified"):
        return {"type": "stop", "matched": matched}
    return {"type": "abort", "message": reason}


@dataclass(frozen=True)
class ImagePart:
    """One image of a message: its media type and base64 data."""

    media_type: str
    data: str

    @property
    def data_url(self) -> str:
        return f"data:{self.media_type};base64,{self.data}"

    def raw_bytes(self) -> bytes:
        return base64.b64decode(self.data)


def image_from_url(url: str) -> ImagePart:
    """An image from an OpenAI-style base64 data URL."""
    if not url.startswith("data:") or ";base64," not in url:
        raise ValueError(f"only base64 data URLs can be sent as images, got {url[:60]!r}")
    media_type, data = url[len("data:") :].split(";base64,", 1)
    if not media_type:
        try:
            media_type = guess_mime(base64.b64decode(data[:64] + "=" * (-len(data[:64]) % 4)))
        except binascii.Error as e:
            raise ValueError(f"image data is not valid base64: {data[:32]!r}") from e
    return ImagePart(media_type, data)


def content_parts(content: Union[str, list[dict[str, Any]]]) -> list[Union[str, ImagePart]]:
    """A message's OpenAI-style content as text strings and ImageParts, in order."""
    if isinstance(content, str):
        return [content]
    parts: list[Union[str, ImagePart]] = []
    for part in content:
        if part.get("type") == "text":
            parts.append(part["text"])
        elif part.get("type") == "image_url":
            parts.append(image_from_url(part["image_url"]["url"]))
        else:
            raise ValueError(f"unsupported message part type {part.get('type')!r}")
    return parts


@dataclass
class ChatView:
    """A program state as a chat API sees it.

    messages: closed turns, OpenAI-style. partial: what the open assistant turn holds so far.
    """

    messages: list[dict[str, Any]]
    partial: str


@dataclass
class ApiRequest:
    """One provider call, before conversion to the provider's format."""

    params: SglSamplingParams
    messages: list[dict[str, Any]] = field(default_factory=list)  # chat models
    prefill: str = ""  # chat models with prefill: the reply continues this assistant text
    prompt: str = ""  # completion models: the state's text


@dataclass
class ApiResult:
    """What one provider call returned: one text per choice (n of them)."""

    texts: list[str]
    finish_reasons: list[dict[str, Any]]
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    extra_meta: list[dict[str, Any]] = field(default_factory=list)  # per choice (logprobs)


@dataclass
class StreamPiece:
    """A streamed text delta; the provider sets the other fields when it knows them."""

    text: str = ""
    finish_reason: Optional[dict[str, Any]] = None
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None


@dataclass
class _SpecTurn:
    key: str  # what the call was made from (a hash of the closed chat messages; "" otherwise)
    text: str  # the text the completion speculates: open turn (chat) or whole prompt, plus reply
    truncated: bool  # the call stopped at num_api_spec_tokens, not at the model's end


class SpeculativeTurns:
    """Completions of `num_api_spec_tokens` tokens, cut into the program's gens at their stops.

    NOTE: keyed by the state's sid, so concurrent programs (run_batch, forks) never share a
    completion; a bounded LRU so states that never call end_program cannot grow it forever.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._turns: OrderedDict[str, _SpecTurn] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, sid: str, key: str) -> Optional[_SpecTurn]:
        with self._lock:
            turn = self._turns.get(sid)
            return turn if turn is not None and turn.key == key else None

    def put(self, sid: str, turn: _SpecTurn) -> None:
        with self._lock:
            self._turns[sid] = turn
            self._turns.move_to_end(sid)
            while len(self._turns) > self._capacity:
                self._turns.popitem(last=False)

    def drop(self, sid: str) -> None:
        with self._lock:
            self._turns.pop(sid, None)


def cut_at_stop(rest: str, stops: list[str], truncated: bool) -> Optional[tuple[str, dict]]:
    """The text before the first stop string and its finish reason; None when no stop occurs
    in a truncated completion (the gen's end is not known yet)."""
    hits = [(rest.find(s), s) for s in stops if s in rest]
    if hits:
        pos, stop = min(hits)
        return rest[:pos], {"type": "stop", "matched": stop}
    if truncated:
        return None
    return rest, {"type": "stop", "matched": None}


def _skip_preamble(reply: str, written: str) -> str:
    """A chat reply from where it starts repeating the turn's text (a preamble such as
    "Sure! Here it is:" dropped); the reply as is when it never does."""
    at = reply.find(written) if written else 0
    return reply[at:] if at > 0 else reply


# Calls a chat model gets to reply in the program's format (only when sampling: greedy repeats)
SPEC_MAX_TRIES = 3


class ApiModelBackend(BaseBackend):
    """Shared by backends that call a hosted model API.

    Subclasses set `is_chat_model`, `supports_prefill`, `retryable_errors` (or override
    `is_retryable`), and implement `check_params`, `call` and `call_stream`. This class turns
    program states into requests, runs speculative execution, and counts token usage.

    Speculative execution (``@function(num_api_spec_tokens=N)``): the first gen of an assistant
    turn (chat models) or of a stretch of text (completion models) makes one call of N tokens
    with no stop strings. Each gen then takes its value from that completion, up to its own
    stop string, as long as the text the program appended in between matches the completion.
    A completion model that diverges makes a fresh call from the current text. A chat model
    cannot continue a half-written turn: its reply must contain the turn's text so far (a
    preamble before it is dropped); when it does not, the call is repeated (temperature > 0, SPEC_MAX_TRIES calls in all),
    then RuntimeError. Backends with prefill send the turn's text and let the reply continue.
    N bounds the speculated text; a gen's own max_tokens is not applied to its slice of it.
    """

    is_chat_model: bool = True
    supports_prefill: bool = False  # the API continues a trailing partial assistant message
    retryable_errors: tuple[type[BaseException], ...] = ()
    api_name: str = "API"

    def __init__(
        self,
        model_name: str,
        chat_template: Optional[Union[str, ChatTemplate]] = None,
        default_template: str = "default",
        max_retries: int = 5,
        retry_base_delay: float = 1.0,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        template = chat_template or default_template
        self.chat_template = get_chat_template(template) if isinstance(template, str) else template
        self.token_usage = TokenUsage()
        self.retry = RetryPolicy(max_retries=max_retries, base_delay=retry_base_delay)
        self._spec = SpeculativeTurns()

    # Provider hooks ---------------------------------------------------------------------------

    def check_params(self, params: SglSamplingParams) -> None:
        """Raise ValueError for a set parameter this API cannot honour."""
        raise NotImplementedError()

    def call(self, request: ApiRequest) -> ApiResult:
        raise NotImplementedError()

    def call_stream(self, request: ApiRequest) -> Iterator[StreamPiece]:
        raise NotImplementedError()

    def is_retryable(self, error: Exception) -> bool:
        """Whether a failed call is worth retrying (rate limits, connection errors)."""
        return isinstance(error, self.retryable_errors)

    def with_retries(self, fn: Callable[[], T]) -> T:
        return self.retry.call(fn, self.is_retryable)

    # BaseBackend ------------------------------------------------------------------------------

    def get_model_name(self) -> str:
        return self.model_name

    def get_server_info(self) -> dict[str, Any]:
        return {"api": self.api_name, "model": self.model_name}

    def end_program(self, s: Union["StreamExecutor", list["StreamExecutor"]]) -> None:
        for state in s if isinstance(s, list) else [s]:
            self._spec.drop(state.sid)

    def generate(
        self, s: "StreamExecutor", sampling_params: SglSamplingParams
    ) -> tuple[Union[str, list[str]], Union[dict[str, Any], list[dict[str, Any]]]]:
        self.check_params(sampling_params)
        if self._speculates(s, sampling_params):
            return self._spec_generate(s, sampling_params)
        result = self.call_with_usage(self.build_request(s, sampling_params))
        metas = [self._meta(result, i) for i in range(len(result.texts))]
        if sampling_params.n == 1:
            return result.texts[0], metas[0]
        return result.texts, metas

    def generate_stream(
        self, s: "StreamExecutor", sampling_params: SglSamplingParams
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        self.check_params(sampling_params)
        if sampling_params.n != 1:
            raise ValueError(f"streaming supports n=1 only, got n={sampling_params.n}")
        if self._speculates(s, sampling_params):
            text, meta = self._spec_generate(s, sampling_params)
            yield text, meta
            return
        yield from self._stream(self.build_request(s, sampling_params))

    def select(
        self,
        s: "StreamExecutor",
        choices: list[str],
        temperature: float,
        choices_method: Optional[ChoicesSamplingMethod] = None,
    ) -> ChoicesDecision:
        """Ask the model for one of `choices`, constrained by the provider's structured output.

        Chat APIs return no logprobs of the prompt, so the choices cannot be scored: the model
        answers a JSON object whose one key, "choice", is an enum of the choices (OpenAI's and
        LiteLLM's `response_format`, Gemini's response schema; Anthropic overrides this with a
        forced tool call). `choices_method` cannot apply and is ignored; the meta info records
        `select_method` and the model's raw reply. An open assistant turn's text is sent as an
        assistant message before the answer.
        """
        request = self.select_request(s, choices, temperature)
        result = self.call_with_usage(request)
        return self.select_decision(result.texts[0], choices, "json_schema_enum", result)

    def select_request(
        self, s: "StreamExecutor", choices: list[str], temperature: float
    ) -> ApiRequest:
        params = SglSamplingParams(
            max_new_tokens=32 + max(len(c) for c in choices),
            temperature=temperature,
            json_schema=json.dumps(choice_schema(choices)),
        )
        view = self.chat_view(s)
        messages = list(view.messages)
        if view.partial.strip():
            messages.append({"role": "assistant", "content": view.partial.rstrip()})
        return ApiRequest(params=params, messages=messages)

    def select_decision(
        self, reply: Any, choices: list[str], method: str, result: ApiResult
    ) -> ChoicesDecision:
        """The choice a structured reply names (a JSON text or an already parsed object)."""
        decision = parse_choice(reply, choices)
        if decision is None:
            raise RuntimeError(
                f"{self.api_name} select: the reply {reply!r} names none of the choices {choices!r}"
            )
        meta = {
            "select_method": method,
            "raw_reply": reply,
            "finish_reason": result.finish_reasons[0] if result.finish_reasons else None,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }
        return ChoicesDecision(decision, meta)

    # Requests ---------------------------------------------------------------------------------

    def build_request(self, s: "StreamExecutor", params: SglSamplingParams) -> ApiRequest:
        if not self.is_chat_model:
            return ApiRequest(params=params, prompt=s.text_)
        view = self.chat_view(s)
        if view.partial and not self.supports_prefill:
            raise RuntimeError(
                f"{self.api_name} chat models cannot continue a half-written assistant turn "
                f"({view.partial[-40:]!r}): put gen right after assistant_begin(), or use "
                "@function(num_api_spec_tokens=N) to fill several gens of a turn in one call"
            )
        return ApiRequest(params=params, messages=view.messages, prefill=view.partial)

    def chat_view(self, s: "StreamExecutor") -> ChatView:
        """The closed turns as messages, and the open assistant turn's text.

        A program that never opened a role sends its whole text as one user message.
        """
        messages = [dict(m) for m in s.messages_]
        cur_role = getattr(s, "cur_role", None)
        if not messages and cur_role is None:
            return ChatView([self._plain_text_message(s)], "")
        if cur_role not in (None, "assistant"):
            raise RuntimeError(
                f"{self.api_name} chat models generate assistant turns only; "
                f"gen is inside a {cur_role!r} turn"
            )
        partial = self._open_turn_text(s) if cur_role == "assistant" else ""
        return ChatView(messages, partial)

    def _plain_text_message(self, s: "StreamExecutor") -> dict[str, Any]:
        images = list(getattr(s, "images_", None) or [])
        if not images:
            return {"role": "user", "content": s.text_}
        content: list[dict[str, Any]] = [{"type": "text", "text": s.text_}]
        for _, data in images:
            content.append({"type": "image_url", "image_url": {"url": data_url(data)}})
        return {"role": "user", "content": content}

    def _open_turn_text(self, s: "StreamExecutor") -> str:
        return s.text_[s.cur_role_begin_pos :]

    def call_with_usage(self, request: ApiRequest) -> ApiResult:
        result = self.call(request)
        self.token_usage.add(result.prompt_tokens, result.completion_tokens)
        return result

    def _meta(self, result: ApiResult, i: int) -> dict[str, Any]:
        meta = {
            "finish_reason": result.finish_reasons[i],
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }
        if i < len(result.extra_meta):
            meta.update(result.extra_meta[i])
        return meta

    def _stream(self, request: ApiRequest) -> Iterator[tuple[str, dict[str, Any]]]:
        meta: dict[str, Any] = {"finish_reason": None, "prompt_tokens": None}
        meta["completion_tokens"] = None
        for piece in self.call_stream(request):
            for key in ("finish_reason", "prompt_tokens", "completion_tokens"):
                if getattr(piece, key) is not None:
                    meta[key] = getattr(piece, key)
            if piece.text:
                yield piece.text, dict(meta)
        self.token_usage.add(meta["prompt_tokens"], meta["completion_tokens"])
        yield "", dict(meta)

    # Speculative execution ---------------------------------------------------------------------

    def _speculates(self, s: "StreamExecutor", params: SglSamplingParams) -> bool:
        if not getattr(s, "num_api_spec_tokens", None):
            return False
        if params.n != 1 or params.json_schema or params.return_logprob:
            return False
        return not self.is_chat_model or getattr(s, "cur_role", None) == "assistant"

    def _spec_context(self, s: "StreamExecutor") -> tuple[str, str]:
        """(key of what a call would be made from, text the program has written since)."""
        if not self.is_chat_model:
            return "", s.text_
        view = self.chat_view(s)
        blob = json.dumps(view.messages, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest(), view.partial.lstrip()

    def _spec_generate(
        self, s: "StreamExecutor", params: SglSamplingParams
    ) -> tuple[str, dict[str, Any]]:
        key, written = self._spec_context(s)
        stops = params.stop_list()
        turn = self._spec.get(s.sid, key)
        if turn is not None and turn.text.startswith(written):
            cut = cut_at_stop(turn.text[len(written) :], stops, turn.truncated)
            if cut is not None:
                return cut[0], {"finish_reason": cut[1], "speculative": True}
        turn = self._speculate(s, params, key, written)
        for _ in range(SPEC_MAX_TRIES - 1):
            if turn.text.startswith(written) or params.temperature == 0:
                break
            turn = self._speculate(s, params, key, written)  # sampling may follow the format
        if not turn.text.startswith(written):
            raise RuntimeError(
                "speculative execution failed: the model's reply "
                f"{turn.text[:80]!r} does not continue the program's text {written[-80:]!r}; "
                "show the expected format in the prompt"
            )
        cut = cut_at_stop(turn.text[len(written) :], stops, truncated=False)
        assert cut is not None, "an untruncated cut always succeeds"
        return cut[0], {"finish_reason": cut[1], "speculative": True}

    def _speculate(
        self, s: "StreamExecutor", params: SglSamplingParams, key: str, written: str
    ) -> _SpecTurn:
        spec_params = dataclasses.replace(params, max_new_tokens=s.num_api_spec_tokens, stop=())
        if self.is_chat_model:
            view = self.chat_view(s)
            prefill = view.partial if self.supports_prefill else ""
            request = ApiRequest(spec_params, messages=view.messages, prefill=prefill)
        else:
            request = ApiRequest(spec_params, prompt=s.text_)
        result = self.call_with_usage(request)
        reply = result.texts[0]
        if not self.is_chat_model or request.prefill:
            text = written + reply
        else:
            text = _skip_preamble(reply.lstrip(), written)
        turn = _SpecTurn(key, text, result.finish_reasons[0]["type"] == "length")
        self._spec.put(s.sid, turn)
        return turn
