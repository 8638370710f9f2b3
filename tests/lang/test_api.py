"""The public names: validation of user input, json_schema forms, dtype, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pydantic
import pytest
from scripted_backend import ScriptedBackend

import sglang as sgl
from sglang.api import server_args_to_cli
from sglang.lang.ir import SglGen, SglSelect

PUBLIC = """function gen gen_int gen_string select image video system user assistant system_begin
system_end user_begin user_end assistant_begin assistant_end set_default_backend flush_cache
get_server_info Runtime RuntimeEndpoint OpenAI Anthropic VertexAI LiteLLM Engine
token_length_normalized greedy_token_selection unconditional_likelihood_normalized""".split()


def test_all_public_names_are_exported() -> None:
    assert set(PUBLIC) <= set(sgl.__all__)


def test_import_is_light() -> None:
    code = (
        "import sys, sglang; sglang.gen; print('torch' in sys.modules, 'requests' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_runtime_endpoint_loads_on_first_use() -> None:
    from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint

    assert sgl.RuntimeEndpoint is RuntimeEndpoint


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="nothing_here"):
        sgl.nothing_here  # noqa: B018


def test_invalid_regex_is_a_value_error_before_any_request() -> None:
    backend = ScriptedBackend()

    @sgl.function
    def prog(s):
        s += "x" + sgl.gen("a", regex="(unclosed")

    with pytest.raises(ValueError, match=r"\(unclosed"):
        prog.run(backend=backend)
    assert backend.calls == []


def test_empty_regex_is_rejected() -> None:
    with pytest.raises(ValueError, match="regex"):
        sgl.gen("a", regex="")


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"n": 0}, "n=0"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"dtype": list}, "dtype"),
        ({"regex": "a", "json_schema": {}}, "at most one"),
        ({"grammar": "  "}, "grammar"),
        ({"json_schema": "{not json"}, "not json"),
        ({"json_schema": "[1]"}, "JSON object"),
    ],
)
def test_bad_gen_arguments_name_the_value(kwargs, bad) -> None:
    with pytest.raises(ValueError, match=bad):
        sgl.gen("a", **kwargs)


class Wand(pydantic.BaseModel):
    wood: str
    length: float


@pytest.mark.parametrize(
    "schema",
    [Wand, Wand.model_json_schema(), json.dumps(Wand.model_json_schema())],
)
def test_json_schema_forms_become_the_same_json_text(schema) -> None:
    expr = sgl.gen("w", json_schema=schema)
    assert isinstance(expr, SglGen)
    assert json.loads(expr.overrides["json_schema"]) == Wand.model_json_schema()


def test_dtype_names_and_types() -> None:
    assert sgl.gen("a", dtype="int").overrides["dtype"] is int
    assert sgl.gen_int("a").overrides["dtype"] is int
    assert sgl.gen_string("a", max_tokens=4).overrides == {"dtype": str, "max_new_tokens": 4}


def test_gen_with_choices_is_a_select_at_temperature_zero() -> None:
    expr = sgl.gen("t", choices=["a", "b"])
    assert isinstance(expr, SglSelect)
    assert (expr.choices, expr.temperature, expr.choices_method) == (
        ["a", "b"],
        0.0,
        sgl.token_length_normalized,
    )


@pytest.mark.parametrize("choices", [[], None, ["ok", ""], ["ok", 3]])
def test_bad_choices_are_value_errors(choices) -> None:
    with pytest.raises(ValueError, match="choice"):
        sgl.select("x", choices=choices)


def test_function_decorator_forms() -> None:
    @sgl.function(num_api_spec_tokens=64)
    def spec(s, q):
        s += q

    assert spec.num_api_spec_tokens == 64
    assert spec.arg_names == ["q"]
    backend = ScriptedBackend()
    state = spec.run(q="x", backend=backend)
    assert state.stream_executor.num_api_spec_tokens == 64
    with pytest.raises(ValueError, match="num_api_spec_tokens"):
        sgl.function(num_api_spec_tokens=0)


def test_set_default_backend_rejects_non_backends() -> None:
    with pytest.raises(ValueError, match="not a backend"):
        sgl.set_default_backend("http://localhost:30000")


def test_flush_cache_and_server_info_use_the_given_backend() -> None:
    class Info(ScriptedBackend):
        flushed = 0

        def flush_cache(self) -> None:
            self.flushed += 1

        def get_server_info(self) -> dict:
            return {"ok": True}

    b = Info()
    sgl.flush_cache(b)
    assert b.flushed == 1
    assert sgl.get_server_info(b) == {"ok": True}


def test_server_args_to_cli() -> None:
    args = {
        "model_path": "m.gguf",
        "port": 5,
        "disable_radix_cache": True,
        "api_key": None,
        "x": False,
    }
    assert server_args_to_cli(args) == [
        "--model-path",
        "m.gguf",
        "--port",
        "5",
        "--disable-radix-cache",
    ]


def test_runtime_reports_the_log_tail_when_the_server_dies() -> None:
    with pytest.raises(RuntimeError, match="no-such-flag"):
        sgl.Runtime(model_path=None, no_such_flag=1, timeout=120)
