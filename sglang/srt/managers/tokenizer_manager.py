"""TokenizerManager: validates and tokenizes requests, sends them to the scheduler, assembles outputs."""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Optional, Union

import zmq
import zmq.asyncio

from sglang.srt.managers.io_struct import (
    AbortReq,
    BatchReqOutput,
    FlushCacheReply,
    FlushCacheReq,
    GenerateReqInput,
    GetServerInfoReply,
    GetServerInfoReq,
    ReqOutput,
    SchedulerFailed,
    SchedulerReady,
    TokenizedGenerateReqInput,
)
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import PortArgs, ServerArgs

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    import fastapi

logger = logging.getLogger(__name__)

# How often a waiting request checks whether its HTTP client went away.
_DISCONNECT_POLL_S = 1.0
# How often the scheduler process is checked for being alive.
_WATCH_INTERVAL_S = 0.5

_CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_NAMED_TEMPLATES = {"chatml": _CHATML_TEMPLATE}
_CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")

LogprobEntry = list  # [logprob, token_id, token_text_or_None]


@dataclass
class _ReqState:
    """What the tokenizer manager knows of one in-flight request (filled from ReqOutput deltas)."""

    rid: str
    event: asyncio.Event  # shared by all requests of one generate call
    return_logprob: bool = False
    return_text: bool = False
    text: str = ""
    output_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: Optional[dict[str, Any]] = None
    finished: bool = False
    dirty: bool = False  # got output not yet handed to the caller
    input_token_logprobs: list[LogprobEntry] = field(default_factory=list)
    input_top_logprobs: list[Optional[list[LogprobEntry]]] = field(default_factory=list)
    output_token_logprobs: list[LogprobEntry] = field(default_factory=list)
    output_top_logprobs: list[Optional[list[LogprobEntry]]] = field(default_factory=list)

    def finish(self, reason: dict[str, Any]) -> None:
        self.finish_reason = reason
        self.finished = True
        self.dirty = True
        self.event.set()


class _ClientDisconnected(Exception):
    pass


