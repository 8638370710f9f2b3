"""Fake OpenAI/Anthropic/Gemini HTTP servers (their wire formats) and the backend tests' programs."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Union
from urllib.parse import parse_qs, urlparse

import sglang as sgl

# A fake "token" is a run of non-space characters with the spaces after it.
_TOKEN = re.compile(r"\S+\s*|\s+")


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    """What the server sends back: JSON, or a list of SSE events (event name or None, data)."""

    status: int = 200
    body: Any = None
    events: Optional[list[tuple[Optional[str], Any]]] = None


@dataclass
class Generation:
    """A scripted reply after max_tokens and stop sequences were applied, as a provider does."""

    text: str
    finish: str  # "stop" | "length"
    matched: Optional[str] = None

    @property
    def tokens(self) -> int:
        return count_tokens(self.text)


def apply_limits(text: str, max_tokens: Optional[int], stops: Optional[list[str]]) -> Generation:
    """Cut a scripted reply at the first stop string, then at max_tokens fake tokens."""
    matched = None
    hits = [(text.find(s), s) for s in stops or [] if s and s in text]
    if hits:
        pos, matched = min(hits)
        text = text[:pos]
    tokens = _TOKEN.findall(text)
    if max_tokens is not None and len(tokens) > max_tokens:
        return Generation("".join(tokens[:max_tokens]), "length")
    return Generation(text, "stop", matched)


class FakeProviderServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) that records every request.

    Replies come from `replies` (a queue of texts, popped once per generated choice), then
    from `default_reply`. `fail_next` is a queue of (status, message) answered first, before
    any reply, to exercise retries and error reporting.
    """

    def __init__(self, default_reply: str = "Hello from the fake server.") -> None:
        self.requests: list[Recorded] = []
        self.replies: list[str] = []
        self.default_reply = default_reply
        self.fail_next: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeProviderServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def next_reply(self) -> str:
        with self._lock:
            return self.replies.pop(0) if self.replies else self.default_reply

    def bodies(self, path_part: str = "") -> list[Any]:
        return [r.body for r in self.requests if path_part in r.path]

    def handle(self, req: Recorded) -> Reply:
        raise NotImplementedError()

    def error_body(self, status: int, message: str) -> Any:
        return {"error": {"message": message, "code": status}}

    def _dispatch(self, req: Recorded) -> Reply:
        with self._lock:
            self.requests.append(req)
            failure = self.fail_next.pop(0) if self.fail_next else None
        if failure is not None:
            return Reply(failure[0], self.error_body(*failure))
        return self.handle(req)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                parsed = urlparse(self.path)
                req = Recorded(
                    method=self.command,
                    path=parsed.path,
                    query=parse_qs(parsed.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=json.loads(raw) if raw else None,
                )
                _write_reply(self, server._dispatch(req))

        return Handler


def _write_reply(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
    if reply.events is None:
        data = json.dumps(reply.body).encode()
        handler.send_response(reply.status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        return
    handler.send_response(reply.status)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Connection", "close")
    handler.end_headers()
    for event, data in reply.events:
        head = f"event: {event}\n" if event else ""
        payload = data if isinstance(data, str) else json.dumps(data)
        handler.wfile.write(f"{head}data: {payload}\n\n".encode())
        handler.wfile.flush()
    handler.close_connection = True


def _chunks(text: str, size: int = 2) -> list[str]:
    """A text split into pieces of `size` fake tokens (how it is streamed)."""
    tokens = _TOKEN.findall(text)
    return ["".join(tokens[i : i + size]) for i in range(0, len(tokens), size)] or [""]


# ------------------------------------------------------------------------------------- OpenAI


def _message_text(content: Union[str, list[dict[str, Any]], None]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


class FakeOpenAIServer(FakeProviderServer):
    """POST /v1/chat/completions and /v1/completions in the OpenAI format, streaming included.

    Completions with `echo` return the prompt's fake tokens with `token_logprob(token)` each.
    """

    def __init__(self, default_reply: str = "Hello from the fake server.") -> None:
        super().__init__(default_reply)
        self.token_logprob: Callable[[str], float] = lambda token: -1.0

    def handle(self, req: Recorded) -> Reply:
        body = req.body or {}
        if req.path.endswith("/chat/completions"):
            return self._chat(body)
        if req.path.endswith("/completions"):
            return self._completion(body)
        return Reply(404, self.error_body(404, f"no route {req.path}"))

    def error_body(self, status: int, message: str) -> Any:
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    def _generations(self, body: dict[str, Any]) -> list[Generation]:
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        stops = body.get("stop")
        stops = [stops] if isinstance(stops, str) else stops
        return [apply_limits(self.next_reply(), limit, stops) for _ in range(body.get("n") or 1)]

    def _usage(self, prompt_tokens: int, gens: list[Generation]) -> dict[str, int]:
        completion = sum(g.tokens for g in gens)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    def _chat(self, body: dict[str, Any]) -> Reply:
        prompt_tokens = sum(count_tokens(_message_text(m.get("content"))) for m in body["messages"])
        gens = self._generations(body)
        head = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body.get("model")}
        if body.get("stream"):
            return Reply(events=self._chat_events(head, gens[0], prompt_tokens, body))
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": g.text},
                "finish_reason": g.finish,
                "logprobs": self._chat_logprobs(g.text) if body.get("logprobs") else None,
            }
            for i, g in enumerate(gens)
        ]
        usage = self._usage(prompt_tokens, gens)
        return Reply(body={**head, "object": "chat.completion", "choices": choices, "usage": usage})

    def _chat_logprobs(self, text: str) -> dict[str, Any]:
        content = []
        for tok in _TOKEN.findall(text):
            lp = self.token_logprob(tok)
            top = [{"token": tok, "logprob": lp, "bytes": None}]
            content.append({"token": tok, "logprob": lp, "bytes": None, "top_logprobs": top})
        return {"content": content}

    def _chat_events(
        self, head: dict[str, Any], gen: Generation, prompt_tokens: int, body: dict[str, Any]
    ) -> list[tuple[Optional[str], Any]]:
        def chunk(delta: dict[str, Any], finish: Optional[str]) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return {**head, "object": "chat.completion.chunk", "choices": [choice]}

        events: list[tuple[Optional[str], Any]] = [(None, chunk({"role": "assistant"}, None))]
        events += [(None, chunk({"content": piece}, None)) for piece in _chunks(gen.text)]
        events.append((None, chunk({}, gen.finish)))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = self._usage(prompt_tokens, [gen])
            events.append(
                (None, {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            )
        events.append((None, "[DONE]"))
        return events

    def _completion(self, body: dict[str, Any]) -> Reply:
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        head = {"id": "cmpl-fake", "created": int(time.time()), "model": body.get("model")}
        prompt_tokens = sum(count_tokens(p) for p in prompts)
        if body.get("stream"):
            gen = self._generations(body)[0]
            return Reply(events=self._completion_events(head, gen, prompt_tokens, body))
        choices, gens = [], []
        for prompt in prompts:
            for gen in self._generations(body):
                echoed = prompt if body.get("echo") else ""
                logprobs = None
                if body.get("logprobs") is not None:
                    logprobs = self._completion_logprobs(echoed, gen.text)
                text = echoed + gen.text
                choice = {"index": len(choices), "text": text, "finish_reason": gen.finish}
                choices.append({**choice, "logprobs": logprobs})
                gens.append(gen)
        usage = self._usage(prompt_tokens, gens)
        return Reply(body={**head, "object": "text_completion", "choices": choices, "usage": usage})

    def _completion_logprobs(self, echoed: str, generated: str) -> dict[str, Any]:
        tokens = _TOKEN.findall(echoed) + _TOKEN.findall(generated)
        offsets, pos = [], 0
        for tok in tokens:
            offsets.append(pos)
            pos += len(tok)
        values = [self.token_logprob(t) for t in tokens]
        values[:1] = [None] * min(1, len(values))  # the first token has no logprob
        top = [None] + [{t: v} for t, v in zip(tokens[1:], values[1:])]
        return {
            "tokens": tokens,
            "token_logprobs": values,
            "top_logprobs": top,
            "text_offset": offsets,
        }

    def _completion_events(
        self, head: dict[str, Any], gen: Generation, prompt_tokens: int, body: dict[str, Any]
    ) -> list[tuple[Optional[str], Any]]:
        def chunk(text: str, finish: Optional[str]) -> dict[str, Any]:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            return {**head, "object": "text_completion", "choices": [choice]}

        events: list[tuple[Optional[str], Any]] = [
            (None, chunk(p, None)) for p in _chunks(gen.text)
        ]
        events.append((None, chunk("", gen.finish)))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = self._usage(prompt_tokens, [gen])
            events.append(
                (None, {**head, "object": "text_completion", "choices": [], "usage": usage})
            )
        events.append((None, "[DONE]"))
        return events


# ---------------------------------------------------------------------------------- Anthropic

_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens"}


class FakeAnthropicServer(FakeProviderServer):
    """POST /v1/messages in the Anthropic Messages format, streaming included."""

    def error_body(self, status: int, message: str) -> Any:
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        return {"type": "error", "error": {"type": kind, "message": message}}

    def handle(self, req: Recorded) -> Reply:
        if not req.path.endswith("/v1/messages"):
            return Reply(404, self.error_body(404, f"no route {req.path}"))
        body = req.body
        gen = apply_limits(self.next_reply(), body["max_tokens"], body.get("stop_sequences"))
        prompt_tokens = sum(count_tokens(_message_text(m["content"])) for m in body["messages"])
        forced = (body.get("tool_choice") or {}).get("name")
        if forced is not None:  # a forced tool call: the scripted reply is the tool's JSON input
            return Reply(body=self._tool_use(body, forced, json.loads(gen.text), prompt_tokens))
        reason = "stop_sequence" if gen.matched else _ANTHROPIC_STOP[gen.finish]
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": gen.text}],
            "stop_reason": reason,
            "stop_sequence": gen.matched,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": gen.tokens},
        }
        if body.get("stream"):
            return Reply(events=self._events(message))
        return Reply(body=message)

    def _tool_use(
        self, body: dict[str, Any], name: str, tool_input: Any, prompt_tokens: int
    ) -> dict[str, Any]:
        block = {"type": "tool_use", "id": "toolu_fake", "name": name, "input": tool_input}
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [block],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": 5},
        }

    def _events(self, message: dict[str, Any]) -> list[tuple[Optional[str], Any]]:
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {"input_tokens": message["usage"]["input_tokens"], "output_tokens": 1}
        events: list[tuple[Optional[str], Any]] = [
            ("message_start", {"type": "message_start", "message": start}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            ("ping", {"type": "ping"}),
        ]
        for piece in _chunks(message["content"][0]["text"]):
            delta = {"type": "text_delta", "text": piece}
            events.append(
                ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            )
        stop = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
        usage = {"output_tokens": message["usage"]["output_tokens"]}
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": stop, "usage": usage}),
            ("message_stop", {"type": "message_stop"}),
        ]
        return events


# ------------------------------------------------------------------------------------- Gemini

_GEMINI_FINISH = {"stop": "STOP", "length": "MAX_TOKENS"}


class FakeGeminiServer(FakeProviderServer):
    """Gemini's generateContent and streamGenerateContent (alt=sse), API-key and Vertex paths.

    The model id is read from the path: .../models/{model}:generateContent.
    """

    def error_body(self, status: int, message: str) -> Any:
        state = "RESOURCE_EXHAUSTED" if status == 429 else "INVALID_ARGUMENT"
        return {"error": {"code": status, "message": message, "status": state}}

    def handle(self, req: Recorded) -> Reply:
        match = re.search(r"/models/([^/:]+):(generateContent|streamGenerateContent)$", req.path)
        if match is None:
            return Reply(404, self.error_body(404, f"no route {req.path}"))
        model, method = match.groups()
        config = req.body.get("generationConfig") or {}
        prompt_tokens = sum(
            count_tokens(p.get("text", "")) for c in req.body["contents"] for p in c["parts"]
        )
        gens = [
            apply_limits(
                self.next_reply(), config.get("maxOutputTokens"), config.get("stopSequences")
            )
            for _ in range(config.get("candidateCount") or 1)
        ]
        if method == "streamGenerateContent":
            if req.query.get("alt") != ["sse"]:
                return Reply(400, self.error_body(400, "this fake streams with alt=sse only"))
            return Reply(events=self._events(model, gens[0], prompt_tokens))
        return Reply(body=self._response(model, gens, prompt_tokens, [g.text for g in gens], True))

    def _response(
        self, model: str, gens: list[Generation], prompt_tokens: int, texts: list[str], final: bool
    ) -> dict[str, Any]:
        candidates = []
        for i, (gen, text) in enumerate(zip(gens, texts)):
            cand: dict[str, Any] = {
                "content": {"role": "model", "parts": [{"text": text}]},
                "index": i,
            }
            if final:
                cand["finishReason"] = _GEMINI_FINISH[gen.finish]
            candidates.append(cand)
        completion = sum(g.tokens for g in gens)
        usage = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": completion,
            "totalTokenCount": prompt_tokens + completion,
        }
        return {"candidates": candidates, "usageMetadata": usage, "modelVersion": model}

    def _events(
        self, model: str, gen: Generation, prompt_tokens: int
    ) -> list[tuple[Optional[str], Any]]:
        pieces = _chunks(gen.text)
        return [
            (None, self._response(model, [gen], prompt_tokens, [piece], i == len(pieces) - 1))
            for i, piece in enumerate(pieces)
        ]


# ------------------------------------------------------------------------- an ASGI app, served


class ServedApp:
    """Serve an ASGI app (FastAPI) with uvicorn on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        from sglang.utils import find_free_port

        self.port = find_free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServedApp":
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn failed to start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join()


# ------------------------------------------------------------ programs the backend tests share

PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg=="
)


@sgl.function
def multi_turn_question(s, question_1, question_2):
    """The seed's first program, unchanged."""
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=256))
    s += sgl.user(question_2)
    s += sgl.assistant(sgl.gen("answer_2", max_tokens=256))


@sgl.function
def image_qa(s, image_file, question):
    s += sgl.user(sgl.image(image_file) + question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=16))


def one_turn(question: str = "Hi", **gen_kwargs: Any) -> Any:
    """A program of one user turn and one assistant gen named "x" with `gen_kwargs`."""

    @sgl.function
    def program(s):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("x", **gen_kwargs))

    return program
