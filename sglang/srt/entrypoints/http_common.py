"""What every HTTP route shares: JSON and SSE bodies, request parsing, and the one mapping from
exceptions to status codes (ValueError -> 400, a vanished client -> 499, an aborted request or a
scheduler that is gone -> 503)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, AsyncIterator, Optional

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

SSE_DONE = b"data: [DONE]\n\n"


class RequestError(ValueError):
    """Bad user input; `param` names the offending request field when known."""

    def __init__(self, message: str, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.param = param


class ClientDisconnected(Exception):
    """The client went away before the first output."""


class RequestAborted(Exception):
    """The request ended without a result (aborted, or the KV cache could not hold it)."""


# What serving a request may raise on purpose (anything else is a bug and propagates).
SERVING_ERRORS = (ValueError, RuntimeError, ClientDisconnected, RequestAborted)


def status_for(e: Exception) -> int:
    """The HTTP status of an exception raised while serving a request."""
    if isinstance(e, ValueError):
        return 400
    if isinstance(e, ClientDisconnected):
        return 499
    status = getattr(e, "status", None)  # RequestFailed: what the server says it was
    if isinstance(status, int):
        return status
    return 503  # RuntimeError: the scheduler is gone; RequestAborted


def error_type_for(status: int) -> str:
    if status == 400:
        return "invalid_request_error"
    if status == 503:
        return "service_unavailable"
    return "server_error" if status >= 500 else "invalid_request_error"


def json_response(content: Any, status_code: int = 200) -> Response:
    # NOTE: allow_nan: a logprob may be -inf (a token the grammar masked out).
    body = json.dumps(content, ensure_ascii=False, allow_nan=True)
    return Response(body, status_code=status_code, media_type="application/json")


def error_response(
    message: str, status_code: int = 400, param: Optional[str] = None, err_type: str = ""
) -> Response:
    """The OpenAI error shape, used by the native and OpenAI routes:
    {"error": {"message", "type", "param", "code"}}."""
    kind = err_type or error_type_for(status_code)
    error = {"message": message, "type": kind, "param": param, "code": status_code}
    return json_response({"error": error}, status_code)


def exception_response(e: Exception) -> Response:
    response = error_response(str(e), status_for(e), getattr(e, "param", None))
    retry_after = getattr(e, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def sse_error(e: Exception) -> bytes:
    """The error event of a stream that already started (its status line is sent)."""
    status = status_for(e)
    return sse({"error": {"message": str(e), "type": error_type_for(status), "code": status}})


# Bodies larger than this are parsed on a worker thread, so the event loop keeps serving others.
_PARSE_INLINE_BYTES = 256 * 1024
# A \uXXXX escape of a UTF-16 surrogate: only then can the parsed body hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


async def read_json(request: Request) -> Any:
    """The parsed JSON body; RequestError (a 400) for malformed JSON, nesting too deep for the
    parser, or a lone UTF-16 surrogate (text no tokenizer or response can carry)."""
    body = await request.body()
    if len(body) > _PARSE_INLINE_BYTES:
        return await asyncio.to_thread(parse_json, body)
    return parse_json(body)


def parse_json(body: bytes) -> Any:
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"malformed JSON body: {e}") from None
    except RecursionError:
        raise RequestError("the JSON body is nested too deeply") from None
    if _SURROGATE_ESCAPE.search(body):
        try:  # paired surrogates were joined by the parser; a lone one cannot be encoded
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise RequestError(f"the body holds a lone UTF-16 surrogate: {e.reason}") from None
        except RecursionError:
            raise RequestError("the JSON body is nested too deeply") from None
    return obj


def parse_body(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        errors = e.errors()
        parts = [
            f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in errors
        ]
        param = ".".join(str(x) for x in errors[0]["loc"]) if errors else None
        raise RequestError("; ".join(parts), param) from None


async def first_output(gen: AsyncIterator[Any]) -> Any:
    """Run a generation up to its first output, so validation errors surface before a response;
    ClientDisconnected if the client went away first."""
    try:
        return await gen.__anext__()
    except StopAsyncIteration:
        raise ClientDisconnected("client disconnected") from None