class TokenizerManager:
    """The HTTP process's side of the runtime: one instance per server (or Engine).

    Create it anywhere (it loads the tokenizer), then `await start()` inside the event loop
    that serves requests, and `await wait_ready()` before the first request.
    """

    def __init__(
        self,
        server_args: ServerArgs,
        port_args: PortArgs,
        resolved_model_path: Optional[str] = None,
        scheduler_process: Optional[BaseProcess] = None,
    ) -> None:
        self.server_args = server_args
        self.port_args = port_args
        self.model_path: str = server_args.model_path or _default_model_display_path()
        self.tokenizer_path: str = server_args.tokenizer_path or resolved_model_path or ""
        self.served_model_name: str = server_args.served_model_name or _display_name(
            server_args.model_path
        )
        self.scheduler_process = scheduler_process
        self.tokenizer = load_tokenizer(self.tokenizer_path, server_args.trust_remote_code)
        self._template_override = load_chat_template(server_args.chat_template)
        self.ready_info: Optional[SchedulerReady] = None
        self.failure: Optional[str] = None
        # Called once with the failure message when the scheduler fails or dies.
        self.on_failure: Optional[Callable[[str], None]] = None
        self.rid_to_state: dict[str, _ReqState] = {}
        self._replies: dict[type, collections.deque[asyncio.Future]] = {
            FlushCacheReply: collections.deque(),
            GetServerInfoReply: collections.deque(),
        }
        self._token_text_cache: dict[int, str] = {}
        self._grammar_backend: Any = None
        self._tasks: list[asyncio.Task] = []
        self._ready: Optional[asyncio.Event] = None
        self._zmq_ctx: Optional[zmq.asyncio.Context] = None
        self._recv_sock: Any = None
        self._send_sock: Any = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open the sockets and start the receive and watch loops in the running event loop."""
        self._ready = asyncio.Event()
        self._zmq_ctx = zmq.asyncio.Context()
        self._recv_sock = self._zmq_ctx.socket(zmq.PULL)
        self._recv_sock.bind(self.port_args.tokenizer_ipc)
        self._send_sock = self._zmq_ctx.socket(zmq.PUSH)
        self._send_sock.setsockopt(zmq.SNDHWM, 0)
        self._send_sock.connect(self.port_args.scheduler_input_ipc)
        self._tasks = [asyncio.create_task(self._recv_loop())]
        if self.scheduler_process is not None:
            self._tasks.append(asyncio.create_task(self._watch_scheduler()))

    async def wait_ready(self) -> SchedulerReady:
        """Wait for the scheduler's SchedulerReady; RuntimeError with its message if it failed."""
        assert self._ready is not None, "call start() first"
        await self._ready.wait()
        if self.failure is not None:
            raise RuntimeError(self.failure)
        assert self.ready_info is not None
        return self.ready_info

    @property
    def is_ready(self) -> bool:
        return self.ready_info is not None and self.failure is None

    async def close(self) -> None:
        """Stop the loops and close the sockets (does not stop the scheduler process)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._zmq_ctx is not None:
            self._zmq_ctx.destroy(linger=0)
            self._zmq_ctx = None

    # ---------------------------------------------------------------- model facts

    @property
    def context_len(self) -> int:
        if self.ready_info is not None:
            return self.ready_info.context_length
        return self.server_args.context_length or 0

    @property
    def model_info(self) -> dict[str, Any]:
        return self.ready_info.model_info if self.ready_info is not None else {}

    @property
    def vocab_size(self) -> int:
        return int(self.model_info.get("vocab_size") or len(self.tokenizer))

    @property
    def eos_token_ids(self) -> list[int]:
        ids = self.model_info.get("eos_token_ids")
        if ids:
            return list(ids)
        eos = self.tokenizer.eos_token_id
        return [eos] if eos is not None else []

    @property
    def chat_template(self) -> Optional[str]:
        """The Jinja chat template in use: --chat-template, else the tokenizer's, else the model's."""
        if self._template_override is not None:
            return self._template_override
        own = getattr(self.tokenizer, "chat_template", None)
        if isinstance(own, str) and own:
            return own
        return self.model_info.get("chat_template") or None

    def apply_chat_template(self, messages: list[dict]) -> str:
        """Render OpenAI-style messages with the chat template, ready for the assistant's turn."""
        template = self.chat_template
        if template is None:
            raise ValueError(
                "the model has no chat template; start the server with --chat-template"
            )
        plain = normalize_messages(messages)
        try:
            return self.tokenizer.apply_chat_template(
                plain, chat_template=template, tokenize=False, add_generation_prompt=True
            )
        except Exception as e:  # jinja raises its own errors for messages a template rejects
            raise ValueError(f"messages could not be rendered by the chat template: {e}") from None

    def token_text(self, token_id: int) -> str:
        text = self._token_text_cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            self._token_text_cache[token_id] = text
        return text

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a prompt; no second BOS when the text (a rendered template) has one."""
        bos = getattr(self.tokenizer, "bos_token", None)
        add_special = not (bos and text.startswith(bos))
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    # ---------------------------------------------------------------- generation

    async def generate_request(
        self, obj: GenerateReqInput, request: Optional[fastapi.Request] = None
    ) -> AsyncIterator[Union[dict[str, Any], list[dict[str, Any]]]]:
        """Run one /generate body; yields native outputs (see module docs of http_server)."""
        await self._require_ready()
        reqs, is_batch = await self._tokenize_request(obj)
        event = asyncio.Event()
        states = self._register(reqs, event, obj.return_text_in_logprobs)
        try:
            self._send(reqs if is_batch else reqs[0])
            async for out in self._outputs(states, is_batch, obj.stream, request):
                yield out
        except _ClientDisconnected:
            logger.info("client disconnected; aborting %s", [s.rid for s in states])
        finally:
            self._release(states)

    async def _outputs(
        self, states: list[_ReqState], is_batch: bool, stream: bool, request: Any
    ) -> AsyncIterator[Any]:
        async for index, state in self._updates(states, request):
            if stream:
                out = self._snapshot(state)
                if is_batch:
                    out["index"] = index
                yield out
        if not stream:
            outs = [self._snapshot(s) for s in states]
            yield outs if is_batch else outs[0]

    async def _updates(
        self, states: list[_ReqState], request: Any
    ) -> AsyncIterator[tuple[int, _ReqState]]:
        """Yield (index, state) whenever a state has new output, until all have finished."""
        pending = list(range(len(states)))
        event = states[0].event
        while pending:
            await self._wait_event(event, request)
            event.clear()
            for i in list(pending):
                state = states[i]
                if not state.dirty:
                    continue
                state.dirty = False
                if state.finished:
                    pending.remove(i)
                yield i, state

    async def _wait_event(self, event: asyncio.Event, request: Any) -> None:
        while True:
            try:
                await asyncio.wait_for(event.wait(), timeout=_DISCONNECT_POLL_S)
                return
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    raise _ClientDisconnected() from None

    def _register(
        self, reqs: list[TokenizedGenerateReqInput], event: asyncio.Event, return_text: bool
    ) -> list[_ReqState]:
        states = []
        for req in reqs:
            state = _ReqState(req.rid, event, req.return_logprob, return_text)
            state.prompt_tokens = len(req.input_ids)
            self.rid_to_state[req.rid] = state
            states.append(state)
        return states

    def _release(self, states: list[_ReqState]) -> None:
        """Forget the states; abort those the scheduler still runs (the client went away)."""
        # NOTE: synchronous on purpose: this runs while the caller's task is being cancelled.
        for state in states:
            self.rid_to_state.pop(state.rid, None)
            if not state.finished and self.failure is None:
                self._send(AbortReq(state.rid))

    def abort_request(self, rid: str = "", abort_all: bool = False) -> list[str]:
        """Abort a request (and its n>1 / batch siblings `rid_i`); returns the aborted rids."""
        rids = [
            r
            for r in self.rid_to_state
            if abort_all or r == rid or (rid and r.startswith(rid + "_"))
        ]
        for r in rids:
            self._send(AbortReq(r))
            self.rid_to_state[r].finish({"type": "abort", "message": "aborted by request"})
        return rids

    def _snapshot(self, state: _ReqState) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": state.rid,
            "finish_reason": state.finish_reason,
            "prompt_tokens": state.prompt_tokens,
            "completion_tokens": state.completion_tokens,
            "cached_tokens": state.cached_tokens,
        }
        if state.return_logprob:
            meta["input_token_logprobs"] = list(state.input_token_logprobs)
            meta["output_token_logprobs"] = list(state.output_token_logprobs)
            meta["input_top_logprobs"] = list(state.input_top_logprobs)
            meta["output_top_logprobs"] = list(state.output_top_logprobs)
        return {"text": state.text, "output_ids": list(state.output_ids), "meta_info": meta}

    # ---------------------------------------------------------------- control requests

    async def flush_cache(self) -> FlushCacheReply:
        await self._require_ready()
        return await self._request_reply(FlushCacheReq(), FlushCacheReply)

    async def get_server_info(self) -> dict[str, Any]:
        """Server args merged with the scheduler's live statistics."""
        await self._require_ready()
        reply = await self._request_reply(GetServerInfoReq(), GetServerInfoReply)
        args = dataclasses.asdict(self.server_args)
        if args.get("api_key"):
            args["api_key"] = "<hidden>"
        ready = self.ready_info
        assert ready is not None
        return {
            **args,
            "model_path": self.model_path,
            "tokenizer_path": self.tokenizer_path,
            "served_model_name": self.served_model_name,
            "context_length": ready.context_length,
            "max_total_tokens": ready.max_total_tokens,
            "max_running_requests": ready.max_running_requests,
            "num_pending_requests": len(self.rid_to_state),
            **reply.info,
            "version": _version(),
        }

    async def _request_reply(self, msg: Any, reply_type: type) -> Any:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._replies[reply_type].append(future)
        self._send(msg)
        return await future

    # ---------------------------------------------------------------- tokenization & checks

    async def _require_ready(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"the scheduler is not running: {self.failure}")
        await self.wait_ready()

    async def _tokenize_request(
        self, obj: GenerateReqInput
    ) -> tuple[list[TokenizedGenerateReqInput], bool]:
        """Validate and tokenize a /generate body; a batch or n > 1 gives several requests."""
        prompts, is_batch = self._prompts(obj)
        rids = _base_rids(obj.rid, len(prompts), is_batch)
        reqs: list[TokenizedGenerateReqInput] = []
        for i, (text, ids) in enumerate(prompts):
            params = self._sampling_params(
                _pick(obj.sampling_params, "sampling_params", i, prompts)
            )
            await self._check_grammar(params)
            if text is not None:
                ids = self.tokenize(text)
            ids = self._check_ids(ids, params)
            if params.n > 1:
                is_batch = True
            for j, copy_params in enumerate(_expand_n(params)):
                rid = rids[i] if params.n == 1 else f"{rids[i]}_{j}"
                reqs.append(self._make_req(obj, i, prompts, rid, text, ids, copy_params))
        self._check_rids_free(reqs)
        return reqs, is_batch

    def _prompts(
        self, obj: GenerateReqInput
    ) -> tuple[list[tuple[Optional[str], Optional[list[int]]]], bool]:
        if obj.image_data:
            raise ValueError("image_data: the served model does not take images")
        if (obj.text is None) == (obj.input_ids is None):
            raise ValueError("give exactly one of text and input_ids")
        if obj.text is not None:
            return _text_prompts(obj.text)
        return _ids_prompts(obj.input_ids)

    def _sampling_params(self, raw: Any) -> SamplingParams:
        params = SamplingParams.from_dict(copy.deepcopy(raw))
        if params.stop_token_ids:
            self._check_vocab(params.stop_token_ids, "stop_token_ids")
        return params

    async def _check_grammar(self, params: SamplingParams) -> None:
        grammar = params.grammar
        if grammar is None:
            return
        kind, text = grammar
        if self.server_args.grammar_backend == "none":
            raise ValueError(
                f"{kind}: constrained decoding is disabled (server started with --grammar-backend none)"
            )
        backend = await self._get_grammar_backend()
        try:
            # NOTE: in a thread: compiling a large grammar must not stall other requests.
            await asyncio.to_thread(backend.validate, kind, text)
        except ValueError:
            raise  # the backend's message already names the constraint and the problem
        except Exception as e:  # a grammar library's own error types
            raise ValueError(f"invalid {kind}: {type(e).__name__}: {e}") from None

    async def _get_grammar_backend(self) -> Any:
        if self._grammar_backend is None:
            from sglang.srt.constrained import create_grammar_backend

            self._grammar_backend = await asyncio.to_thread(
                create_grammar_backend,
                self.server_args.grammar_backend,
                self.tokenizer,
                self.vocab_size,
                set(self.eos_token_ids),
            )
        return self._grammar_backend

    def _check_ids(self, ids: Optional[list[int]], params: SamplingParams) -> list[int]:
        """Check prompt ids against vocabulary, context and KV pool; clip max_new_tokens."""
        assert ids is not None
        if not ids:
            raise ValueError("the prompt is empty (0 tokens)")
        self._check_vocab(ids, "input_ids")
        n, context = len(ids), self.context_len
        if n >= context:
            raise ValueError(
                f"the prompt has {n} tokens, which is not less than the context length "
                f"({context} tokens)"
            )
        pool = self.ready_info.max_total_tokens if self.ready_info else n + 1
        if n >= pool:
            raise ValueError(
                f"the prompt has {n} tokens, which does not fit the KV cache ({pool} tokens)"
            )
        params.max_new_tokens = min(params.max_new_tokens, context - n, pool - n)
        params.min_new_tokens = min(params.min_new_tokens, params.max_new_tokens)
        return ids

    def _check_vocab(self, ids: Any, name: str) -> None:
        vocab = self.vocab_size
        for t in ids:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
                raise ValueError(f"{name} contains {t!r}, not a token id in [0, {vocab})")

    def _make_req(
        self,
        obj: GenerateReqInput,
        i: int,
        prompts: list,
        rid: str,
        text: Optional[str],
        ids: list[int],
        params: SamplingParams,
    ) -> TokenizedGenerateReqInput:
        return_logprob = _pick(obj.return_logprob, "return_logprob", i, prompts)
        start = _pick(obj.logprob_start_len, "logprob_start_len", i, prompts)
        top = _pick(obj.top_logprobs_num, "top_logprobs_num", i, prompts)
        _check_logprob_args(return_logprob, start, top, len(ids), self.vocab_size)
        if not isinstance(obj.stream, bool):
            raise ValueError(f"stream must be a boolean, got {obj.stream!r}")
        return TokenizedGenerateReqInput(
            rid=rid,
            input_text=text,
            input_ids=ids,
            sampling_params=params,
            return_logprob=return_logprob,
            logprob_start_len=start if return_logprob else -1,
            top_logprobs_num=top if return_logprob else 0,
            stream=obj.stream,
        )

    def _check_rids_free(self, reqs: list[TokenizedGenerateReqInput]) -> None:
        seen: set[str] = set()
        for req in reqs:
            if req.rid in self.rid_to_state or req.rid in seen:
                raise ValueError(f"rid {req.rid!r} is already in use")
            seen.add(req.rid)

    # ---------------------------------------------------------------- scheduler side

    def _send(self, msg: Any) -> None:
        assert self._send_sock is not None, "call start() first"
        # NOTE: a PUSH socket with no high-water mark never blocks, so no await is needed.
        self._send_sock.send_pyobj(msg)

    async def _recv_loop(self) -> None:
        while True:
            msg = await self._recv_sock.recv_pyobj()
            try:
                self._handle(msg)
            except Exception:  # one bad message must not stop the loop
                logger.exception("failed to handle a scheduler message: %r", type(msg).__name__)

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, BatchReqOutput):
            for out in msg.outputs:
                self._apply_output(out)
        elif isinstance(msg, (FlushCacheReply, GetServerInfoReply)):
            waiters = self._replies[type(msg)]
            if waiters and not waiters[0].done():
                waiters.popleft().set_result(msg)
            elif waiters:
                waiters.popleft()
        elif isinstance(msg, SchedulerReady):
            self.ready_info = msg
            assert self._ready is not None
            self._ready.set()
        elif isinstance(msg, SchedulerFailed):
            self._fail(f"the scheduler failed to start: {msg.message}")
        else:
            logger.warning("unexpected message from the scheduler: %r", msg)

    def _apply_output(self, out: ReqOutput) -> None:
        state = self.rid_to_state.get(out.rid)
        if state is None or state.finished:
            return  # aborted or released already
        state.text += out.text_delta
        state.output_ids.extend(out.output_ids)
        state.prompt_tokens = out.prompt_tokens
        state.completion_tokens = out.completion_tokens
        state.cached_tokens = out.cached_tokens
        if state.return_logprob:
            self._apply_logprobs(state, out)
        state.dirty = True
        if out.finish_reason is not None:
            state.finish(out.finish_reason)
        state.event.set()

    def _apply_logprobs(self, state: _ReqState, out: ReqOutput) -> None:
        text = state.return_text
        if out.input_token_logprobs is not None:
            state.input_token_logprobs = self._entries(out.input_token_logprobs, text)
        if out.input_top_logprobs is not None:
            state.input_top_logprobs = [self._top(t, text) for t in out.input_top_logprobs]
        if out.output_token_logprobs:
            state.output_token_logprobs.extend(self._entries(out.output_token_logprobs, text))
        if out.output_top_logprobs:
            state.output_top_logprobs.extend(self._top(t, text) for t in out.output_top_logprobs)

    def _entries(self, pairs: list, with_text: bool) -> list[LogprobEntry]:
        return [[lp, tid, self.token_text(tid) if with_text else None] for lp, tid in pairs]

    def _top(self, pairs: Optional[list], with_text: bool) -> Optional[list[LogprobEntry]]:
        return None if pairs is None else self._entries(pairs, with_text)

    async def _watch_scheduler(self) -> None:
        proc = self.scheduler_process
        assert proc is not None
        while proc.is_alive():
            await asyncio.sleep(_WATCH_INTERVAL_S)
        if self.failure is None:
            self._fail(f"the scheduler process exited (exit code {proc.exitcode})")

    def _fail(self, message: str) -> None:
        """The scheduler is gone: fail everything waiting on it, then tell the owner once."""
        first = self.failure is None
        self.failure = message
        logger.error("%s", message)
        for state in list(self.rid_to_state.values()):
            if not state.finished:
                state.finish({"type": "abort", "message": message})
        for waiters in self._replies.values():
            while waiters:
                future = waiters.popleft()
                if not future.done():
                    future.set_exception(RuntimeError(message))
        if self._ready is not None:
            self._ready.set()
        if first and self.on_failure is not None:
            self.on_failure(message)


