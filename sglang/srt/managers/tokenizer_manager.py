"""TokenizerManager: validates and tokenizes requests, sends them to the scheduler, assembles outputs."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Optional, Union

import zmq
import zmq.asyncio

from sglang.srt.function_call.parsers import ToolCallParser, get_parser
from sglang.srt.managers.chat_messages import (
    load_chat_template,
    normalize_messages,
    with_tools_in_text,
)
from sglang.srt.managers.data_parallel import DataParallelLink, Replica
from sglang.srt.managers.embedding_builder import build_embedding_requests, embedding_output
from sglang.srt.managers.io_struct import (
    AbortReq,
    BatchReqOutput,
    EmbeddingOutput,
    EmbeddingReqInput,
    FinishReason,
    FlushCacheReply,
    FlushCacheReq,
    GenerateOutput,
    GenerateReqInput,
    GetServerInfoReply,
    GetServerInfoReq,
    Heartbeat,
    RequestFailed,
    SchedulerFailed,
    SchedulerReady,
    TokenizedGenerateReqInput,
)
from sglang.srt.managers.req_state import ReqState
from sglang.srt.managers.request_builder import NOT_A_GENERATION_SERVER, RequestBuilder
from sglang.srt.reasoning_parser import ReasoningFormat, get_reasoning_format
from sglang.srt.server_args import PortArgs, ServerArgs

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    import fastapi

    from sglang.srt.metrics import Metrics

logger = logging.getLogger(__name__)

# How often a waiting request checks whether its HTTP client went away.
_DISCONNECT_POLL_S = 1.0
# How often the scheduler process is checked for being alive.
_WATCH_INTERVAL_S = 0.5
# Retry-After (seconds) of a 503 for overload or shutdown.
_RETRY_AFTER_S = 1
# /health says 503 when the scheduler's last heartbeat is older than this, or its current step
# has run this long (bounded by --watchdog-timeout); the scheduler is taken for dead (the server
# exits) when no heartbeat came for --watchdog-timeout seconds.
_HEARTBEAT_STALE_S = 5.0
_STEP_STALE_S = 30.0
# Prompts with more characters than this are tokenized on a worker thread.
_BUILD_INLINE_CHARS = 64 * 1024


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
        replicas: Optional[list[Replica]] = None,
    ) -> None:
        self.server_args = server_args
        self.port_args = port_args
        self.model_path: str = server_args.model_path or _default_model_display_path()
        self.tokenizer_path: str = server_args.tokenizer_path or resolved_model_path or ""
        self.served_model_name: str = server_args.served_model_name or _display_name(
            server_args.model_path
        )
        self.scheduler_process = scheduler_process
        # --dp-size > 1: the replicas' sockets and the routing between them (None: one scheduler)
        self.dp: Optional[DataParallelLink] = DataParallelLink(replicas) if replicas else None
        self.tokenizer = load_tokenizer(self.tokenizer_path, server_args.trust_remote_code)
        self._template_override = load_chat_template(server_args.chat_template)
        self.tool_parser: Optional[ToolCallParser] = (
            get_parser(server_args.tool_call_parser) if server_args.tool_call_parser else None
        )
        self.metrics: Optional[Metrics] = None
        if server_args.enable_metrics:
            from sglang.srt.metrics import Metrics

            self.metrics = Metrics(self.served_model_name)
        self.reasoning_format: Optional[ReasoningFormat] = (
            get_reasoning_format(server_args.reasoning_parser)
            if server_args.reasoning_parser
            else None
        )
        self.ready_info: Optional[SchedulerReady] = None
        self.failure: Optional[str] = None
        self.draining = False  # shutting down: new requests get 503, in-flight ones finish
        self._heartbeat: Optional[tuple[float, Heartbeat]] = None  # (arrival time, last one)
        # Called once with the failure message when the scheduler fails or dies.
        self.on_failure: Optional[Callable[[str], None]] = None
        self.rid_to_state: dict[str, ReqState] = {}
        self._replies: dict[type, collections.deque[asyncio.Future]] = {
            FlushCacheReply: collections.deque(),
            GetServerInfoReply: collections.deque(),
        }
        self._token_text_cache: dict[int, str] = {}
        self._max_token_chars: Optional[int] = None  # the longest token's text, for tokenize()
        self.builder = RequestBuilder(self)
        self._image_processor: Any = None  # built at the first image (see image_processor)
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
        if self.dp is not None:
            self.dp.open(self._zmq_ctx)
            self._tasks += self.dp.recv_tasks(self._handle)
            for r in self.dp.replicas:
                label = f"scheduler replica {r.rank} (of --dp-size {len(self.dp.replicas)})"
                self._tasks.append(asyncio.create_task(self._watch_scheduler(r.process, label)))
        elif self.scheduler_process is not None:
            watch = self._watch_scheduler(self.scheduler_process, "the scheduler process")
            self._tasks.append(asyncio.create_task(watch))

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

    @property
    def is_healthy(self) -> bool:
        """Ready, not shutting down, and (with a scheduler process) making progress: a fresh
        heartbeat and no step running for too long."""
        if not self.is_ready or self.draining:
            return False
        heartbeat = self._last_heartbeat
        if self.scheduler_process is None or heartbeat is None:
            return True
        arrived, beat = heartbeat
        step_limit = min(_STEP_STALE_S, self.server_args.watchdog_timeout)
        fresh = time.monotonic() - arrived < min(
            _HEARTBEAT_STALE_S, self.server_args.watchdog_timeout
        )
        return fresh and beat.step_running_s < step_limit

    @property
    def _last_heartbeat(self) -> Optional[tuple[float, Heartbeat]]:
        """(arrival, heartbeat); with replicas, the worst replica's."""
        return self._heartbeat if self.dp is None else self.dp.heartbeat

    @property
    def num_in_flight(self) -> int:
        return len(self.rid_to_state)

    def end_in_flight(self, message: str) -> int:
        """End every in-flight request with a 503 (shutdown); returns how many there were."""
        states = [s for s in self.rid_to_state.values() if not s.finished]
        for state in states:
            logger.warning("request %s ended: %s", state.rid, message)
            if self.failure is None:
                self._send(AbortReq(state.rid))
            state.finish(FinishReason.abort(message, 503))
        return len(states)

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
    def is_generation(self) -> bool:
        """False when the served model is an embedding model (--is-embedding)."""
        return bool(self.model_info.get("is_generation", True))

    @property
    def image_processor(self) -> Any:
        """The served model's ImageProcessor; None for a model that reads no images."""
        if self._image_processor is None and self.is_ready:
            from sglang.srt.multimodal.processors import create_image_processor

            path = self.model_info.get("model_path") or self.tokenizer_path
            self._image_processor = create_image_processor(path, self.vocab_size) or False
        return self._image_processor or None

    @property
    def image_token(self) -> Optional[str]:
        """The prompt text that stands for one image (None for a text-only model)."""
        processor = self.image_processor
        if processor is None:
            return None
        return self.tokenizer.convert_ids_to_tokens(processor.image_token_id)

    @property
    def allowed_media_dirs(self) -> list[str]:
        """Folders whose files image_data may name (--allowed-local-media-path); none by default."""
        given = self.server_args.allowed_local_media_path
        return [d for d in given.split(os.pathsep) if d] if given else []

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

    def apply_chat_template(
        self,
        messages: list[dict],
        tools: Optional[list[dict[str, Any]]] = None,
        template_kwargs: Optional[dict[str, Any]] = None,
    ) -> str:
        """Render OpenAI-style messages with the chat template, ready for the assistant's turn.

        `tools` go to the template's `tools` argument (a template that renders no tools gets
        them described in the system message); `template_kwargs` become template variables
        (e.g. enable_thinking).
        """
        if not self.is_generation:  # checked first: a template would not help
            raise ValueError(NOT_A_GENERATION_SERVER)
        template = self.chat_template
        if template is None:
            raise ValueError(
                "the model has no chat template; start the server with --chat-template"
            )
        plain = normalize_messages(messages, self.image_token)
        kwargs = _template_kwargs(template_kwargs)
        if tools or any("tool_calls" in m for m in plain):
            parser = self.tool_parser or get_parser("hermes")
            plain = with_tools_in_text(
                plain, tools, parser.instructions(), parser.format_calls, template
            )
            if tools and "tools" in template:
                kwargs["tools"] = tools
        try:
            return self.tokenizer.apply_chat_template(
                plain, chat_template=template, tokenize=False, add_generation_prompt=True, **kwargs
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
        """Token ids of a prompt; no second BOS when the text (a rendered template) has one.

        ValueError for a text that cannot fit the context whatever its tokens (judged from its
        length before any tokenizing) or that holds a lone UTF-16 surrogate."""
        self._check_text_length(text)
        bos = getattr(self.tokenizer, "bos_token", None)
        add_special = not (bos and text.startswith(bos))
        try:
            return list(self.tokenizer.encode(text, add_special_tokens=add_special))
        except TypeError:  # what the fast tokenizer raises for text it cannot encode
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"the text holds a lone UTF-16 surrogate: {e.reason}") from None
            raise

    def _check_text_length(self, text: str) -> None:
        if self._max_token_chars is None:
            self._max_token_chars = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        # NOTE: each token stands for at most _max_token_chars characters; twice that allows for
        # normalizers that expand text. A longer text cannot fit, so it is not tokenized at all.
        limit = self.context_len * self._max_token_chars * 2
        if self.context_len and len(text) > limit:
            raise ValueError(
                f"the text has {len(text)} characters: more than a context of "
                f"{self.context_len} tokens can hold"
            )

    # ---------------------------------------------------------------- generation

    async def generate_request(
        self, obj: GenerateReqInput, request: Optional[fastapi.Request] = None
    ) -> AsyncIterator[Union[dict[str, Any], list[dict[str, Any]]]]:
        """Run one /generate body; yields native outputs (see module docs of http_server)."""
        await self._require_ready()
        # NOTE: images are read and preprocessed there too; the event loop keeps serving others
        if _text_size(obj.text) > _BUILD_INLINE_CHARS or obj.image_data:
            reqs, is_batch = await asyncio.to_thread(_build_and_trim, self.builder, obj)
        else:
            reqs, is_batch = self.builder.build(obj)
        event = asyncio.Event()
        states = self._register(reqs, event, obj.return_text_in_logprobs, obj.log_metrics)
        try:
            self._send(reqs if is_batch else reqs[0])
            if obj.stream:
                await self._wait_grammars(states, request)
            async for out in self._outputs(states, is_batch, obj.stream, request):
                yield out
        except _ClientDisconnected:
            logger.info("client disconnected; aborting %s", [s.rid for s in states])
        finally:
            self._release(states)

    async def encode_request(
        self, obj: EmbeddingReqInput, request: Optional[fastapi.Request] = None
    ) -> Union[EmbeddingOutput, list[EmbeddingOutput]]:
        """Run one /encode body: each prompt's pooled embedding (a list for a batch)."""
        await self._require_ready()
        reqs, is_batch = build_embedding_requests(self, obj)
        event = asyncio.Event()
        states = [ReqState(r.rid, event, prompt_tokens=len(r.input_ids)) for r in reqs]
        self.rid_to_state.update((s.rid, s) for s in states)
        try:
            self._send(reqs)
            async for _ in self._updates(states, request):
                pass
            self._check_outcome(states)
        except _ClientDisconnected:
            raise RuntimeError("the client disconnected") from None
        finally:
            self._release(states)
        outs = [embedding_output(s) for s in states]
        return outs if is_batch else outs[0]

    async def _outputs(
        self, states: list[ReqState], is_batch: bool, stream: bool, request: Any
    ) -> AsyncIterator[Union[GenerateOutput, list[GenerateOutput]]]:
        async for index, state in self._updates(states, request):
            if stream:
                self._check_outcome(states)
                yield state.snapshot(index if is_batch else None)
        if not stream:
            self._check_outcome(states)
            outs = [s.snapshot() for s in states]
            yield outs if is_batch else outs[0]

    async def _wait_grammars(self, states: list[ReqState], request: Any) -> None:
        """Before a stream starts: wait until the scheduler has compiled every grammar (any
        output of a constrained request says so), so a bad one still gets its 400."""
        event = states[0].event
        while any(s.constrained and not (s.seen_output or s.finished) for s in states):
            await self._wait_event(event, request)
            event.clear()
        event.set()  # the outputs that arrived meanwhile are still to be handed out
        self._check_outcome(states)

    def _check_outcome(self, states: list[ReqState]) -> None:
        """ValueError (a 400) for a request the scheduler found invalid; RequestFailed with
        the abort's status (500 internal error, 503 overload or shutdown); RuntimeError (a 503)
        when the scheduler is gone."""
        for s in states:
            reason = s.finish_reason
            if reason is None or reason.status is None:
                continue
            if reason.status == 400:
                raise ValueError(reason.message)
            logger.warning("request %s failed (%d): %s", s.rid, reason.status, reason.message)
            retry = _RETRY_AFTER_S if reason.status == 503 else None
            raise RequestFailed(reason.message or "request failed", reason.status, retry)
        if self.failure is not None and any(s.failed for s in states):
            raise RuntimeError(f"the scheduler is not running: {self.failure}")

    async def _updates(
        self, states: list[ReqState], request: Any
    ) -> AsyncIterator[tuple[int, ReqState]]:
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
        self,
        reqs: list[TokenizedGenerateReqInput],
        event: asyncio.Event,
        return_text: bool,
        log_metrics: bool = True,
    ) -> list[ReqState]:
        states = []
        for req in reqs:
            constrained = req.sampling_params.grammar is not None
            state = ReqState(req.rid, event, req.return_logprob, return_text, constrained)
            state.prompt_tokens = len(req.input_ids)
            if self.metrics is not None and log_metrics:
                state.timing = self.metrics.start()
            self.rid_to_state[req.rid] = state
            states.append(state)
        return states

    def _release(self, states: list[ReqState]) -> None:
        """Forget the states; abort those the scheduler still runs (the client went away)."""
        # NOTE: synchronous on purpose: this runs while the caller's task is being cancelled.
        for state in states:
            self.rid_to_state.pop(state.rid, None)
            if state.timing is not None and self.metrics is not None:
                self.metrics.on_finish(state.timing, state)
                state.timing = None
            if not state.finished and self.failure is None:
                self._send(AbortReq(state.rid))
            if self.dp is not None:
                self.dp.release(state.rid)

    def abort_request(self, rid: str = "", abort_all: bool = False) -> list[str]:
        """Abort a request (and its n>1 / batch siblings `rid_i`); returns the aborted rids."""
        rids = [
            r
            for r in self.rid_to_state
            if abort_all or r == rid or (rid and r.startswith(rid + "_"))
        ]
        for r in rids:
            self._send(AbortReq(r))
            self.rid_to_state[r].finish(FinishReason.abort("aborted by request"))
        return rids

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
        if self.dp is not None:
            return await self.dp.request_merged(msg, reply_type)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._replies[reply_type].append(future)
        self._send(msg)
        return await future

    # ---------------------------------------------------------------- tokenization & checks

    async def _require_ready(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"the scheduler is not running: {self.failure}")
        if self.draining:
            raise RequestFailed("the server is shutting down", 503, _RETRY_AFTER_S)
        await self.wait_ready()

    # ---------------------------------------------------------------- scheduler side

    def _send(self, msg: Any) -> None:
        assert self._send_sock is not None, "call start() first"
        # NOTE: a PUSH socket with no high-water mark never blocks, so no await is needed.
        if self.dp is not None:
            self.dp.send(msg)
        else:
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
                state = self.rid_to_state.get(out.rid)
                if state is not None and not state.finished:  # else aborted or released already
                    state.apply(out, self.token_text)
                    if state.timing is not None and self.metrics is not None:
                        self.metrics.on_tokens(state.timing, len(out.output_ids))
        elif isinstance(msg, (FlushCacheReply, GetServerInfoReply)):
            waiters = self._replies[type(msg)]
            if waiters and not waiters[0].done():
                waiters.popleft().set_result(msg)
            elif waiters:
                waiters.popleft()
        elif isinstance(msg, Heartbeat):
            self._heartbeat = (time.monotonic(), msg)
        elif isinstance(msg, SchedulerReady):
            self.ready_info = msg
            self._heartbeat = (time.monotonic(), Heartbeat(0.0))  # heartbeats follow from now
            assert self._ready is not None
            self._ready.set()
        elif isinstance(msg, SchedulerFailed):
            self._fail(f"the scheduler failed to start: {msg.message}")
        else:
            logger.warning("unexpected message from the scheduler: %r", msg)

    async def _watch_scheduler(self, proc: BaseProcess, label: str) -> None:
        limit = self.server_args.watchdog_timeout
        while proc.is_alive():
            await asyncio.sleep(_WATCH_INTERVAL_S)
            beat = self._last_heartbeat
            if beat is not None and time.monotonic() - beat[0] > limit:
                if self.failure is None:
                    self._fail(
                        f"the scheduler stopped responding: no heartbeat for {limit:g}s "
                        "(--watchdog-timeout); the process is frozen or overloaded"
                    )
                return
        if self.failure is None:
            self._fail(f"{label} exited (exit code {proc.exitcode})")

    def _fail(self, message: str) -> None:
        """The scheduler is gone: fail everything waiting on it, then tell the owner once."""
        first = self.failure is None
        self.failure = message
        logger.error("%s", message)
        for state in list(self.rid_to_state.values()):
            if not state.finished:
                state.failed = True
                state.finish(FinishReason.abort(message))
        for waiters in self._replies.values():
            while waiters:
                future = waiters.popleft()
                if not future.done():
                    future.set_exception(RuntimeError(message))
        if self.dp is not None:
            self.dp.fail_waiters(message)
        if self._ready is not None:
            self._ready.set()
        if first and self.on_failure is not None:
            self.on_failure(message)


