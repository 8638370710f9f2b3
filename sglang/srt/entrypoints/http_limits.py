"""What keeps one client from hurting the others at the HTTP edge: a request-body size limit
(413 before the body is read in full) and the SIGTERM drain of the uvicorn server."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import uvicorn

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sglang.srt.managers.tokenizer_manager import TokenizerManager

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# How often the drain checks whether the in-flight requests are done.
_DRAIN_POLL_S = 0.1
# After the last in-flight request ended, this long for the responses to reach their clients.
_FLUSH_S = 0.5


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: a body over `max_bytes` gets HTTP 413, judged by Content-Length when
    given, else counted as it arrives (the rest is never read)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _reply(send, 413, self._message(f"{declared} bytes"))
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _BodyTooLarge:
            if not started:
                await _reply(send, 413, self._message(f"over {self.max_bytes} bytes"))

    def _message(self, size: str) -> str:
        return (
            f"the request body ({size}) is larger than the server's limit of "
            f"{self.max_bytes} bytes (--max-request-bytes)"
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reply(send: Send, status: int, message: str) -> None:
    kind = "request_too_large" if status == 413 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}})
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with SGLang's SIGTERM behaviour.

    The first SIGTERM drains: new requests get 503 (and /health says 503), in-flight ones
    run to their end for up to --graceful-shutdown-timeout seconds, the rest are then ended
    with a 503 error, and the server exits 0. A second SIGTERM, or Ctrl-C, exits at once.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, tm: TokenizerManager) -> None:
        super().__init__(config)
        self.app = app
        self.tm = tm
        self._draining = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        loop = getattr(self.app.state, "loop", None)
        if sig != signal.SIGTERM or self._draining or loop is None:
            if self._draining:
                logger.warning("second signal: exiting without waiting for in-flight requests")
            self.force_exit = self._draining or sig != signal.SIGTERM
            self.should_exit = True
            return
        self._draining = True
        # NOTE: a signal handler may only hand work to the event loop, not await.
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        tm, timeout = self.tm, self.tm.server_args.graceful_shutdown_timeout
        tm.draining = True
        logger.info(
            "SIGTERM: draining %d in-flight request(s) for up to %gs "
            "(--graceful-shutdown-timeout); new requests get 503",
            tm.num_in_flight,
            timeout,
        )
        deadline = time.monotonic() + timeout
        while tm.num_in_flight and time.monotonic() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        ended = tm.end_in_flight(
            f"the server is shutting down: the request did not finish within {timeout:g}s"
        )
        if ended:
            logger.warning("SIGTERM: %d request(s) ended unfinished", ended)
        await asyncio.sleep(_FLUSH_S)
        self.should_exit = True