# -------------------------------------------------------------------- helpers


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    if not path:
        raise ValueError("no tokenizer path: give --model-path or --tokenizer-path")
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_chat_template(value: Optional[str]) -> Optional[str]:
    """--chat-template: a file with a Jinja template, the Jinja text itself, or a known name."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if value in _NAMED_TEMPLATES:
        return _NAMED_TEMPLATES[value]
    if "{{" in value or "{%" in value:
        return value
    raise ValueError(
        f"chat_template={value!r}: not a file, not a Jinja template, and not one of "
        f"{sorted(_NAMED_TEMPLATES)}"
    )


def normalize_messages(messages: Any) -> list[dict[str, str]]:
    """OpenAI-style messages -> [{"role", "content": str}]; ValueError names a bad message."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    return [_normalize_message(i, m) for i, m in enumerate(messages)]


def _normalize_message(i: int, message: Any) -> dict[str, str]:
    if not isinstance(message, dict):
        raise ValueError(f"messages[{i}] must be an object, got {message!r}")
    role = message.get("role")
    if role not in _CHAT_ROLES:
        raise ValueError(f"messages[{i}].role={role!r}: expected one of {_CHAT_ROLES}")
    role = "system" if role == "developer" else role
    return {"role": role, "content": _content_text(i, message.get("content"))}


