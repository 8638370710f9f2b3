"""Engine: the runtime in-process (scheduler process + tokenizer manager, no HTTP), and its launch helpers."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import logging
import multiprocessing
import shutil
import threading
import weakref
from typing import Any, AsyncIterator, Callable, Iterator, Optional, Union

from sglang.srt.managers.data_parallel import Replica, start_replicas
from sglang.srt.managers.io_struct import EmbeddingReqInput, GenerateReqInput, outputs_json
from sglang.srt.managers.tokenizer_manager import TokenizerManager
from sglang.srt.server_args import PortArgs, ServerArgs

logger = logging.getLogger(__name__)

SchedulerTarget = Callable[[ServerArgs, PortArgs], None]


@dataclasses.dataclass
class Subprocesses:
    """What launch_subprocesses started: stop() ends the scheduler and removes the IPC folder."""

    scheduler_args: ServerArgs  # model_path replaced by the resolved local folder
    port_args: PortArgs
    process: multiprocessing.process.BaseProcess
    # --dp-size N > 1: every replica (process above is replicas[0]'s); empty for one scheduler
    replicas: list[Replica] = dataclasses.field(default_factory=list)

    def stop(self, grace_s: float = 10.0) -> None:
        if self.replicas:
            stop_processes([r.process for r in self.replicas], grace_s)
        else:
            stop_process(self.process, grace_s)
        folder = self.port_args.tokenizer_ipc.removeprefix("ipc://").rsplit("/", 1)[0]
        shutil.rmtree(folder, ignore_errors=True)


def launch_subprocesses(
    server_args: ServerArgs, target: Optional[SchedulerTarget] = None
) -> Subprocesses:
    """Resolve the model to a local folder and spawn the scheduler process on it."""
    from sglang.srt.model_loader.loader import resolve_model_path

    if server_args.node_rank > 0:
        raise ValueError(
            f"node_rank={server_args.node_rank}: a node other than 0 runs only tensor-parallel "
            "workers, started by `python -m sglang.launch_server ... --node-rank "
            f"{server_args.node_rank}`; the scheduler runs on node 0"
        )

    scheduler_args = dataclasses.replace(server_args)
    scheduler_args.model_path = resolve_model_path(server_args.model_path)
    if target is None:
        from sglang.srt.managers.scheduler_process import run_scheduler_process as target
    port_args = PortArgs.new()
    ctx = multiprocessing.get_context("spawn")
    if server_args.dp_size > 1:
        replicas = start_replicas(ctx, target, scheduler_args, port_args)
        return Subprocesses(scheduler_args, port_args, replicas[0].process, replicas)
    # NOTE: daemon, so the scheduler is terminated when this process exits normally; the
    # scheduler itself also exits when it notices its parent is gone (e.g. after SIGKILL).
    proc = ctx.Process(
        target=target, args=(scheduler_args, port_args), name="sglang-scheduler", daemon=True
    )
    proc.start()
    return Subprocesses(scheduler_args, port_args, proc)


def stop_process(proc: multiprocessing.process.BaseProcess, grace_s: float = 10.0) -> None:
    """SIGTERM, wait up to grace_s, then SIGKILL."""
    if proc.is_alive():
        proc.terminate()
        proc.join(grace_s)
    if proc.is_alive():
        proc.kill()
        proc.join()


def stop_processes(procs: list[multiprocessing.process.BaseProcess], grace_s: float) -> None:
    """stop_process for several at once: all get SIGTERM first, then share the grace period."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        stop_process(proc, grace_s)


