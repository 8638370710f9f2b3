"""Runs programs: ProgramState, the executor thread per program state, fork/join, streaming."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator, Optional, Union

from sglang.global_config import global_config
from sglang.lang.ir import (
    SglArgument,
    SglCommitLazy,
    SglConstantText,
    SglExpr,
    SglExprList,
    SglGen,
    SglImage,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    SglSeparateReasoning,
    SglVariable,
    SglVarScopeBegin,
    SglVarScopeEnd,
    SglVideo,
    TracingError,
    to_expr,
)
from sglang.utils import data_url, encode_base64

if TYPE_CHECKING:
    from sglang.lang.backend.base import BaseBackend
    from sglang.lang.chat_template import ChatTemplate
    from sglang.lang.function import SglFunction


class StreamExecutor:
    """Executes the expressions appended to one program state, in order, on a worker thread.

    Appending (`submit`) never blocks; readers (`get_var`, `sync`, `text_iter`) wait on one
    condition variable that every change notifies. NOTE: the attributes listed in BaseBackend's
    docstring (text_, messages_, cur_images, images_, cur_role, sid, num_api_spec_tokens) are
    what backends read; they change only on the worker thread.
    """

    def __init__(
        self,
        backend: "BaseBackend",
        arguments: dict[str, Any],
        default_sampling_para: SglSamplingParams,
        chat_template: Optional["ChatTemplate"] = None,
        stream: bool = False,
        num_api_spec_tokens: Optional[int] = None,
        use_thread: bool = True,
    ) -> None:
        self.sid = uuid.uuid4().hex
        self.backend = backend
        self.arguments = arguments
        self.default_sampling_para = default_sampling_para
        self.chat_template = chat_template or backend.get_chat_template()
        self.stream = stream
        self.num_api_spec_tokens = num_api_spec_tokens
        self.use_thread = use_thread

        self.text_ = ""
        self.messages_: list[dict[str, Any]] = []
        self.cur_role: Optional[str] = None
        self.cur_images: list[tuple[Optional[str], str]] = []
        self.images_: list[tuple[Optional[str], str]] = []
        self.variables: dict[str, Any] = {}
        self.meta_info: dict[str, Any] = {}
        self.error_: Optional[BaseException] = None

        self.cur_role_begin_pos = 0  # where the open role's content starts in text_
        # (start, end, data URL) of each image in the open turn
        self._turn_images: list[tuple[int, int, str]] = []
        self._scope_starts: dict[str, int] = {}
        self._stream_values: dict[str, str] = {}  # partial values of variables being streamed
        self._stream_metas: dict[str, dict[str, Any]] = {}  # their latest meta info
        self._queue: collections.deque[SglExpr] = collections.deque()
        self._cond = threading.Condition()
        self._worker_running = False
        self._ended = False
        self._finished_hook_done = False
        self._children: list[StreamExecutor] = []
        # The thread that runs the program body: its reads of missing variables fail fast.
        self.owner_ident: Optional[int] = None

    # ------------------------------------------------------------ queue

    def submit(self, expr: SglExpr) -> None:
        """Queue `expr`; it runs after everything appended before it."""
        if not self.use_thread:
            self._execute(expr)
            return
        with self._cond:
            self._queue.append(expr)
            if self._worker_running:
                return
            self._worker_running = True
        threading.Thread(
            target=self._work, name=f"sglang-executor-{self.sid[:8]}", daemon=True
        ).start()

    def _work(self) -> None:
        while True:
            expr = self._next_or_stop()
            if expr is None:
                return
            self._execute_guarded(expr)

    def _next_or_stop(self) -> Optional[SglExpr]:
        """The next queued expression; None once idle (after the end-of-program hook, if due)."""
        with self._cond:
            if self._queue:
                return self._queue.popleft()
            if not self._ended or self._finished_hook_done:
                self._worker_running = False
                self._cond.notify_all()
                return None
            self._finished_hook_done = True
        self._end_program()  # NOTE: before readers can see this executor idle
        return self._next_or_stop()

    def _end_program(self) -> None:
        try:
            self.backend.end_program(self)
        except Exception as e:
            self.record_error(e)

    def _execute_guarded(self, expr: SglExpr) -> None:
        if self.error_ is not None:
            return  # a failed program runs nothing more
        try:
            self._execute(expr)
        except BaseException as e:  # surfaces through error(), get_var() and the program's run()
            self.record_error(e)

    def record_error(self, error: BaseException) -> None:
        with self._cond:
            if self.error_ is None:
                self.error_ = error
            self._cond.notify_all()

    def sync(self) -> None:
        """Wait until every appended expression has run."""
        with self._cond:
            self._cond.wait_for(lambda: not self._worker_running)

    def end(self) -> None:
        """No more appends will come (the program body returned); forks end with their parent."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()
            children = list(self._children)
            call_hook = not self._worker_running and not self._finished_hook_done
            self._finished_hook_done = self._finished_hook_done or call_hook
        for child in children:
            child.end()
        if call_hook:
            self._end_program()

    @property
    def is_finished(self) -> bool:
        return self._ended and not self._worker_running

    # ------------------------------------------------------------ variables

    def get_var(self, name: str) -> Any:
        """The value of variable `name`, waiting for it; KeyError if it will never be set."""
        with self._cond:
            while name not in self.variables:
                if self.error_ is not None:
                    raise self.error_
                if not self._worker_running and (
                    self._ended or self.owner_ident == threading.get_ident()
                ):
                    raise KeyError(
                        f"variable {name!r} was never set (known: {sorted(self.variables)})"
                    )
                self._cond.wait()
            return self.variables[name]

    def set_var(self, name: str, value: Any, meta_info: Optional[dict[str, Any]] = None) -> None:
        with self._cond:
            self.variables[name] = value
            if meta_info is not None:
                self.meta_info[name] = meta_info
            self._stream_values.pop(name, None)
            self._stream_metas.pop(name, None)
            self._cond.notify_all()

    def get_meta_info(self, name: str) -> Any:
        self.get_var(name)
        return self.meta_info.get(name)

    # ------------------------------------------------------------ fork

    def fork(self, size: int) -> list["StreamExecutor"]:
        """`size` copies of this state as it is once everything appended so far has run."""
        if size < 1:
            raise ValueError(f"fork size {size!r} must be >= 1")
        self.sync()
        if size > 1 and self.text_ and self.error_ is None:
            self.backend.commit_lazy_operations(self)  # caches the shared prefix once
        children = [self._copy() for _ in range(size)]
        self.backend.fork_program(self, children)
        with self._cond:
            self._children.extend(children)
        return children

    def _copy(self) -> "StreamExecutor":
        c = StreamExecutor(
            self.backend,
            self.arguments,
            self.default_sampling_para,
            self.chat_template,
            self.stream,
            self.num_api_spec_tokens,
            self.use_thread,
        )
        c.text_, c.cur_role, c.error_ = self.text_, self.cur_role, self.error_
        c.messages_, c.images_, c.cur_images = (
            list(self.messages_),
            list(self.images_),
            list(self.cur_images),
        )
        c.variables, c.meta_info = dict(self.variables), dict(self.meta_info)
        c.cur_role_begin_pos, c._turn_images = self.cur_role_begin_pos, list(self._turn_images)
        c._scope_starts = dict(self._scope_starts)
        c.owner_ident = self.owner_ident
        return c

    # ------------------------------------------------------------ execution

    def _execute(self, expr: SglExpr) -> None:
        handler = _HANDLERS.get(type(expr))
        if handler is None:
            raise TypeError(f"cannot execute {expr!r}")
        handler(self, expr)

    def _fill(self, text: str) -> None:
        with self._cond:
            self.text_ += text
            self._cond.notify_all()

    def _run_list(self, expr: SglExprList) -> None:
        for e in expr.expr_list:
            self._execute(e)

    def _constant(self, expr: SglConstantText) -> None:
        self._fill(expr.value)

    def _variable(self, expr: SglVariable) -> None:
        source = expr.source.stream_executor if expr.source is not None else self
        self._fill(str(source.get_var(expr.name)))

    def _argument(self, expr: SglArgument) -> None:
        raise TracingError(f"argument placeholder {expr.name!r} cannot run")

    def _commit_lazy(self, expr: SglCommitLazy) -> None:
        self.backend.commit_lazy_operations(self)

    def _gen(self, expr: SglGen) -> None:
        params = self._with_role_stops(expr.resolve(self.default_sampling_para))
        if self.stream and params.n == 1:
            value, meta = self._gen_streaming(expr.name, params)
        else:
            value, meta = self.backend.generate(self, params)
            self._fill(value[0] if isinstance(value, list) else value)
        self.cur_images = []
        if expr.name is not None:
            self.set_var(expr.name, value, meta)

    def _gen_streaming(
        self, name: Optional[str], params: SglSamplingParams
    ) -> tuple[str, dict[str, Any]]:
        value, meta = "", {}
        for delta, piece_meta in self.backend.generate_stream(self, params):
            value, meta = value + delta, piece_meta
            with self._cond:
                self.text_ += delta
                if name is not None:
                    self._stream_values[name] = value
                    self._stream_metas[name] = piece_meta
                self._cond.notify_all()
        return value, meta

    def _with_role_stops(self, params: SglSamplingParams) -> SglSamplingParams:
        """Inside an assistant turn the template's end-of-turn strings stop generation too."""
        if self.cur_role != "assistant" or not self.chat_template.stop_str:
            return params
        stops = params.stop_list()
        extra = [s for s in self.chat_template.stop_str if s not in stops]
        if extra:
            params = params.clone()
            params.stop = stops + extra
        return params

    def _select(self, expr: SglSelect) -> None:
        decision = self.backend.select(self, expr.choices, expr.temperature, expr.choices_method)
        self._fill(decision.decision)
        self.cur_images = []
        if expr.name is not None:
            self.set_var(expr.name, decision.decision, decision.meta_info)

    def _video(self, expr: SglVideo) -> None:
        """The video's sampled frames, each appended as an image (in the order they play)."""
        from sglang.utils import sample_video_frames

        for frame in sample_video_frames(expr.path, expr.num_frames):
            self._image(SglImage(frame))

    def _image(self, expr: Union[SglImage, SglVideo]) -> None:
        path = expr.path if isinstance(expr.path, str) else None
        entry = (path, encode_base64(expr.path))
        self.images_.append(entry)
        self.cur_images.append(entry)
        start = len(self.text_)
        self._fill(self.chat_template.image_token)
        if self.cur_role is not None:
            self._turn_images.append((start, len(self.text_), data_url(entry[1])))
        self.backend.fill_image(self)

    def _role_begin(self, expr: SglRoleBegin) -> None:
        if self.cur_role is not None:
            raise ValueError(f"role {expr.role!r} begins inside the open {self.cur_role!r} turn")
        default_system = self.chat_template.default_system_prompt
        if (
            expr.role != "system"
            and default_system is not None
            and not self.messages_
            and not self.text_
        ):
            self._run_list(
                SglExprList(
                    [SglRoleBegin("system"), SglConstantText(default_system), SglRoleEnd("system")]
                )
            )
        prefix, _ = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
        self._fill(prefix)
        self.cur_role = expr.role
        self.cur_role_begin_pos = len(self.text_)
        self._turn_images = []

    def _role_end(self, expr: SglRoleEnd) -> None:
        if self.cur_role != expr.role:
            raise ValueError(f"role {expr.role!r} ends but the open turn is {self.cur_role!r}")
        content = self._turn_content()
        _, suffix = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
        self._fill(suffix)
        self.messages_.append({"role": expr.role, "content": content})
        self.cur_role = None

    def _turn_content(self) -> Union[str, list[dict[str, Any]]]:
        """The open turn's content: a string, or text and image_url parts in order."""
        end = len(self.text_)
        if not self._turn_images:
            return self.text_[self.cur_role_begin_pos : end]
        parts: list[dict[str, Any]] = []
        cursor = self.cur_role_begin_pos
        for start, stop, url in self._turn_images:
            if start > cursor:
                parts.append({"type": "text", "text": self.text_[cursor:start]})
            parts.append({"type": "image_url", "image_url": {"url": url}})
            cursor = stop
        if end > cursor:
            parts.append({"type": "text", "text": self.text_[cursor:end]})
        return parts

    def _separate_reasoning(self, expr: SglSeparateReasoning) -> None:
        """Split each named gen's value: the answer stays in the variable (and in the text),
        the reasoning goes to `<name>_reasoning_content`. With stream=True the text already
        streamed is left as it is; only the variables change."""
        from sglang.lang.reasoning import reasoning_var_name, split_reasoning

        for name in expr.names():
            value = self.variables.get(name)
            if not isinstance(value, str):
                continue
            reasoning, answer = split_reasoning(value, expr.model_type)
            at = self.text_.rfind(value)
            if not self.stream and at >= 0:
                with self._cond:
                    self.text_ = self.text_[:at] + answer + self.text_[at + len(value) :]
            self.set_var(reasoning_var_name(name), reasoning, self.meta_info.get(name))
            self.set_var(name, answer, self.meta_info.get(name))

    def _var_scope_begin(self, expr: SglVarScopeBegin) -> None:
        self._scope_starts[expr.name] = len(self.text_)

    def _var_scope_end(self, expr: SglVarScopeEnd) -> None:
        start = self._scope_starts.pop(expr.name, None)
        if start is None:
            raise ValueError(f"var_scope {expr.name!r} ends without having begun")
        self.set_var(expr.name, self.text_[start:])

    # ------------------------------------------------------------ streaming

    def wait_stream(self, var_name: Optional[str], pos: int) -> tuple[str, bool]:
        """(text past `pos`, done) of the whole text or of one variable, waiting for news."""
        with self._cond:
            while True:
                current, done = self._stream_view(var_name)
                if len(current) > pos or done:
                    return current[pos:], done
                self._cond.wait()

    def stream_meta(self, var_name: str) -> Optional[dict[str, Any]]:
        """The latest meta info of a variable: final once it is set, partial while streamed."""
        with self._cond:
            if var_name in self.variables:
                return self.meta_info.get(var_name)
            return self._stream_metas.get(var_name)

    def _stream_view(self, var_name: Optional[str]) -> tuple[str, bool]:
        stopped = self.is_finished or self.error_ is not None
        if var_name is None:
            return self.text_, stopped
        if var_name in self.variables:
            value = self.variables[var_name]
            return (value if isinstance(value, str) else str(value)), True
        return self._stream_values.get(var_name, ""), stopped


