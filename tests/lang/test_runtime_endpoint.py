"""RuntimeEndpoint against a small fake server that speaks SPEC §2's HTTP contract."""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Optional

import pytest

import sglang as sgl
from sglang.lang.backend.runtime_endpoint import DTYPE_REGEX, RuntimeEndpoint

CHATML_JINJA = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tokenize(text: str) -> list[str]:
    """Fake tokenizer: words with their leading whitespace; trailing whitespace is a token."""
    return re.findall(r"\s*\S+|\s+$", text)


def token_logprob(token: str) -> float:
    return -0.1 * len(token.strip())


class FakeServer:
    """Records every request; answers /generate from the fake tokenizer."""

    def __init__(self, model_info: Optional[dict[str, Any]] = None) -> None:
        self.requests: list[tuple[str, Any, dict[str, str]]] = []
        self.client_ports: list[int] = []
        self.model_info = model_info or {"model_path": "/models/fake-model", "chat_template": None}
        self.reply_text = " generated"
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.record(self, None)
                if self.path == "/get_model_info":
                    self.send_json(200, fake.model_info)
                elif self.path == "/get_server_info":
                    self.send_json(200, {"max_running_requests": 8})
                else:
                    self.send_json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                fake.record(self, body)
                if self.path == "/flush_cache":
                    self.send_text(200, "Cache flushed.\n")
                elif body.get("stream"):
                    self.send_stream(fake.stream_chunks(body))
                else:
                    status, obj = fake.generate(body)
                    self.send_json(status, obj)

            def send_json(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def send_text(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def send_stream(self, chunks: Iterator[str]) -> None:
                data = "".join(f"data: {c}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()

    def record(self, handler: BaseHTTPRequestHandler, body: Any) -> None:
        self.requests.append((handler.path, body, dict(handler.headers)))
        self.client_ports.append(handler.client_address[1])

    def generates(self) -> list[Any]:
        return [b for p, b, _ in self.requests if p == "/generate"]

    def one(self, text: str, body: dict[str, Any]) -> dict[str, Any]:
        tokens = tokenize(text)
        params = body.get("sampling_params") or {}
        out = "" if params.get("max_new_tokens") == 0 else self.reply_text
        meta: dict[str, Any] = {
            "prompt_tokens": len(tokens),
            "completion_tokens": len(tokenize(out)),
        }
        if "ABORT" in text:
            meta["finish_reason"] = {"type": "abort", "message": "scheduler gave up"}
        if body.get("return_logprob"):
            start = body.get("logprob_start_len", 0)
            meta["input_token_logprobs"] = [
                [None if i == 0 else token_logprob(t), i, t]
                for i, t in enumerate(tokens)
                if i >= start
            ]
            meta["output_token_logprobs"] = []
        return {"text": out, "meta_info": meta}

    def generate(self, body: dict[str, Any]) -> tuple[int, Any]:
        text = body["text"]
        if "FAIL" in str(text):
            return 400, {"error": {"message": "the prompt asked to fail"}}
        if isinstance(text, list):
            return 200, [self.one(t, body) for t in text]
        n = (body.get("sampling_params") or {}).get("n", 1)
        if n > 1:
            return 200, [self.one(text, body) for _ in range(n)]
        return 200, self.one(text, body)

    def stream_chunks(self, body: dict[str, Any]) -> Iterator[str]:
        text = ""
        for piece in tokenize(self.reply_text):
            text += piece
            yield json.dumps(
                {"text": text, "meta_info": {"completion_tokens": len(tokenize(text))}}
            )

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    s = FakeServer()
    yield s
    s.close()


def test_init_reads_model_info_and_matches_the_template(fake: FakeServer) -> None:
    ep = RuntimeEndpoint(fake.url)
    assert ep.get_model_name() == "/models/fake-model"
    assert ep.get_chat_template().name == "default"
    assert fake.requests[0][0] == "/get_model_info"


def test_the_models_own_jinja_template_is_used() -> None:
    server = FakeServer({"model_path": "/models/plain", "chat_template": CHATML_JINJA})
    try:
        template = RuntimeEndpoint(server.url).get_chat_template()
        assert template.role_prefix_and_suffix["user"] == ("<|im_start|>user\n", "<|im_end|>\n")
        assert template.stop_str == ("<|im_end|>",)
        forced = RuntimeEndpoint(
            server.url, chat_template_name="llama-3-instruct"
        ).get_chat_template()
        assert forced.name == "llama-3-instruct"
    finally:
        server.close()


def test_generate_sends_every_parameter(fake: FakeServer) -> None:
    @sgl.function
    def prog(s):
        s += "Hi" + sgl.gen(
            "a",
            max_tokens=7,
            stop=["x"],
            temperature=0.2,
            top_k=3,
            return_logprob=True,
            top_logprobs_num=2,
        )

    state = prog.run(backend=RuntimeEndpoint(fake.url))
    assert state["a"] == " generated"
    body = fake.generates()[-1]
    assert body["text"] == "Hi"
    assert body["return_logprob"] is True and body["top_logprobs_num"] == 2
    sp = body["sampling_params"]
    assert (sp["max_new_tokens"], sp["stop"], sp["temperature"], sp["top_k"]) == (7, ["x"], 0.2, 3)
    assert state.get_meta_info("a")["completion_tokens"] == 1


@pytest.mark.parametrize("gen_fn, dtype", [(sgl.gen_int, int), (sgl.gen_string, str)])
def test_dtype_becomes_a_regex_on_the_runtime(fake: FakeServer, gen_fn, dtype) -> None:
    @sgl.function
    def prog(s):
        s += "n=" + gen_fn("v")

    prog.run(backend=RuntimeEndpoint(fake.url)).sync()
    assert fake.generates()[-1]["sampling_params"]["regex"] == DTYPE_REGEX[dtype]


def test_n_samples_come_back_as_a_list(fake: FakeServer) -> None:
    @sgl.function
    def prog(s):
        s += "Hi" + sgl.gen("a", n=2)

    assert prog.run(backend=RuntimeEndpoint(fake.url))["a"] == [" generated", " generated"]


def test_select_follows_the_two_request_protocol(fake: FakeServer) -> None:
    @sgl.function
    def prog(s):
        s += "The colors are"
        s += sgl.select("c", choices=[" a b c", " long"])

    state = prog.run(backend=RuntimeEndpoint(fake.url))
    # " a b c" has mean -0.1 per token but total -0.3; " long" has -0.4: the mean decides.
    assert state["c"] == " a b c"
    first, second = fake.generates()
    assert first == {
        "text": "The colors are",
        "sampling_params": {"max_new_tokens": 0, "temperature": 0},
    }
    assert second["text"] == ["The colors are a b c", "The colors are long"]
    assert second["sampling_params"]["max_new_tokens"] == 0
    assert second["return_logprob"] is True
    assert second["logprob_start_len"] == 3 - 2  # prompt_tokens - 2
    meta = state.get_meta_info("c")
    assert [[t for _, _, t in lps] for lps in meta["input_token_logprobs"]] == [
        [" a", " b", " c"],
        [" long"],
    ]
    scores = meta["normalized_prompt_logprobs"]
    assert scores == pytest.approx([-0.1, -0.4])
    assert scores.index(max(scores)) == 0


def test_select_keeps_a_boundary_token_shared_with_the_prompt(fake: FakeServer) -> None:
    @sgl.function
    def prog(s):
        s += "Answer: "
        s += sgl.select("c", choices=["yes", "no"])

    state = prog.run(backend=RuntimeEndpoint(fake.url))
    meta = state.get_meta_info("c")
    # "Answer: " ends with a space token; "Answer: yes" tokenizes as ["Answer:", " yes"].
    assert [[t for _, _, t in lps] for lps in meta["input_token_logprobs"]] == [[" yes"], [" no"]]
    assert state["c"] == "no"


def test_unconditional_method_adds_a_request_on_the_choices_alone(fake: FakeServer) -> None:
    @sgl.function
    def prog(s):
        s += "Pick"
        s += sgl.select(
            "c", choices=[" x y", " z"], choices_method=sgl.unconditional_likelihood_normalized
        )

    prog.run(backend=RuntimeEndpoint(fake.url)).sync()
    assert fake.generates()[-1]["text"] == [" x y", " z"]
    assert fake.generates()[-1]["logprob_start_len"] == 0


def test_fork_caches_the_prefix_once(fake: FakeServer) -> None:
    @sgl.function
    def prog(s):
        s += "Shared prefix"
        forks = s.fork(2)
        forks += sgl.gen("g", max_tokens=3)
        forks.join()

    state = prog.run(backend=RuntimeEndpoint(fake.url, token_healing=False))
    assert state["g"] == [" generated", " generated"]
    cached = [
        b
        for b in fake.generates()
        if b["sampling_params"] == {"max_new_tokens": 0, "temperature": 0}
    ]
    assert [b["text"] for b in cached] == ["Shared prefix"]


def test_streaming_yields_deltas_of_the_cumulative_text(fake: FakeServer) -> None:
    fake.reply_text = " one two three"

    @sgl.function
    def prog(s):
        s += "Count:" + sgl.gen("c")

    state = prog.run(backend=RuntimeEndpoint(fake.url), stream=True)
    assert "".join(state.text_iter("c")) == " one two three"
    assert state.text() == "Count: one two three"
    assert fake.generates()[-1]["stream"] is True


def test_server_errors_raise_with_the_url_and_message(fake: FakeServer) -> None:
    @sgl.function
    def prog(s):
        s += "FAIL" + sgl.gen("a")

    state = prog.run(backend=RuntimeEndpoint(fake.url))
    with pytest.raises(RuntimeError, match="HTTP 400.*the prompt asked to fail") as info:
        state["a"]
    assert fake.url in str(info.value)


def test_an_aborted_generation_is_an_error_not_an_empty_value(fake: FakeServer) -> None:
    @sgl.function
    def prog(s):
        s += "ABORT" + sgl.gen("a")

    with pytest.raises(RuntimeError, match="aborted the request: scheduler gave up"):
        prog.run(backend=RuntimeEndpoint(fake.url))["a"]


def test_unreachable_server_is_a_runtime_error_naming_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RuntimeError, match=f"127.0.0.1:{port}"):
        RuntimeEndpoint(f"http://127.0.0.1:{port}")


def test_api_key_is_sent_as_a_bearer_token(fake: FakeServer) -> None:
    RuntimeEndpoint(fake.url, api_key="secret").flush_cache()
    headers = {k.lower(): v for k, v in fake.requests[-1][2].items()}
    assert fake.requests[-1][0] == "/flush_cache"
    assert headers["authorization"] == "Bearer secret"


def test_server_info_and_flush_through_the_public_functions(fake: FakeServer) -> None:
    ep = RuntimeEndpoint(fake.url)
    assert sgl.get_server_info(ep) == {"max_running_requests": 8}
    sgl.flush_cache(ep)
    assert fake.requests[-1][0] == "/flush_cache"


def test_connections_are_reused_across_threads(fake: FakeServer) -> None:
    ep = RuntimeEndpoint(fake.url)
    for _ in range(4):
        t = threading.Thread(target=ep.get_server_info)
        t.start()
        t.join()
    assert len(set(fake.client_ports)) == 1
