"""RuntimeEndpoint: the backend that talks to an SGLang server over its native HTTP API."""

from __future__ import annotations

import contextlib
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
from sglang.utils import data_url, http_error_message

if TYPE_CHECKING:
    from sglang.lang.interpreter import StreamExecutor
    from sglang.lang.ir import SglSamplingParams

# Regexes for gen(dtype=...) on the runtime (API backends handle dtype themselves)
DTYPE_REGEX: dict[type, str] = {
    int: r"[-+]?[0-9]+",
    float: r"[-+]?[0-9]+(\.[0-9]+)?",
    bool: r"(True|False)",
    str: r'"[^"\n]*"',
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
    """

    def __init__(
        self,
        base_url: str,
        api_key: Optional[str] = None,
        chat_template_name: Optional[str] = None,
        verify: Optional[Union[bool, str]] = None,
    ) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.verify = verify
        self.timeout: Optional[float] = None  # seconds to wait for an answer; None: no limit
        self._sessions = _SessionPool()
        self.model_info: dict[str, Any] = self.get("/get_model_info")
        self.chat_template = self._pick_chat_template(chat_template_name)

    def _pick_chat_template(self, name: Optional[str]) -> ChatTemplate:
        if name is not None:
            return get_chat_template(name)
        by_path = get_chat_template_by_model_path(self.model_info.get("model_path"))
        source = self.model_info.get("chat_template")
        if isinstance(source, str) and source:
            from_jinja = chat_template_from_jinja(
                source, name="model", image_token=by_path.image_token
            )
            if from_jinja is not None:
                return from_jinja
        return by_path

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

    def _generate_body(self, s: "StreamExecutor", params: "SglSamplingParams") -> dict[str, Any]:
        sampling = params.to_srt_kwargs()
        if params.dtype is not None and not any(
            k in sampling for k in ("regex", "json_schema", "ebnf")
        ):
            sampling["regex"] = DTYPE_REGEX[params.dtype]
        body: dict[str, Any] = {"text": s.text_, "sampling_params": sampling}
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
        return body

    def generate(
        self, s: "StreamExecutor", sampling_params: "SglSamplingParams"
    ) -> tuple[Union[str, list[str]], Union[dict[str, Any], list[dict[str, Any]]]]:
        res = self._post_generate(self._generate_body(s, sampling_params))
        if isinstance(res, list):  # n > 1
            return [r["text"] for r in res], [r["meta_info"] for r in res]
        return res["text"], res["meta_info"]

    def generate_stream(
        self, s: "StreamExecutor", sampling_params: "SglSamplingParams"
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        body = self._generate_body(s, sampling_params)
        body["stream"] = True
        seen = 0
        for chunk in self._post_stream("/generate", body):
            self._check_not_aborted(chunk)
            text = chunk.get("text", "")
            yield text[seen:], chunk.get("meta_info", {})
            seen = len(text)

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
