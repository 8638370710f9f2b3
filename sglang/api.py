"""The public functions of the language: function, gen, select, image, roles, backends, Runtime."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Optional, Union

from sglang.global_config import global_config, resolve_backend
from sglang.lang.choices import ChoicesSamplingMethod, token_length_normalized
from sglang.lang.function import SglFunction
from sglang.lang.ir import (
    SglExpr,
    SglExprList,
    SglGen,
    SglImage,
    SglRoleBegin,
    SglRoleEnd,
    SglSelect,
    SglSeparateReasoning,
    SglVideo,
    to_expr,
)

if TYPE_CHECKING:
    from sglang.lang.backend.base import BaseBackend
    from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint

_DTYPES: dict[Any, type] = {int: int, float: float, bool: bool, str: str}
_DTYPES.update({t.__name__: t for t in (int, float, bool, str)})
_DTYPES["string"] = str


def function(
    func: Optional[Callable[..., Any]] = None, *, num_api_spec_tokens: Optional[int] = None
) -> Union[SglFunction, Callable[[Callable[..., Any]], SglFunction]]:
    """Turn a Python function into an SGLang program.

    Parameters
    ----------
    func : callable
        The program body; its first parameter is the program state `s`.
    num_api_spec_tokens : int, optional
        For API backends: how many tokens to generate speculatively per call.

    Returns
    -------
    SglFunction
        Call `.run(...)`, `.run_batch(...)`, `.bind(...)` or `.trace()` on it.
    """
    if num_api_spec_tokens is not None and num_api_spec_tokens < 1:
        raise ValueError(f"num_api_spec_tokens={num_api_spec_tokens!r} must be >= 1")
    if func is None:
        return lambda f: SglFunction(f, num_api_spec_tokens=num_api_spec_tokens)
    return SglFunction(func, num_api_spec_tokens=num_api_spec_tokens)


def gen(
    name: Optional[str] = None,
    max_tokens: Optional[int] = None,
    min_tokens: Optional[int] = None,
    n: Optional[int] = None,
    stop: Optional[Union[str, list[str]]] = None,
    stop_token_ids: Optional[list[int]] = None,
    temperature: Optional[float] = None,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    min_p: Optional[float] = None,
    frequency_penalty: Optional[float] = None,
    presence_penalty: Optional[float] = None,
    ignore_eos: Optional[bool] = None,
    return_logprob: Optional[bool] = None,
    logprob_start_len: Optional[int] = None,
    top_logprobs_num: Optional[int] = None,
    return_text_in_logprobs: Optional[bool] = None,
    dtype: Optional[Union[type, str]] = None,
    choices: Optional[list[str]] = None,
    choices_method: Optional[ChoicesSamplingMethod] = None,
    regex: Optional[str] = None,
    json_schema: Optional[Union[str, dict[str, Any], type]] = None,
    grammar: Optional[str] = None,
    stop_regex: Optional[Union[str, list[str]]] = None,
    token_healing: Optional[bool] = None,
) -> SglExpr:
    """Generate text at this point of the program and store it as variable `name`.

    Parameters
    ----------
    name : str, optional
        The variable that receives the text (`s[name]`); unnamed generations only add text.
    max_tokens, min_tokens : int, optional
        Bounds on the number of generated tokens.
    n : int, optional
        Number of samples; with n > 1 the variable is a list and the first sample is appended.
    stop, stop_token_ids : optional
        Strings / token ids that end the generation (inside an assistant turn the chat
        template's end-of-turn strings are added).
    temperature, top_p, top_k, min_p, frequency_penalty, presence_penalty, ignore_eos : optional
        Sampling parameters; any left unset take the value given to `run(...)`.
    return_logprob, logprob_start_len, top_logprobs_num, return_text_in_logprobs : optional
        Ask for logprobs, found with `s.get_meta_info(name)`.
    dtype : {int, float, bool, str}, optional
        Constrain the output to a literal of that type.
    choices : list of str, optional
        Makes this a `select` among the choices.
    choices_method : ChoicesSamplingMethod, optional
        How `choices` are scored (default token_length_normalized).
    regex : str, optional
        A regular expression the output must match.
    json_schema : dict, str or pydantic model class, optional
        A JSON schema the output must follow.
    grammar : str, optional
        A context-free grammar (EBNF) the output must follow.
    stop_regex : str or list of str, optional
        Regular expressions that end the generation where the output matches one (the match is
        trimmed, like a stop string).
    token_healing : bool, optional
        Back the prompt up by its last token and let the model re-choose it (see
        sglang.lang.token_healing). None: the backend's default, which is on for
        RuntimeEndpoint; `run(..., token_healing=False)` turns it off for a whole program.

    Returns
    -------
    SglExpr
        Append it to a state: `s += gen("answer")`.
    """
    if choices is not None:
        return select(name, choices, temperature=temperature or 0.0, choices_method=choices_method)
    _check_name(name)
    _check_ranges(
        max_tokens=max_tokens, min_tokens=min_tokens, n=n, temperature=temperature, top_p=top_p
    )
    if sum(x is not None for x in (regex, json_schema, grammar)) > 1:
        raise ValueError("gen(): set at most one of regex, json_schema and grammar")
    overrides = {
        "max_new_tokens": max_tokens,
        "min_new_tokens": min_tokens,
        "n": n,
        "stop": stop,
        "stop_token_ids": stop_token_ids,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "frequency_penalty": frequency_penalty,
        "presence_penalty": presence_penalty,
        "ignore_eos": ignore_eos,
        "return_logprob": return_logprob,
        "logprob_start_len": logprob_start_len,
        "top_logprobs_num": top_logprobs_num,
        "return_text_in_logprobs": return_text_in_logprobs,
        "dtype": _check_dtype(dtype),
        "regex": _check_regex(regex),
        "json_schema": normalize_json_schema(json_schema),
        "grammar": _check_grammar(grammar),
        "stop_regex": _check_stop_regex(stop_regex),
        "token_healing": token_healing,
    }
    return SglGen(name, {k: v for k, v in overrides.items() if v is not None})


def gen_int(name: Optional[str] = None, **kwargs: Any) -> SglExpr:
    """`gen` constrained to an integer literal; takes gen's other parameters."""
    return gen(name, dtype=int, **kwargs)


def gen_string(name: Optional[str] = None, **kwargs: Any) -> SglExpr:
    """`gen` constrained to a double-quoted string literal; takes gen's other parameters."""
    return gen(name, dtype=str, **kwargs)


def select(
    name: Optional[str] = None,
    choices: Optional[list[str]] = None,
    temperature: float = 0.0,
    choices_method: Optional[ChoicesSamplingMethod] = None,
) -> SglExpr:
    """Append the most likely of `choices` and store it as variable `name`.

    Parameters
    ----------
    name : str, optional
        The variable that receives the chosen string.
    choices : list of str
        The candidates; each is scored by the model as a continuation of the state's text.
    temperature : float
        Passed to the backend (the decision itself is the best-scoring choice).
    choices_method : ChoicesSamplingMethod, optional
        token_length_normalized (default), greedy_token_selection or
        unconditional_likelihood_normalized.

    Returns
    -------
    SglExpr
    """
    _check_name(name)
    if not isinstance(choices, (list, tuple)) or not choices:
        raise ValueError(f"select(): choices must be a non-empty list of strings, got {choices!r}")
    for c in choices:
        if not isinstance(c, str) or not c:
            raise ValueError(f"select(): every choice must be a non-empty string, got {c!r}")
    method = choices_method if choices_method is not None else token_length_normalized
    if not isinstance(method, ChoicesSamplingMethod):
        raise ValueError(f"select(): choices_method {method!r} is not a ChoicesSamplingMethod")
    return SglSelect(name, list(choices), temperature, method)


def image(expr: Union[str, bytes]) -> SglExpr:
    """An image (a file path or the file's bytes) for a multimodal model.

    Parameters
    ----------
    expr : str or bytes
        Path of an image file, or its bytes.

    Returns
    -------
    SglExpr
    """
    if isinstance(expr, str) and not os.path.isfile(expr):
        raise ValueError(f"image(): file {expr!r} does not exist")
    if not isinstance(expr, (str, bytes)):
        raise ValueError(f"image(): expected a path or bytes, got {type(expr).__name__}")
    return SglImage(expr)


def video(path: str, num_frames: int) -> SglExpr:
    """A video for a multimodal model: `num_frames` frames sampled evenly, sent as images.

    Frames are decoded with PyAV (`pip install av`) or imageio, imported only when a video
    runs; each frame becomes one image of the turn (one image token in the text).

    Parameters
    ----------
    path : str
        Path of the video file.
    num_frames : int
        How many frames the model should see (all of them if the video has fewer).

    Returns
    -------
    SglExpr
    """
    if not os.path.isfile(path):
        raise ValueError(f"video(): file {path!r} does not exist")
    if num_frames < 1:
        raise ValueError(f"video(): num_frames={num_frames!r} must be >= 1")
    return SglVideo(path, num_frames)


def _role(role: str, expr: Union[str, SglExpr, None]) -> SglExpr:
    inner = [] if expr is None else [to_expr(expr)]
    return SglExprList([SglRoleBegin(role), *inner, SglRoleEnd(role)])


def system(expr: Union[str, SglExpr, None] = None) -> SglExpr:
    """A system turn holding `expr`, formatted by the backend's chat template."""
    return _role("system", expr)


def user(expr: Union[str, SglExpr, None] = None) -> SglExpr:
    """A user turn holding `expr`, formatted by the backend's chat template."""
    return _role("user", expr)


def assistant(expr: Union[str, SglExpr, None] = None) -> SglExpr:
    """An assistant turn holding `expr`, formatted by the backend's chat template."""
    return _role("assistant", expr)


def system_begin() -> SglExpr:
    """Open a system turn; close it with system_end()."""
    return SglRoleBegin("system")


def system_end() -> SglExpr:
    """Close the system turn."""
    return SglRoleEnd("system")


def user_begin() -> SglExpr:
    """Open a user turn; close it with user_end()."""
    return SglRoleBegin("user")


def user_end() -> SglExpr:
    """Close the user turn."""
    return SglRoleEnd("user")


def assistant_begin() -> SglExpr:
    """Open an assistant turn; close it with assistant_end()."""
    return SglRoleBegin("assistant")


def assistant_end() -> SglExpr:
    """Close the assistant turn."""
    return SglRoleEnd("assistant")


def separate_reasoning(expr: SglExpr, model_type: str = "deepseek-r1") -> SglExpr:
    """Run `expr` (a gen, or gens in a list), then split each gen's value into reasoning and answer.

    Parameters
    ----------
    expr : SglExpr
        Typically `gen("answer", ...)` inside an assistant turn.
    model_type : str
        The reasoning format: "deepseek-r1" (output starts inside `<think>`, ends it with
        `</think>`), "qwen3" (an optional `<think>...</think>` block first) or "kimi".

    Returns
    -------
    SglExpr
        The variable keeps the answer and `<name>_reasoning_content` gets the reasoning; the
        program's text keeps only the answer. NOTE: unlike SGLang's, ours also splits the
        variables with stream=True (the streamed text is left as sent), and it replaces only
        the gen's own text rather than the whole open turn.
    """
    if model_type is None:
        model_type = "deepseek-r1"
    from sglang.lang.reasoning import REASONING_FORMATS

    if model_type not in REASONING_FORMATS:
        raise ValueError(
            f"separate_reasoning(): unknown model_type {model_type!r}; "
            f"known: {sorted(REASONING_FORMATS)}"
        )
    inner = to_expr(expr)
    return SglExprList([inner, SglSeparateReasoning(model_type, inner)])


def set_default_backend(backend: Union["BaseBackend", "Runtime"]) -> None:
    """Use `backend` for every program run without backend=...

    Parameters
    ----------
    backend : BaseBackend or Runtime
        E.g. RuntimeEndpoint("http://localhost:30000"), OpenAI("gpt-4o-mini"), a Runtime.
    """
    if backend is None or not hasattr(getattr(backend, "endpoint", backend), "generate"):
        raise ValueError(f"set_default_backend(): {backend!r} is not a backend")
    global_config.default_backend = backend


def flush_cache(backend: Optional[Union["BaseBackend", "Runtime"]] = None) -> None:
    """Drop the backend's prefix cache (the default backend's if none is given)."""
    resolve_backend(backend).flush_cache()


def get_server_info(backend: Optional[Union["BaseBackend", "Runtime"]] = None) -> dict[str, Any]:
    """The backend server's configuration and load (the default backend's if none is given)."""
    return resolve_backend(backend).get_server_info()


# ---------------------------------------------------------------- validation of user input


def _check_name(name: Optional[str]) -> None:
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"variable name {name!r} must be a non-empty string")