_HANDLERS: dict[type, Callable[[StreamExecutor, Any], None]] = {
    SglExprList: StreamExecutor._run_list,
    SglConstantText: StreamExecutor._constant,
    SglVariable: StreamExecutor._variable,
    SglArgument: StreamExecutor._argument,
    SglCommitLazy: StreamExecutor._commit_lazy,
    SglGen: StreamExecutor._gen,
    SglSelect: StreamExecutor._select,
    SglImage: StreamExecutor._image,
    SglVideo: StreamExecutor._video,
    SglRoleBegin: StreamExecutor._role_begin,
    SglRoleEnd: StreamExecutor._role_end,
    SglSeparateReasoning: StreamExecutor._separate_reasoning,
    SglVarScopeBegin: StreamExecutor._var_scope_begin,
    SglVarScopeEnd: StreamExecutor._var_scope_end,
}


class StateOps:
    """What every program state offers on top of `_submit`: `+=`, roles and var_scope."""

    def _submit(self, expr: SglExpr) -> None:
        raise NotImplementedError()

    def __iadd__(self, other: Union[str, SglExpr, list[Any]]) -> "StateOps":
        self._submit(to_expr(other))
        return self

    def system(self, expr: Union[str, SglExpr, None] = None) -> Any:
        return self._role("system", expr)

    def user(self, expr: Union[str, SglExpr, None] = None) -> Any:
        return self._role("user", expr)

    def assistant(self, expr: Union[str, SglExpr, None] = None) -> Any:
        return self._role("assistant", expr)

    def _role(self, role: str, expr: Union[str, SglExpr, None]) -> Any:
        """With an expression: the expression wrapped in the role; without: a context manager."""
        if expr is None:
            return self._role_scope(role)
        return SglExprList([SglRoleBegin(role), to_expr(expr), SglRoleEnd(role)])

    @contextlib.contextmanager
    def _role_scope(self, role: str) -> Iterator[None]:
        self._submit(SglRoleBegin(role))
        yield
        self._submit(SglRoleEnd(role))

    @contextlib.contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        """Capture the text appended inside the block as variable `name`."""
        self._submit(SglVarScopeBegin(name))
        yield
        self._submit(SglVarScopeEnd(name))


