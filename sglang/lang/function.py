"""SglFunction: a decorated program, and how it is run, run in batches, bound and traced.

It sits above the interpreter and the tracer (it calls both); `ir.py` below them holds only
the expression nodes, so no module of the frontend imports one that imports it back.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union

from sglang.global_config import global_config, resolve_backend
from sglang.lang.interpreter import ProgramState, run_program, run_program_batch
from sglang.lang.ir import RUN_SAMPLING_PARAM_NAMES, SglSamplingParams
from sglang.lang.tracer import TracedProgram, extract_prefix_by_tracing, trace_program

if TYPE_CHECKING:
    from sglang.lang.backend.base import BaseBackend


class SglFunction:
    """A program: a Python function whose first parameter is the program state."""

    def __init__(
        self,
        func: Callable[..., Any],
        num_api_spec_tokens: Optional[int] = None,
        bind_arguments: Optional[dict[str, Any]] = None,
    ) -> None:
        if not callable(func):
            raise ValueError(f"@function expects a function, got {func!r}")
        params = list(inspect.signature(func).parameters.values())
        if not params:
            raise ValueError(f"program {func.__name__!r} needs a first parameter for the state")
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens
        self.bind_arguments = dict(bind_arguments or {})
        self.arg_names = [p.name for p in params[1:]]
        self.num_required_args = sum(1 for p in params[1:] if p.default is inspect.Parameter.empty)
        self.__name__ = getattr(func, "__name__", "program")
        self.__doc__ = func.__doc__

    def bind(self, **kwargs: Any) -> SglFunction:
        """A copy of this program with some arguments fixed."""
        unknown = sorted(set(kwargs) - set(self.arg_names))
        if unknown:
            raise ValueError(f"bind(): {self.__name__} has no argument(s) {unknown}")
        return SglFunction(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    def run(
        self,
        *args: Any,
        stream: bool = False,
        backend: Optional[BaseBackend] = None,
        **kwargs: Any,
    ) -> ProgramState:
        """Run the program once; keyword arguments named like sampling parameters
        (max_new_tokens, stop, temperature, top_p, ...) are defaults for every gen."""
        sampling, program_kwargs = split_sampling_kwargs(kwargs)
        return run_program(self, resolve_backend(backend), args, program_kwargs, sampling, stream)

    def run_batch(
        self,
        batch_kwargs: list[Union[dict[str, Any], list[Any], tuple[Any, ...]]],
        *,
        backend: Optional[BaseBackend] = None,
        num_threads: Union[str, int] = "auto",
        progress_bar: bool = False,
        generator_style: bool = False,
        **sampling: Any,
    ) -> Union[list[ProgramState], Iterator[ProgramState]]:
        """Run the program once per item, concurrently; states come back in input order.

        An item is a dict of keyword arguments, or (as in SGLang) a list or tuple of the
        program's arguments in order.
        """
        defaults, rest = split_sampling_kwargs(sampling)
        if rest:
            raise ValueError(f"run_batch(): unknown keyword argument(s) {sorted(rest)}")
        batch_kwargs = (
            [self._as_kwargs(i, item) for i, item in enumerate(batch_kwargs)]
            if isinstance(batch_kwargs, (list, tuple))
            else batch_kwargs
        )
        check_batch_kwargs(batch_kwargs)
        chosen = resolve_backend(backend)
        if len(batch_kwargs) > 1 and global_config.enable_precache_with_tracing:
            cache_program_prefix(self, chosen)
        return run_program_batch(
            self, chosen, batch_kwargs, defaults, num_threads, progress_bar, generator_style
        )

    def _as_kwargs(self, index: int, item: Any) -> Any:
        """A run_batch item as keyword arguments (dicts and non-sequences pass unchanged)."""
        if not isinstance(item, (list, tuple)):
            return item
        if not self.num_required_args <= len(item) <= len(self.arg_names):
            raise ValueError(
                f"run_batch(): item {index} has {len(item)} argument(s); {self.__name__} takes "
                f"{self.num_required_args} to {len(self.arg_names)} ({', '.join(self.arg_names)})"
            )
        return dict(zip(self.arg_names, item))

    def cache(self, backend: Optional[BaseBackend] = None) -> str:
        """Cache the program's constant prefix (found by tracing) on the backend; returns it."""
        return cache_program_prefix(self, resolve_backend(backend))

    def trace(self, *, backend: Optional[BaseBackend] = None, **kwargs: Any) -> TracedProgram:
        """Record the program's nodes without running any generation (unset arguments are
        placeholders)."""
        return trace_program(self, kwargs, backend)

    def __call__(self, *args: Any, **kwargs: Any) -> ProgramState:
        return self.run(*args, **kwargs)

    def __repr__(self) -> str:
        return f"SglFunction({self.__name__})"


def cache_program_prefix(program: SglFunction, backend: BaseBackend) -> str:
    """Trace the program, and cache its constant prefix on the backend once; returns it."""
    prefix = extract_prefix_by_tracing(program, backend)
    if prefix:
        backend.cache_prefix(prefix)
    return prefix


def split_sampling_kwargs(kwargs: dict[str, Any]) -> tuple[SglSamplingParams, dict[str, Any]]:
    """Split run()'s keyword arguments into sampling defaults and the program's own."""
    sampling = {k: v for k, v in kwargs.items() if k in RUN_SAMPLING_PARAM_NAMES}
    rest = {k: v for k, v in kwargs.items() if k not in RUN_SAMPLING_PARAM_NAMES}
    if sampling.get("stop") is None:
        sampling.pop("stop", None)
    return SglSamplingParams(**sampling), rest


def check_batch_kwargs(batch_kwargs: Any) -> None:
    if not isinstance(batch_kwargs, (list, tuple)):
        raise ValueError(
            f"run_batch() expects a list of kwargs dicts, got {type(batch_kwargs).__name__}"
        )
    for i, kw in enumerate(batch_kwargs):
        if not isinstance(kw, dict):
            raise ValueError(f"run_batch(): item {i} is {kw!r}, expected a dict of arguments")