def _check_ranges(**values: Optional[float]) -> None:
    minimum = {"max_tokens": 0, "min_tokens": 0, "n": 1, "temperature": 0.0, "top_p": 0.0}
    for key, value in values.items():
        if value is not None and value < minimum[key]:
            raise ValueError(f"gen(): {key}={value!r} must be >= {minimum[key]}")
    top_p = values.get("top_p")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"gen(): top_p={top_p!r} must be in (0, 1]")


def _check_dtype(dtype: Optional[Union[type, str]]) -> Optional[type]:
    if dtype is None:
        return None
    if dtype not in _DTYPES:
        raise ValueError(f"gen(): dtype={dtype!r} must be one of int, float, bool, str")
    return _DTYPES[dtype]


def _check_regex(regex: Optional[str]) -> Optional[str]:
    if regex is None:
        return None
    if not isinstance(regex, str) or not regex:
        raise ValueError(f"gen(): regex={regex!r} must be a non-empty string")
    try:
        re.compile(regex)
    except re.error as e:
        raise ValueError(f"gen(): invalid regex {regex!r}: {e}") from e
    return regex


def _check_stop_regex(
    stop_regex: Optional[Union[str, list[str]]],
) -> Optional[Union[str, list[str]]]:
    if stop_regex is None:
        return None
    patterns = [stop_regex] if isinstance(stop_regex, str) else stop_regex
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"gen(): stop_regex={stop_regex!r} must be a string or a list of strings")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"gen(): invalid stop_regex {pattern!r}: {e}") from e
    return stop_regex if isinstance(stop_regex, str) else list(patterns)