class ProgramState(StateOps):
    """The state `s` a program appends to; also what run() returns."""

    def __init__(self, stream_executor: StreamExecutor) -> None:
        self.stream_executor = stream_executor
        self.ret_value: Any = None

    def _submit(self, expr: SglExpr) -> None:
        self.stream_executor.submit(expr)

    def fork(
        self, size: int = 1, position_ids_offset: Optional[list[int]] = None
    ) -> "ProgramStateGroup":
        """`size` parallel copies of this state; their appends run concurrently.

        `position_ids_offset` is accepted for compatibility with SGLang's frontend, which
        passes it on without using it either; every fork continues at its parent's position.
        """
        _check_position_ids_offset(position_ids_offset, size)
        children = self.stream_executor.fork(size)
        return ProgramStateGroup([ProgramState(c) for c in children], self)

    def copy(self, position_ids_offset: Optional[list[int]] = None) -> "ProgramStateCopy":
        """A copy of this state (a fork of one), as it is once pending appends have run.

        As in SGLang, `with s.copy() as c:` works on the copy and joins it when the block
        ends: each variable the copy set becomes a one-element list in `s`. Unlike SGLang's
        (a context manager only), the copy may also be used on its own: `c = s.copy()` is an
        independent state that is never joined.
        """
        _check_position_ids_offset(position_ids_offset, 1)
        return ProgramStateCopy(self.stream_executor.fork(1)[0], self)

    def get_var(self, name: str) -> Any:
        return self.stream_executor.get_var(name)

    def set_var(self, name: str, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def get_meta_info(self, name: str) -> Any:
        """What the backend returned with variable `name` (logprobs, token counts, ...)."""
        return self.stream_executor.get_meta_info(name)

    def text(self) -> str:
        self.sync()
        return self.stream_executor.text_

    def messages(self) -> list[dict[str, Any]]:
        self.sync()
        return list(self.stream_executor.messages_)

    def error(self) -> Optional[BaseException]:
        """The exception that stopped the program (its __traceback__ attached), or None."""
        self.sync()
        return self.stream_executor.error_

    def sync(self) -> None:
        self.stream_executor.sync()

    def end(self) -> None:
        self.stream_executor.end()

    def text_iter(self, var_name: Optional[str] = None) -> Iterator[str]:
        """Yield the program's text (or one variable's) as it is produced.

        Without stream=True the whole text (or value) comes as one piece once it is ready.
        """
        ex = self.stream_executor
        if not ex.stream:
            yield self.text() if var_name is None else str(self.get_var(var_name))
            return
        pos = 0
        while True:
            chunk, done = ex.wait_stream(var_name, pos)
            if chunk:
                pos += len(chunk)
                yield chunk
            if done:
                break
        if ex.error_ is not None:
            raise ex.error_

    async def text_async_iter(
        self, var_name: Optional[str] = None, return_meta_data: bool = False
    ) -> AsyncIterator[Any]:
        """The asynchronous form of text_iter().

        With `return_meta_data=True` (a variable must be named) it yields `(chunk, meta_info)`
        pairs: the meta info the backend sent with the latest piece (the final one for the
        last chunk), as SGLang's frontend does.
        """
        if return_meta_data and var_name is None:
            raise ValueError("text_async_iter(return_meta_data=True) needs a variable name")
        loop = asyncio.get_running_loop()
        pieces = self.text_iter(var_name)
        done = object()
        while True:
            chunk = await loop.run_in_executor(None, next, pieces, done)
            if chunk is done:
                return
            if return_meta_data:
                assert var_name is not None
                yield chunk, self.stream_executor.stream_meta(var_name)
            else:
                yield chunk

    def __getitem__(self, name: str) -> Any:
        return self.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        self.sync()
        return name in self.stream_executor.variables

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"


class ProgramStateGroup:
    """The states returned by s.fork(n)."""

    def __init__(self, states: list[ProgramState], src_state: ProgramState) -> None:
        self.states = states
        self.src_state = src_state
        self._fork_vars = set(src_state.stream_executor.variables)

    def join(self, mode: str = "gather_variable") -> None:
        """Wait for every fork; each variable a fork set becomes a list in the parent."""
        if mode != "gather_variable":
            raise ValueError(f"join mode {mode!r} is not supported; use 'gather_variable'")
        gathered: dict[str, list[Any]] = {}
        for state in self.states:
            ex = state.stream_executor
            ex.sync()
            if ex.error_ is not None:
                raise ex.error_
            for name in ex.variables.keys() - self._fork_vars:
                gathered.setdefault(name, []).append(ex.variables[name])
        parent = self.src_state.stream_executor
        for name, values in gathered.items():
            metas = [s.stream_executor.meta_info.get(name) for s in self.states]
            parent.set_var(name, values, metas)
        for state in self.states:
            state.end()

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: ProgramState) -> None:
        if value is not self.states[i]:
            raise ValueError("fork states cannot be replaced; append to them with +=")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(
        self, other: Union[str, SglExpr, list[Any], tuple[Any, ...], Callable[[int], Any]]
    ) -> "ProgramStateGroup":
        """Append to every fork: the same text or expression to each; item i of a list or tuple
        to fork i; or what a callable returns for the fork's index."""
        if isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(
                    f"cannot append {len(other)} items to {len(self.states)} forks: "
                    "give one item per fork"
                )
            for state, item in zip(self.states, other):
                state += item
            return self
        for i, state in enumerate(self.states):
            state += other(i) if callable(other) and not isinstance(other, SglExpr) else other
        return self