class Engine:
    """The runtime without HTTP: `Engine(model_path=None, **server_args_fields)`.

    Requests run on a private event loop in a background thread; the public methods are
    synchronous. Use it as a context manager or call shutdown() (also done at exit).
    """

    def __init__(self, model_path: Optional[str] = None, **kwargs: Any) -> None:
        self.server_args = ServerArgs(model_path=model_path, **kwargs)
        self._subprocesses: Optional[Subprocesses] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        try:
            self._start()
        except BaseException:
            self.shutdown()
            raise
        atexit.register(_shutdown_ref, weakref.ref(self))

    def _start(self) -> None:
        self._subprocesses = launch_subprocesses(self.server_args)
        sub = self._subprocesses
        self.tokenizer_manager = TokenizerManager(
            self.server_args,
            sub.port_args,
            sub.scheduler_args.model_path,
            sub.process,
            sub.replicas,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sglang-engine", daemon=True
        )
        self._thread.start()
        self._run(self.tokenizer_manager.start())
        self._run(self.tokenizer_manager.wait_ready())

    def _run(self, coro: Any) -> Any:
        assert self._loop is not None, "the engine is shut down"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def generate(
        self,
        prompt: Union[str, list[str], None] = None,
        sampling_params: Union[dict, list[dict], None] = None,
        input_ids: Union[list[int], list[list[int]], None] = None,
        return_logprob: bool = False,
        logprob_start_len: Optional[int] = None,
        top_logprobs_num: Optional[int] = None,
        stream: bool = False,
        return_text_in_logprobs: bool = False,
    ) -> Union[dict, list[dict], Iterator[dict]]:
        """Generate like POST /generate: a dict, a list for a batch, or an iterator when stream."""
        obj = GenerateReqInput(
            text=prompt,
            input_ids=input_ids,
            sampling_params=sampling_params,
            return_logprob=return_logprob,
            logprob_start_len=-1 if logprob_start_len is None else logprob_start_len,
            top_logprobs_num=top_logprobs_num or 0,
            return_text_in_logprobs=return_text_in_logprobs,
            stream=stream,
        )
        if stream:
            return self._stream(obj)
        return self._run(self._collect(obj))

    async def _collect(self, obj: GenerateReqInput) -> Any:
        result = None
        async for out in self.tokenizer_manager.generate_request(obj):
            result = outputs_json(out)
        return result

    def _stream(self, obj: GenerateReqInput) -> Iterator[dict]:
        agen = self.tokenizer_manager.generate_request(obj)
        try:
            while True:
                try:
                    yield outputs_json(self._run(agen.__anext__()))
                except StopAsyncIteration:
                    return
        finally:
            if self._loop is not None:
                self._run(agen.aclose())

    async def async_generate(
        self,
        prompt: Union[str, list[str], None] = None,
        sampling_params: Union[dict, list[dict], None] = None,
        input_ids: Union[list[int], list[list[int]], None] = None,
        return_logprob: bool = False,
        logprob_start_len: Optional[int] = None,
        top_logprobs_num: Optional[int] = None,
        stream: bool = False,
        return_text_in_logprobs: bool = False,
    ) -> Union[dict, list[dict], AsyncIterator[dict]]:
        """generate() for asyncio code: awaits the answer on a worker thread, so the caller's
        event loop keeps running; with stream=True it returns an async iterator of chunks."""
        kwargs = dict(
            prompt=prompt,
            sampling_params=sampling_params,
            input_ids=input_ids,
            return_logprob=return_logprob,
            logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num,
            return_text_in_logprobs=return_text_in_logprobs,
        )
        loop = asyncio.get_running_loop()
        if stream:
            chunks = await loop.run_in_executor(None, lambda: self.generate(stream=True, **kwargs))
            return _aiter_on_thread(chunks)
        return await loop.run_in_executor(None, lambda: self.generate(**kwargs))

    def encode(
        self,
        prompt: Union[str, list[str], None] = None,
        input_ids: Union[list[int], list[list[int]], None] = None,
        dimensions: Optional[int] = None,
    ) -> Union[dict, list[dict]]:
        """Embed like POST /encode (needs an embedding model): {"embedding", "meta_info"},
        a list of those for a batch."""
        obj = EmbeddingReqInput(text=prompt, input_ids=input_ids, dimensions=dimensions)
        return outputs_json(self._run(self.tokenizer_manager.encode_request(obj)))

    async def async_encode(
        self,
        prompt: Union[str, list[str], None] = None,
        input_ids: Union[list[int], list[list[int]], None] = None,
        dimensions: Optional[int] = None,
    ) -> Union[dict, list[dict]]:
        """encode() for asyncio code (awaited on a worker thread)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.encode, prompt, input_ids, dimensions)

    def get_server_info(self) -> dict[str, Any]:
        return self._run(self.tokenizer_manager.get_server_info())

    def flush_cache(self) -> bool:
        """Drop the prefix cache; False when the scheduler refused (requests still running)."""
        return self._run(self.tokenizer_manager.flush_cache()).success

    def shutdown(self) -> None:
        """Stop the scheduler process and the background loop; safe to call twice."""
        if self._loop is not None and self._thread is not None:
            tm = getattr(self, "tokenizer_manager", None)
            if tm is not None:
                self._run(tm.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
        self._loop = None
        self._thread = None
        if self._subprocesses is not None:
            self._subprocesses.stop()
            self._subprocesses = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def _shutdown_ref(ref: "weakref.ref[Engine]") -> None:
    engine = ref()
    if engine is not None:
        engine.shutdown()


async def _aiter_on_thread(items: Iterator[dict]) -> AsyncIterator[dict]:
    """An async iterator over a blocking iterator, each step taken on a worker thread."""
    loop = asyncio.get_running_loop()
    done = object()
    while True:
        item = await loop.run_in_executor(None, next, items, done)
        if item is done:
            return
        yield item