def _content_text(i: int, content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"messages[{i}].content must be a string or a list of parts")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise ValueError(
                f"messages[{i}].content: part of type {kind!r} is not supported "
                "(the served model takes text parts only)"
            )
        texts.append(part["text"])
    return "".join(texts)


def _text_prompts(text: Any) -> tuple[list[tuple[Optional[str], None]], bool]:
    if isinstance(text, str):
        texts, is_batch = [text], False
    elif isinstance(text, list) and text:
        texts, is_batch = text, True
    else:
        raise ValueError(f"text must be a string or a non-empty list of strings, got {text!r}")
    for t in texts:
        if not isinstance(t, str):
            raise ValueError(f"text must be a string or a list of strings; found {t!r}")
        if t == "":
            raise ValueError("text is empty")
    return [(t, None) for t in texts], is_batch


def _ids_prompts(ids: Any) -> tuple[list[tuple[None, Optional[list[int]]]], bool]:
    if not isinstance(ids, list) or not ids:
        raise ValueError("input_ids must be a non-empty list of token ids (or of lists of them)")
    if isinstance(ids[0], list):
        for row in ids:
            if not isinstance(row, list):
                raise ValueError(f"input_ids: expected a list of token ids, got {row!r}")
        return [(None, list(row)) for row in ids], True
    return [(None, list(ids))], False


