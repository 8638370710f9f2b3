"""The HTTP server: SGLang's native routes plus the OpenAI and Anthropic APIs, served by uvicorn.

POST /generate answers, for one prompt, {"text", "output_ids", "meta_info": {"id",
"prompt_tokens", "completion_tokens", "cached_tokens", "finish_reason", and with return_logprob
the four *_logprobs lists}}; for a batch (or n > 1) a list of those. With "stream": true it
answers SSE: `data: {json}\\n\\n` per update (cumulative text; a batch's items carry "index"),
then `data: [DONE]\\n\\n`. Bad input gets HTTP 400 {"error": {"message", ...}}.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import signal
import threading
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from sglang.srt.entrypoints.embeddings_api import add_embedding_routes
from sglang.srt.entrypoints.engine import launch_subprocesses
from sglang.srt.entrypoints.field_compat import GENERATE_DEFAULT_ONLY, pop_default_only
from sglang.srt.entrypoints.http_common import (
    SERVING_ERRORS,
    SSE_DONE,
    RequestError,
    error_response,
    exception_response,
    first_output,
    json_response,
    read_json,
    sse,
    sse_error,
)
from sglang.srt.entrypoints.http_limits import BodySizeLimit, DrainingServer
from sglang.srt.entrypoints.openai_api import add_openai_routes
from sglang.srt.entrypoints.openapi_schemas import install as install_openapi_schemas
from sglang.srt.managers.io_struct import EmbeddingReqInput, GenerateReqInput, outputs_json
from sglang.srt.managers.tokenizer_manager import TokenizerManager
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger(__name__)

READY_MESSAGE = "The server is fired up and ready to roll!"
_GENERATE_FIELDS = {f.name for f in dataclasses.fields(GenerateReqInput)}
_HEALTH_TIMEOUT_S = 60.0


def create_app(tokenizer_manager: TokenizerManager) -> FastAPI:
    """The FastAPI app around one tokenizer manager; its lifespan starts and stops the manager."""
    tm = tokenizer_manager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.loop = asyncio.get_running_loop()
        await tm.start()
        watcher = asyncio.create_task(_announce_ready(app, tm))
        yield
        watcher.cancel()
        await tm.close()

    app = FastAPI(lifespan=lifespan)
    app.state.tokenizer_manager = tm
    app.state.exit_code = 0
    app.state.server = None  # the uvicorn.Server, set by launch_server
    _add_api_key_check(app, tm.server_args.api_key)
    app.add_middleware(BodySizeLimit, max_bytes=tm.server_args.max_request_bytes)
    _add_native_routes(app, tm)
    add_openai_routes(app, lambda: tm)
    add_embedding_routes(app, lambda: tm)
    _add_anthropic_routes(app, tm)
    install_openapi_schemas(app)
    return app


async def _announce_ready(app: FastAPI, tm: TokenizerManager) -> None:
    tm.on_failure = lambda message: _stop_server(app, message)
    try:
        await tm.wait_ready()
    except RuntimeError:
        return  # _stop_server already ran through on_failure
    logger.info(READY_MESSAGE)


def _stop_server(app: FastAPI, message: str) -> None:
    logger.info("shutting down the server (%s)", message)
    app.state.exit_code = 1
    if app.state.server is not None:
        app.state.server.should_exit = True


def _add_anthropic_routes(app: FastAPI, tm: TokenizerManager) -> None:
    try:
        from sglang.srt.entrypoints.anthropic_api import add_anthropic_routes
    except ImportError as e:
        logger.warning("Anthropic Messages API not available: %s", e)
        return
    add_anthropic_routes(app, lambda: tm)


def _add_api_key_check(app: FastAPI, api_key: Optional[str]) -> None:
    if not api_key:
        return

    @app.middleware("http")
    async def check_api_key(request: Request, call_next: Any) -> Response:
        if request.url.path == "/health" or _authorized(request, api_key):
            return await call_next(request)
        return error_response("invalid or missing API key", 401, err_type="authentication_error")


def _authorized(request: Request, api_key: str) -> bool:
    """`Authorization: Bearer <key>` (OpenAI style) or `x-api-key: <key>` (Anthropic style)."""
    header = request.headers.get("authorization", "")
    given = header[7:] if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    return hmac.compare_digest(given.encode(), api_key.encode())


# -------------------------------------------------------------------- native routes


def _add_native_routes(app: FastAPI, tm: TokenizerManager) -> None:
    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> Response:
        return Response(status_code=200 if tm.is_healthy else 503)

    @app.get("/ready")
    async def ready() -> Response:
        return json_response({"ready": tm.is_ready}, 200 if tm.is_ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return await _metrics(tm)

    @app.get("/health_generate")
    async def health_generate(request: Request) -> Response:
        return await _health_generate(tm, request)

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: Request) -> Response:
        return await _generate(tm, request)

    @app.get("/get_model_info")
    @app.get("/model_info")
    async def model_info() -> Response:
        return json_response(_model_info(tm))

    @app.get("/get_server_info")
    @app.get("/server_info")
    async def server_info() -> Response:
        try:
            return json_response(await tm.get_server_info())
        except RuntimeError as e:
            return exception_response(e)

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> Response:
        return await _flush_cache(tm)

    @app.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        return await _abort_request(tm, request)


async def _generate(tm: TokenizerManager, request: Request) -> Response:
    try:
        obj = _generate_input(await read_json(request))
        gen = tm.generate_request(obj, request)
        first = await first_output(gen)
    except SERVING_ERRORS as e:
        return exception_response(e)
    if obj.stream:
        incremental = tm.server_args.incremental_streaming_output
        return StreamingResponse(
            _sse_stream(first, gen, incremental), media_type="text/event-stream"
        )
    await gen.aclose()
    return json_response(outputs_json(first))


def _generate_input(body: Any) -> GenerateReqInput:
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    body = pop_default_only(body, GENERATE_DEFAULT_ONLY)
    unknown = sorted(set(body) - _GENERATE_FIELDS)
    if unknown:
        raise RequestError(f"unknown field(s) in the request: {', '.join(unknown)}", unknown[0])
    for name in ("log_metrics", "no_logs"):
        if not isinstance(body.get(name, False), bool):
            raise RequestError(f"{name} must be a boolean, got {body[name]!r}", name)
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise RequestError(f"model must be a string, got {body['model']!r}", "model")
    return GenerateReqInput(**body)


async def _sse_stream(
    first: Any, gen: AsyncIterator[Any], incremental: bool
) -> AsyncIterator[bytes]:
    """Cumulative chunks, or with --incremental-streaming-output only what each one adds."""
    sent: dict[Optional[int], dict[str, int]] = {}

    def chunk(out: Any) -> bytes:
        if incremental:
            outs = out if isinstance(out, list) else [out]
            sliced = [o.since(sent.setdefault(o.index, {})) for o in outs]
            out = sliced if isinstance(out, list) else sliced[0]
        return sse(outputs_json(out))

    try:
        yield chunk(first)
        async for out in gen:
            yield chunk(out)
    except (ValueError, RuntimeError) as e:
        yield sse_error(e)
    finally:
        await gen.aclose()
    yield SSE_DONE


def _model_info(tm: TokenizerManager) -> dict[str, Any]:
    return {
        "model_path": tm.model_path,
        "tokenizer_path": tm.tokenizer_path,
        "is_generation": tm.is_generation,
        "chat_template": tm.chat_template,
        "served_model_name": tm.served_model_name,
        "context_length": tm.context_len,
        # the prompt text standing for one image (vision-language models only)
        **({"image_token": tm.image_token} if tm.image_token else {}),
    }


async def _health_generate(tm: TokenizerManager, request: Request) -> Response:
    if not tm.is_ready:
        return Response(status_code=503)
    obj = GenerateReqInput(
        input_ids=[0],
        sampling_params={"max_new_tokens": 1, "temperature": 0.0},
        rid=f"HEALTH_CHECK_{uuid.uuid4().hex}",
        log_metrics=False,
    )
    try:
        out = await asyncio.wait_for(_last_output(tm, obj, request), _HEALTH_TIMEOUT_S)
    except (asyncio.TimeoutError, RuntimeError, ValueError) as e:
        logger.error("health_generate failed: %r", e)
        return Response(status_code=503)
    ok = out is not None and out.finish_reason is not None and not out.finish_reason.is_abort
    return Response(status_code=200 if ok else 503)


async def _last_output(tm: TokenizerManager, obj: GenerateReqInput, request: Request) -> Any:
    if not tm.is_generation:  # an embedding model: embed the same prompt instead
        check = EmbeddingReqInput(input_ids=obj.input_ids, rid=obj.rid, log_metrics=False)
        return await tm.encode_request(check, request)
    last = None
    async for out in tm.generate_request(obj, request):
        last = out
    return last


async def _metrics(tm: TokenizerManager) -> Response:
    if tm.metrics is None:
        return error_response("metrics are off; start the server with --enable-metrics", 404)
    try:
        info = await tm.get_server_info()
    except RuntimeError as e:
        return exception_response(e)
    tm.metrics.set_scheduler_info(info)
    body, content_type = tm.metrics.exposition()
    return Response(body, media_type=content_type)


async def _flush_cache(tm: TokenizerManager) -> Response:
    try:
        reply = await tm.flush_cache()
    except RuntimeError as e:
        return exception_response(e)
    if not reply.success:
        message = reply.message or "cache not flushed: requests are running or waiting"
        return error_response(message, 400)
    return PlainTextResponse("Cache flushed.\n")


async def _abort_request(tm: TokenizerManager, request: Request) -> Response:
    try:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        rid, abort_all = body.get("rid"), body.get("abort_all", False)
        if not isinstance(abort_all, bool):
            raise RequestError(f"abort_all must be a boolean, got {abort_all!r}", "abort_all")
        if not abort_all and not (isinstance(rid, str) and rid):
            raise RequestError(f"rid must be a non-empty string, got {rid!r}", "rid")
    except ValueError as e:
        return exception_response(e)
    aborted = tm.abort_request(rid or "", abort_all)
    return json_response({"success": True, "aborted": aborted})


# -------------------------------------------------------------------- launch


def launch_server(server_args: ServerArgs) -> int:
    """Start the scheduler process and serve HTTP until Ctrl-C / SIGTERM; returns an exit code."""
    import uvicorn

    # NOTE: uvicorn re-raises SIGTERM after its graceful shutdown; with the default action the
    # process would die before the `finally` below stops the scheduler.
    previous = _raise_interrupt_on_sigterm()
    subprocesses = launch_subprocesses(server_args)
    tm: Optional[TokenizerManager] = None
    try:
        tm = TokenizerManager(
            server_args,
            subprocesses.port_args,
            subprocesses.scheduler_args.model_path,
            subprocesses.process,
            subprocesses.replicas,
        )
        app = create_app(tm)
        config = uvicorn.Config(
            app,
            host=server_args.host,
            port=server_args.port,
            log_level=server_args.log_level,
            access_log=server_args.log_level == "debug",
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
        )
        server = DrainingServer(config, app, tm)
        app.state.server = server
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        return app.state.exit_code
    except KeyboardInterrupt:
        return 0
    finally:
        # a scheduler that failed (frozen, say) gets no long grace period
        subprocesses.stop(grace_s=1.0 if tm is not None and tm.failure else 10.0)
        logger.info("server stopped")
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt_on_sigterm() -> Any:
    """Make SIGTERM act like Ctrl-C (KeyboardInterrupt); returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt()

    return signal.signal(signal.SIGTERM, handler)