class ProgramStateCopy(ProgramState):
    """What `s.copy()` returns: a state of its own that, used as a context manager, is joined
    into its source when the block ends."""

    def __init__(self, stream_executor: StreamExecutor, src_state: ProgramState) -> None:
        super().__init__(stream_executor)
        self.src_state = src_state

    def __enter__(self) -> "ProgramStateCopy":
        return self

    def __exit__(self, *exc: Any) -> None:
        ProgramStateGroup([self], self.src_state).join()


def _check_position_ids_offset(offset: Optional[list[int]], size: int) -> None:
    if offset is None:
        return
    if not isinstance(offset, (list, tuple)) or len(offset) != size:
        raise ValueError(f"position_ids_offset={offset!r} must be a list of {size} ints")


# ---------------------------------------------------------------- running programs


def run_program(
    program: "SglFunction",
    backend: "BaseBackend",
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    default_sampling_para: SglSamplingParams,
    stream: bool,
    sync: bool = False,
    reraise: bool = True,
) -> ProgramState:
    """Run one program; with stream=True its body runs on its own thread and this returns at once."""
    kwargs = {**program.bind_arguments, **kwargs}
    executor = StreamExecutor(
        backend,
        kwargs,
        default_sampling_para,
        stream=stream,
        num_api_spec_tokens=program.num_api_spec_tokens,
    )
    state = ProgramState(executor)
    if stream:
        body = threading.Thread(
            target=_run_body, args=(state, program, args, kwargs, False, False), daemon=True
        )
        body.start()
    else:
        _run_body(state, program, args, kwargs, sync, reraise)
    return state