# -------------------------------------------------------------------- helpers


_RESERVED_TEMPLATE_ARGS = (
    "messages",
    "tools",
    "conversation",
    "chat_template",
    "tokenize",
    "add_generation_prompt",
    "documents",
    "continue_final_message",
    "return_dict",
)


def _template_kwargs(given: Optional[dict[str, Any]]) -> dict[str, Any]:
    """chat_template_kwargs, checked: an object whose keys are not the template's own args."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise ValueError(f"chat_template_kwargs must be an object, got {given!r}")
    reserved = sorted(k for k in given if k in _RESERVED_TEMPLATE_ARGS)
    if reserved:
        raise ValueError(f"chat_template_kwargs may not set {', '.join(reserved)}")
    return dict(given)


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    if not path:
        raise ValueError("no tokenizer path: give --model-path or --tokenizer-path")
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def _build_and_trim(builder: RequestBuilder, obj: GenerateReqInput) -> Any:
    """Build a large request, then hand the tokenizer's temporary memory back to the OS (the C
    allocator keeps freed memory otherwise, and a few huge prompts would leave the process
    hundreds of MB larger for good)."""
    try:
        return builder.build(obj)
    finally:
        _malloc_trim()


def _malloc_trim() -> None:
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _LIBC = False
    trim = getattr(_LIBC, "malloc_trim", None) if _LIBC else None
    if trim is not None:  # glibc only
        trim(0)


_LIBC: Any = None


def _text_size(text: Any) -> int:
    if isinstance(text, str):
        return len(text)
    if isinstance(text, list):
        return sum(len(t) for t in text if isinstance(t, str))
    return 0


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