def _pick(value: Any, name: str, i: int, prompts: list) -> Any:
    """The i-th prompt's value of a field given once for all prompts or as a per-prompt list."""
    if not isinstance(value, list):
        return value
    if len(value) != len(prompts):
        raise ValueError(f"{name} has {len(value)} entries for {len(prompts)} prompts")
    return value[i]


def _base_rids(rid: Any, count: int, is_batch: bool) -> list[str]:
    if rid is None:
        return [uuid.uuid4().hex for _ in range(count)]
    if isinstance(rid, str) and rid:
        return [rid] if not is_batch else [f"{rid}_{i}" for i in range(count)]
    if isinstance(rid, list) and len(rid) == count and all(isinstance(r, str) and r for r in rid):
        return list(rid)
    raise ValueError(f"rid must be a non-empty string or a list of {count} of them, got {rid!r}")


def _expand_n(params: SamplingParams) -> list[SamplingParams]:
    """n > 1 -> n single-sample copies (seeded ones get distinct seeds)."""
    if params.n == 1:
        return [params]
    copies = []
    for j in range(params.n):
        seed = None if params.seed is None else params.seed + j
        copies.append(dataclasses.replace(params, n=1, seed=seed, stop_strs=list(params.stop_strs)))
    return copies


def _check_logprob_args(
    return_logprob: Any, start: Any, top: Any, num_ids: int, vocab: int
) -> None:
    if not isinstance(return_logprob, bool):
        raise ValueError(f"return_logprob must be a boolean, got {return_logprob!r}")
    if not isinstance(start, int) or isinstance(start, bool):
        raise ValueError(f"logprob_start_len must be an integer, got {start!r}")
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= vocab:
        raise ValueError(f"top_logprobs_num must be an integer in [0, {vocab}], got {top!r}")
    if return_logprob and not -1 <= start < num_ids:
        raise ValueError(
            f"logprob_start_len={start} is out of range for a prompt of {num_ids} tokens "
            f"(expected -1 or 0..{num_ids - 1})"
        )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sglang")
    except Exception:  # not installed as a distribution (running from the source tree)
        return "0.1.0"


def _default_model_display_path() -> str:
    from sglang.srt.model_loader.default_model import default_model_file

    return default_model_file()


def _display_name(model_path: Optional[str]) -> str:
    """The name /v1/models shows: the path as given; the default model by its own name."""
    if model_path is None:
        from sglang.srt.model_loader.default_model import DEFAULT_MODEL_NAME

        return DEFAULT_MODEL_NAME
    return model_path
