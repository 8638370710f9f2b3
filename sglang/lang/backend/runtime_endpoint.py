"""RuntimeEndpoint: the backend that talks to an SGLang server over its native HTTP API."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import requests

from sglang.lang.backend.base import BaseBackend
from sglang.lang.chat_template import (
    ChatTemplate,
    chat_template_from_jinja,
    get_chat_template,
    get_chat_template_by_model_path,
)
from sglang.lang.choices import (
    ChoicesDecision,
    ChoicesSamplingMethod,
    mean_logprob,
    token_length_normalized,
)
from sglang.lang.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR
from sglang.lang.token_healing import HealingPlan, can_heal_token, plan_constraint, stops_overlap
from sglang.utils import data_url, http_error_message

if TYPE_CHECKING:
    from sglang.lang.interpreter import StreamExecutor
    from sglang.lang.ir import SglSamplingParams

# Regexes for gen(dtype=...) on the runtime (API backends handle dtype themselves)
DTYPE_REGEX: dict[type, str] = {
    int: REGEX_INT,
    float: REGEX_FLOAT,
    bool: REGEX_BOOL,
    str: REGEX_STR,
}


class _SessionPool:
    """requests.Sessions lent to one thread at a time, so executor threads (short-lived, one per
    program) still reuse kept-alive connections instead of opening one per call."""

    def __init__(self) -> None:
        self._free: list[requests.Session] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def session(self) -> Iterator[requests.Session]:
        with self._lock:
            sess = self._free.pop() if self._free else None
        if sess is None:
            sess = requests.Session()
        try:
            yield sess
        finally:
            with self._lock:
                self._free.append(sess)


class RuntimeEndpoint(BaseBackend):
    """A backend for an SGLang server (ours or the original) at `base_url`.

    The chat template is, in order: `chat_template_name` if given; the model's own Jinja
    template from GET /get_model_info; the template matched from the model path.

    `token_healing` (default on) is the default of every gen that does not set its own; see
    `sglang.lang.token_healing`. A healed gen costs two more small requests (to find the
    prompt's last token). Not healed: prompts that end in a newline or a special token, states
    with images, gens with max_tokens=0, stops that could match inside the removed text, and
    JSON / grammar constraints on a server whose grammar backend is not llguidance.
    """

    def __init__(
        self,
        base_url: str,
        api_key: Optional[str] = None,
        chat_template_name: Optional[str] = None,
        verify: Optional[Union[bool, str]] = None,
        token_healing: bool = True,
    ) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.verify = verify
        self.token_healing = token_healing
        self._grammar_backend: Optional[str] = None  # read from /get_server_info when needed
        self.timeout: Optional[float] = None  # seconds to wait for an answer; None: no limit
        self._sessions = _SessionPool()
        self.model_info: dict[str, Any] = self.get("/get_model_info")
        self.chat_template = self._pick_chat_template(chat_template_name)

    def _pick_chat_template(self, name: Optional[str]) -> ChatTemplate:
        if name is not None:
            return get_chat_template(name)
        by_path = get_chat_template_by_model_path(self.model_info.get("model_path"))
        # a vision-language server names its image token; the template puts it where images stand
        served = self.model_info.get("image_token")
        image_token = served if isinstance(served, str) and served else by_path.image_token
        source = self.model_info.get("chat_template")
        if isinstance(source, str) and source:
            from_jinja = chat_template_from_jinja(source, name="model", image_token=image_token)
            if from_jinja is not None:
                return from_jinja
        return dataclasses.replace(by_path, image_token=image_token)

    def get_model_name(self) -> str:
        return str(self.model_info.get("model_path"))

    # ------------------------------------------------------------ HTTP

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _send(
        self, sess: requests.Session, method: str, path: str, body: Any, stream: bool
    ) -> requests.Response:
        url = self.base_url + path
        try:
            resp = sess.request(
                method,
                url,
                json=body,
                headers=self._headers(),
                verify=self.verify if self.verify is not None else True,
                stream=stream,
                timeout=(30, self.timeout),
            )
        except requests.RequestException as e:
            raise RuntimeError(f"cannot reach the SGLang server at {url}: {e}") from e
        if resp.status_code != 200:
            message = http_error_message(resp.text, resp.reason)
            raise RuntimeError(f"{method} {url} failed with HTTP {resp.status_code}: {message}")
        return resp

    def get(self, path: str) -> Any:
        with self._sessions.session() as sess:
            return self._send(sess, "GET", path, None, False).json()

    def post(self, path: str, body: Any) -> Any:
        with self._sessions.session() as sess:
            resp = self._send(sess, "POST", path, body, False)
            is_json = "json" in resp.headers.get("Content-Type", "")
            return resp.json() if is_json else resp.text  # /flush_cache answers plain text

    def stream_json(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST `body` with streaming; the JSON objects of the SSE answer, in order."""
        return self._post_stream(path, body)

    def _post_stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The JSON objects of an SSE answer, up to `data: [DONE]`."""
        with self._sessions.session() as sess:
            resp = self._send(sess, "POST", path, body, True)
            with resp:
                for line in resp.iter_lines(decode_unicode=True):
                    if not line or not line.startswith("data:"):
                        continue
                    payload = line[len("data:") :].strip()
                    if payload == "[DONE]":
                        return
                    chunk = json.loads(payload)
                    if isinstance(chunk, dict) and "error" in chunk:
                        raise RuntimeError(
                            f"{self.base_url}{path} stream failed: {http_error_message(payload)}"
                        )
                    yield chunk

    # ------------------------------------------------------------ server-wide

    def flush_cache(self) -> None:
        self.post("/flush_cache", None)

    def get_server_info(self) -> dict[str, Any]:
        return self.get("/get_server_info")

    def cache_prefix(self, prefix_str: str) -> None:
        self._prefill(prefix_str, [])

    def _prefill(self, text: str, images: list[str]) -> int:
        """Run the prompt through the model without generating (so it is cached); its token count."""
        body: dict[str, Any] = {
            "text": text,
            "sampling_params": {"max_new_tokens": 0, "temperature": 0},
        }
        if images:
            body["image_data"] = images
        return int(self._post_generate(body)["meta_info"]["prompt_tokens"])

    def commit_lazy_operations(self, s: "StreamExecutor") -> None:
        if s.text_:
            self._prefill(s.text_, _image_data(s))

    # ------------------------------------------------------------ generation

    def _generate_body(
        self, s: "StreamExecutor", params: "SglSamplingParams"
    ) -> tuple[dict[str, Any], Optional[HealingPlan]]:
        """The /generate body of a gen, token healing applied where it can be."""
        sampling = params.to_srt_kwargs()
        if params.dtype is not None and not any(
            k in sampling for k in ("regex", "json_schema", "ebnf")
        ):
            sampling["regex"] = DTYPE_REGEX[params.dtype]
        plan = self._plan_healing(s, params, sampling)
        body: dict[str, Any] = {
            "text": plan.prompt if plan else s.text_,
            "sampling_params": plan.sampling if plan else sampling,
        }
        for key in (
            "return_logprob",
            "logprob_start_len",
            "top_logprobs_num",
            "return_text_in_logprobs",
        ):
            if getattr(params, key) is not None:
                body[key] = getattr(params, key)
        images = _image_data(s)
        if images:
            body["image_data"] = images
        return body, plan

    def generate(
        self, s: "StreamExecutor", sampling_params: "SglSamplingParams"
    ) -> tuple[Union[str, list[str]], Union[dict[str, Any], list[dict[str, Any]]]]:
        body, plan = self._generate_body(s, sampling_params)
        res = self._post_generate(body)
        if isinstance(res, list):  # n > 1
            return [_healed(r, plan)[0] for r in res], [_healed(r, plan)[1] for r in res]
        return _healed(res, plan)

    def generate_stream(
        self, s: "StreamExecutor", sampling_params: "SglSamplingParams"
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        body, plan = self._generate_body(s, sampling_params)
        body["stream"] = True
        seen = 0
        for chunk in self._post_stream("/generate", body):
            self._check_not_aborted(chunk)
            text, meta = _healed(chunk, plan)
            yield text[seen:], meta
            seen = max(seen, len(text))

    # ------------------------------------------------------------ token healing

    def _plan_healing(
        self, s: "StreamExecutor", params: "SglSamplingParams", sampling: dict[str, Any]
    ) -> Optional[HealingPlan]:
        """How to heal this gen, or None when it is off or does not apply."""
        enabled = params.token_healing if params.token_healing is not None else self.token_healing
        text = s.text_
        if not enabled or not text or text.endswith("\n") or s.images_:
            return None
        if params.max_new_tokens < 1:
            return None
        last = self._last_token_text(text)
        if not can_heal_token(last, text):
            return None
        assert last is not None
        patterns = params.stop_regex
        stop_regexes = [patterns] if isinstance(patterns, str) else list(patterns or [])
        if stops_overlap(last, params.stop_list(), stop_regexes):
            return None
        healed = plan_constraint(last, sampling, self.grammar_backend())
        if healed is None:
            return None
        return HealingPlan(removed=last, prompt=text[: -len(last)], sampling=healed)

    def _last_token_text(self, text: str) -> Optional[str]:
        """The text of the prompt's last token, as the server tokenizes it (the prompt is
        cached on the way, so the healed request reuses it)."""
        num_tokens = self._prefill(text, [])
        if num_tokens < 2:
            return None
        entries = self._score([text], num_tokens - 1, None)[0]["meta_info"]["input_token_logprobs"]
        if not entries or len(entries[-1]) < 3:
            return None
        return entries[-1][2]

    def grammar_backend(self) -> Optional[str]:
        """The server's grammar backend (llguidance, xgrammar or none), read once."""
        if self._grammar_backend is None:
            self._grammar_backend = str(self.get_server_info().get("grammar_backend", "none"))
        return self._grammar_backend

    # ------------------------------------------------------------ select (SPEC §3)

    def select(
        self,
        s: "StreamExecutor",
        choices: list[str],
        temperature: float,
        choices_method: Optional[ChoicesSamplingMethod] = None,
    ) -> ChoicesDecision:
        method = choices_method or token_length_normalized
        images = _image_data(s)
        prompt_tokens = self._prefill(s.text_, images) if s.text_ else 0
        start = max(prompt_tokens - 2, 0)
        scored = self._score(
            [s.text_ + c for c in choices], start, [images] * len(choices) if images else None
        )
        input_lps = [
            choice_token_logprobs(r["meta_info"]["input_token_logprobs"], c, prompt_tokens - start)
            for r, c in zip(scored, choices)
        ]
        unconditional = None
        if method.requires_unconditional_logprobs:
            unconditional = [
                r["meta_info"]["input_token_logprobs"] for r in self._score(list(choices), 0, None)
            ]
        return method(
            choices=choices,
            normalized_prompt_logprobs=[mean_logprob(lps) for lps in input_lps],
            input_token_logprobs=input_lps,
            output_token_logprobs=[r["meta_info"].get("output_token_logprobs") for r in scored],
            unconditional_token_logprobs=unconditional,
        )

    def _score(
        self, texts: list[str], logprob_start_len: int, images: Optional[list[list[str]]]
    ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {
            "text": texts,
            "sampling_params": {"max_new_tokens": 0, "temperature": 0},
            "return_logprob": True,
            "return_text_in_logprobs": True,
            "logprob_start_len": logprob_start_len,
        }
        if images:
            body["image_data"] = images
        return self._post_generate(body)

    def _post_generate(self, body: dict[str, Any]) -> Any:
        res = self.post("/generate", body)
        for item in res if isinstance(res, list) else [res]:
            self._check_not_aborted(item)
        return res

    def _check_not_aborted(self, item: dict[str, Any]) -> None:
        reason = item.get("meta_info", {}).get("finish_reason") or {}
        if reason.get("type") == "abort":
            message = reason.get("message", "no reason given")
            raise RuntimeError(f"{self.base_url}/generate aborted the request: {message}")


def _healed(item: dict[str, Any], plan: Optional[HealingPlan]) -> tuple[str, dict[str, Any]]:
    """(text, meta_info) of one /generate answer, the removed text taken off a healed one."""
    text, meta = item.get("text", ""), dict(item.get("meta_info", {}))
    if plan is None:
        return text, meta
    meta["token_healing"] = {"removed": plan.removed}
    return plan.value_of(text), meta


def _image_data(s: "StreamExecutor") -> list[str]:
    return [data_url(b64) for _, b64 in s.images_]


def choice_token_logprobs(entries: list[Any], choice: str, prompt_offset: int) -> list[Any]:
    """The entries of `choice`'s own tokens among a scored text's `entries`.

    `entries` start two tokens before the end of the prompt. The choice's tokens are those that
    reach into its text: counted from the end by token text, so a boundary token that merges the
    prompt's last characters with the choice's first is kept, and one that belongs to the prompt
    alone is dropped. Without token texts, the first `prompt_offset` entries are the prompt's.
    """
    if entries and all(len(e) > 2 and e[2] is not None for e in entries):
        covered, first = 0, len(entries)
        while first > 0 and covered < len(choice):
            first -= 1
            covered += len(entries[first][2])
        return list(entries[first:])
    own = list(entries[max(prompt_offset, 0) :])
    return own or list(entries[-1:])