def _check_grammar(grammar: Optional[str]) -> Optional[str]:
    if grammar is not None and (not isinstance(grammar, str) or not grammar.strip()):
        raise ValueError(f"gen(): grammar={grammar!r} must be a non-empty string")
    return grammar


def normalize_json_schema(schema: Optional[Union[str, dict[str, Any], type]]) -> Optional[str]:
    """A JSON schema as JSON text, from a dict, a JSON string or a pydantic model class."""
    if schema is None:
        return None
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return json.dumps(schema.model_json_schema())
    if isinstance(schema, dict):
        return json.dumps(schema)
    if isinstance(schema, str):
        try:
            parsed = json.loads(schema)
        except ValueError as e:
            raise ValueError(f"gen(): json_schema {schema!r} is not valid JSON: {e}") from e
        if not isinstance(parsed, dict):
            raise ValueError(f"gen(): json_schema {schema!r} must be a JSON object")
        return schema
    raise ValueError(
        f"gen(): json_schema must be a dict, a JSON string or a pydantic model, got {schema!r}"
    )


# ---------------------------------------------------------------- Runtime


class Runtime:
    """Starts `python -m sglang.launch_server` in a child process and connects to it.

    Use it as a backend (`set_default_backend(runtime)` or `backend=runtime`); `shutdown()`
    ends the server (also done at interpreter exit).
    """

    def __init__(
        self, model_path: Optional[str] = None, timeout: float = 900.0, **server_args: Any
    ) -> None:
        from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint
        from sglang.utils import find_free_port, wait_for_server

        host = server_args.pop("host", "127.0.0.1")
        port = server_args.pop("port", None) or find_free_port(host)
        self.url = f"http://{host}:{port}"
        args = {"model_path": model_path, "host": host, "port": port, **server_args}
        self._log = tempfile.NamedTemporaryFile(
            prefix="sglang-server-", suffix=".log", delete=False
        )
        self.log_path = self._log.name
        cmd = [sys.executable, "-m", "sglang.launch_server", *server_args_to_cli(args)]
        self.process: Optional[subprocess.Popen] = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        atexit.register(self.shutdown)
        try:
            wait_for_server(self.url, timeout, self.process, self.log_path)
            self.endpoint: RuntimeEndpoint = RuntimeEndpoint(
                self.url, api_key=server_args.get("api_key")
            )
        except BaseException:
            self.shutdown()
            raise

    def shutdown(self) -> None:
        """Stop the server process group this Runtime started."""
        from sglang.utils import terminate_process

        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        terminate_process(process)
        self._log.close()

    def generate(
        self,
        prompt: Union[str, list[str]],
        sampling_params: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> Any:
        """POST /generate on this server; returns its JSON answer."""
        return self.endpoint.post(
            "/generate", {"text": prompt, "sampling_params": sampling_params or {}, **kwargs}
        )

    async def async_generate(
        self,
        prompt: str,
        sampling_params: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> AsyncIterator[str]:
        """Stream POST /generate for one prompt: yields the text as it grows, in pieces.

        Other keyword arguments (return_logprob, ...) go into the request body. The HTTP
        stream is read on a worker thread, so the event loop is never blocked.
        """
        body = {"text": prompt, "sampling_params": sampling_params or {}, **kwargs, "stream": True}
        chunks = iter(self.endpoint.stream_json("/generate", body))
        loop = asyncio.get_running_loop()
        done, seen = object(), 0
        while True:
            chunk = await loop.run_in_executor(None, next, chunks, done)
            if chunk is done:
                return
            text = chunk.get("text", "")
            if len(text) > seen:
                yield text[seen:]
                seen = len(text)

    def get_tokenizer(self) -> Any:
        """The server's tokenizer, loaded with transformers from its tokenizer path."""
        from transformers import AutoTokenizer

        info = self.endpoint.model_info
        path = info.get("tokenizer_path") or info.get("model_path")
        return AutoTokenizer.from_pretrained(path)

    def get_server_info(self) -> dict[str, Any]:
        return self.endpoint.get_server_info()

    def flush_cache(self) -> None:
        self.endpoint.flush_cache()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def server_args_to_cli(args: dict[str, Any]) -> list[str]:
    """{"model_path": "m", "disable_radix_cache": True} -> ["--model-path", "m", "--disable-radix-cache"]."""
    out: list[str] = []
    for key, value in args.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        out.extend([flag] if value is True else [flag, str(value)])
    return out