def _run_body(
    state: ProgramState,
    program: "SglFunction",
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    sync: bool,
    reraise: bool,
) -> None:
    executor = state.stream_executor
    executor.owner_ident = threading.get_ident()
    executor.backend.begin_program(executor)
    try:
        state.ret_value = program.func(state, *args, **kwargs)
    except Exception as e:
        executor.record_error(e)
        if reraise:
            raise
    finally:
        executor.end()
    if sync:
        executor.sync()
    if global_config.verbosity >= 2:
        print(executor.text_)


def resolve_num_threads(num_threads: Union[str, int], batch_size: int) -> int:
    """'auto': one thread per program up to a cap, so a small client still fills the server."""
    if num_threads == "auto":
        return max(1, min(batch_size, global_config.max_auto_batch_threads))
    if isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 1:
        return num_threads
    raise ValueError(f"num_threads={num_threads!r}: expected 'auto' or a positive int")


def run_program_batch(
    program: "SglFunction",
    backend: "BaseBackend",
    batch_kwargs: list[dict[str, Any]],
    default_sampling_para: SglSamplingParams,
    num_threads: Union[str, int],
    progress_bar: bool,
    generator_style: bool,
) -> Union[list[ProgramState], Iterator[ProgramState]]:
    """Run many programs on a thread pool; a program's failure stays in its own state.error()."""
    threads = resolve_num_threads(num_threads, len(batch_kwargs))

    def run_one(kwargs: dict[str, Any]) -> ProgramState:
        return run_program(
            program, backend, (), kwargs, default_sampling_para, False, sync=True, reraise=False
        )

    if generator_style:
        return _iter_batch(run_one, batch_kwargs, threads, progress_bar)
    with ThreadPoolExecutor(threads, thread_name_prefix="sglang-batch") as pool:
        futures = [pool.submit(run_one, kw) for kw in batch_kwargs]
        _wait_with_progress(futures, progress_bar)
        return [f.result() for f in futures]


def _iter_batch(
    run_one: Callable[[dict[str, Any]], ProgramState],
    batch_kwargs: list[dict[str, Any]],
    threads: int,
    progress_bar: bool,
) -> Iterator[ProgramState]:
    with ThreadPoolExecutor(threads, thread_name_prefix="sglang-batch") as pool:
        futures = [pool.submit(run_one, kw) for kw in batch_kwargs]
        bar = _progress(len(futures), progress_bar)
        for f in futures:
            state = f.result()
            if bar is not None:
                bar.update(1)
            yield state
        if bar is not None:
            bar.close()


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total)


def _wait_with_progress(futures: list[Future], progress_bar: bool) -> None:
    if not progress_bar:
        return
    from concurrent.futures import as_completed

    bar = _progress(len(futures), True)
    for _ in as_completed(futures):
        bar.update(1)
    bar.close()
