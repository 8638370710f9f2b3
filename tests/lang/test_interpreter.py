"""The interpreter on a scripted backend: appends, variables, errors, fork/join, copy, streaming."""

from __future__ import annotations

import asyncio
import threading
import traceback

import pytest
from scripted_backend import ScriptedBackend

import sglang as sgl


def echo_last_line(prompt: str, params: object) -> str:
    return "<" + prompt.splitlines()[-1] + ">"


def test_appends_strings_exprs_and_lists_in_order() -> None:
    backend = ScriptedBackend(reply=echo_last_line)

    @sgl.function
    def prog(s, topic):
        s += "About " + topic + ": "
        s += [sgl.gen("a", max_tokens=5), "|", "tail"]
        s += "\nnext" + sgl.gen("b")

    state = prog.run(topic="cats", backend=backend)
    assert state["a"] == "<About cats: >"
    assert state["b"] == "<next>"
    assert state.text() == "About cats: <About cats: >|tail\nnext<next>"
    assert [c[1] for c in backend.calls] == [
        "About cats: ",
        "About cats: <About cats: >|tail\nnext",
    ]


def test_appends_do_not_block_and_reads_wait_for_the_value() -> None:
    gate = threading.Event()
    reached_end_while_blocked = []

    def gated(prompt: str, params: object) -> str:
        gate.wait()
        return "done"

    @sgl.function
    def prog(s):
        s += "a" + sgl.gen("x")
        s += "b"
        reached_end_while_blocked.append(not gate.is_set())

    state = prog.run(backend=ScriptedBackend(reply=gated))
    assert reached_end_while_blocked == [True]
    assert not gate.is_set()  # run() returned while the gen was still waiting
    gate.set()
    assert state["x"] == "done"
    assert state.text() == "adoneb"


def test_unset_gen_params_inherit_from_run_and_set_ones_win() -> None:
    backend = ScriptedBackend()

    @sgl.function
    def prog(s):
        s += sgl.gen("a")
        s += sgl.gen("b", temperature=0.5, max_tokens=7, stop=["x"])

    prog.run(backend=backend, temperature=0.0, max_new_tokens=3, top_p=0.9, stop="\n").sync()
    a, b = backend.calls[0][2], backend.calls[1][2]
    assert (a.temperature, a.max_new_tokens, a.top_p, a.stop_list()) == (0.0, 3, 0.9, ["\n"])
    assert (b.temperature, b.max_new_tokens, b.top_p, b.stop_list()) == (0.5, 7, 0.9, ["x"])


def test_every_gen_parameter_reaches_the_backend() -> None:
    backend = ScriptedBackend()

    @sgl.function
    def prog(s):
        s += sgl.gen(
            "a",
            max_tokens=9,
            min_tokens=2,
            stop=["END"],
            stop_token_ids=[7],
            temperature=0.3,
            top_p=0.8,
            top_k=5,
            min_p=0.1,
            frequency_penalty=0.2,
            presence_penalty=0.4,
            ignore_eos=True,
            return_logprob=True,
            logprob_start_len=1,
            top_logprobs_num=3,
            return_text_in_logprobs=True,
            regex="[a-z]+",
        )

    prog.run(backend=backend).sync()
    p = backend.calls[0][2]
    srt = p.to_srt_kwargs()
    expected = {"max_new_tokens": 9, "min_new_tokens": 2, "stop": ["END"], "stop_token_ids": [7]}
    expected.update(temperature=0.3, top_p=0.8, top_k=5, min_p=0.1, frequency_penalty=0.2)
    expected.update(presence_penalty=0.4, ignore_eos=True, regex="[a-z]+")
    assert {k: srt[k] for k in expected} == expected
    assert (
        p.return_logprob,
        p.logprob_start_len,
        p.top_logprobs_num,
        p.return_text_in_logprobs,
    ) == (
        True,
        1,
        3,
        True,
    )


def test_grammar_is_sent_as_ebnf() -> None:
    backend = ScriptedBackend()

    @sgl.function
    def prog(s):
        s += sgl.gen("a", grammar='root ::= "yes" | "no"')

    prog.run(backend=backend).sync()
    assert backend.calls[0][2].to_srt_kwargs()["ebnf"] == 'root ::= "yes" | "no"'


def test_n_greater_than_one_gives_a_list_and_the_program_goes_on() -> None:
    backend = ScriptedBackend()

    @sgl.function
    def prog(s):
        s += "Q:" + sgl.gen("many", n=3) + "\nthen" + sgl.gen("after")

    state = prog.run(backend=backend)
    assert state["many"] == ["sample0", "sample1", "sample2"]
    assert state["after"] == "gen"
    assert state.text() == "Q:sample0\nthengen"
    assert len(state.get_meta_info("many")) == 3


def test_get_meta_info_returns_what_the_backend_returned() -> None:
    backend = ScriptedBackend(reply=lambda p, params: "xyz")

    @sgl.function
    def prog(s):
        s += "hi" + sgl.gen("a")

    state = prog.run(backend=backend)
    assert state.get_meta_info("a") == {"prompt": "hi", "completion_tokens": 3}


def test_reading_a_never_set_variable_raises_key_error_inside_and_after_the_program() -> None:
    seen = []

    @sgl.function
    def prog(s):
        s += "x" + sgl.gen("a")
        try:
            s["nope"]
        except KeyError as e:
            seen.append(str(e))

    state = prog.run(backend=ScriptedBackend())
    assert seen and "nope" in seen[0]
    with pytest.raises(KeyError, match="missing"):
        state["missing"]
    assert state["a"] == "gen"


def test_exception_in_the_body_surfaces_from_run_and_error() -> None:
    @sgl.function
    def prog(s):
        s += "x"
        raise ZeroDivisionError("boom in body")

    with pytest.raises(ZeroDivisionError, match="boom in body"):
        prog.run(backend=ScriptedBackend())


def test_backend_failure_is_reraised_on_read_and_kept_with_its_traceback() -> None:
    def failing(prompt: str, params: object) -> str:
        raise ConnectionError("server said no")

    @sgl.function
    def prog(s):
        s += "x" + sgl.gen("a")
        s += sgl.gen("b")

    state = prog.run(backend=ScriptedBackend(reply=failing))
    with pytest.raises(ConnectionError, match="server said no"):
        state["a"]
    err = state.error()
    assert isinstance(err, ConnectionError)
    assert "failing" in "".join(traceback.format_exception(err))
    with pytest.raises(ConnectionError):
        state["b"]  # the program stopped at the failure


def test_backend_failure_read_inside_the_body_propagates_out_of_run() -> None:
    @sgl.function
    def prog(s):
        s += sgl.gen("a")
        if s["a"] == "x":
            s += "never"

    def failing(prompt: str, params: object) -> str:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError, match="down"):
        prog.run(backend=ScriptedBackend(reply=failing))


def test_var_scope_captures_the_text_appended_inside() -> None:
    @sgl.function
    def prog(s):
        s += "before "
        with s.var_scope("inner"):
            s += "in " + sgl.gen("g")
        s += " after"

    state = prog.run(backend=ScriptedBackend())
    assert state["inner"] == "in gen"
    assert state.text() == "before in gen after"


def test_set_var_and_contains() -> None:
    @sgl.function
    def prog(s):
        s["mine"] = 42

    state = prog.run(backend=ScriptedBackend())
    assert state["mine"] == 42
    assert "mine" in state and "other" not in state


def test_copy_is_independent_of_the_original() -> None:
    backend = ScriptedBackend(reply=echo_last_line)

    @sgl.function
    def prog(s):
        s += "base"

    state = prog.run(backend=backend)
    other = state.copy()
    other += "\nmore" + sgl.gen("x")
    assert other["x"] == "<more>"
    assert other.text() == "base\nmore<more>"
    assert state.text() == "base"


def test_fork_join_gathers_children_variables_as_lists() -> None:
    backend = ScriptedBackend(reply=echo_last_line)

    @sgl.function
    def prog(s):
        s += "Tips:\n"
        forks = s.fork(3)
        for i, f in enumerate(forks):
            f += f"tip {i}" + sgl.gen("tip")
        s += "first=" + forks[0]["tip"]
        forks.join()

    state = prog.run(backend=backend)
    assert state["tip"] == ["<tip 0>", "<tip 1>", "<tip 2>"]
    assert state.text() == "Tips:\nfirst=<tip 0>"
    assert backend.cached == ["Tips:\n"]  # the shared prefix is cached once, before the forks


def test_fork_before_any_text_works_and_caches_nothing() -> None:
    backend = ScriptedBackend(reply=echo_last_line)

    @sgl.function
    def prog(s):
        forks = s.fork(2)
        forks += lambda i: f"n{i}" + sgl.gen("v")
        forks.join()

    state = prog.run(backend=backend)
    assert state["v"] == ["<n0>", "<n1>"]
    assert backend.cached == []


def test_forks_iadd_appends_the_same_expression_to_each() -> None:
    @sgl.function
    def prog(s):
        s += "p "
        forks = s.fork(2)
        forks += "same" + sgl.gen("v")
        return [f.text() for f in forks]

    state = prog.run(backend=ScriptedBackend())
    assert state.ret_value == ["p samegen", "p samegen"]


def test_assistant_turn_adds_the_template_stop_strings() -> None:
    backend = ScriptedBackend(chat_template="chatml")

    @sgl.function
    def prog(s):
        s += sgl.user("hi")
        s += sgl.assistant(sgl.gen("a", stop="\n"))
        s += sgl.gen("outside", stop="\n")

    prog.run(backend=backend).sync()
    assert backend.calls[0][2].stop_list() == ["\n", "<|im_end|>"]
    assert backend.calls[1][2].stop_list() == ["\n"]


def test_bind_fixes_arguments() -> None:
    @sgl.function
    def prog(s, a, b):
        s += a + b

    bound = prog.bind(a="x")
    assert bound.run(b="y", backend=ScriptedBackend()).text() == "xy"
    with pytest.raises(ValueError, match="zzz"):
        prog.bind(zzz=1)


def test_calling_the_function_runs_it() -> None:
    @sgl.function
    def prog(s, a):
        s += a

    assert prog("hello", backend=ScriptedBackend()).text() == "hello"


def test_default_backend_is_used_and_a_missing_one_is_a_clear_error() -> None:
    @sgl.function
    def prog(s):
        s += "x"

    old = sgl.global_config.default_backend
    try:
        sgl.global_config.default_backend = None
        with pytest.raises(ValueError, match="set_default_backend"):
            prog.run()
        sgl.set_default_backend(ScriptedBackend())
        assert prog.run().text() == "x"
    finally:
        sgl.global_config.default_backend = old


def test_end_program_is_called_once_when_the_program_finishes() -> None:
    backend = ScriptedBackend()

    @sgl.function
    def prog(s):
        s += sgl.gen("a")

    state = prog.run(backend=backend)
    state.sync()
    assert backend.ended == [state.stream_executor.sid]
    assert state.stream_executor.is_finished


def test_a_failing_end_of_program_hook_is_recorded_not_hung_on() -> None:
    class Failing(ScriptedBackend):
        def end_program(self, s) -> None:
            raise OSError("cleanup failed")

    @sgl.function
    def prog(s):
        s += sgl.gen("a")

    state = prog.run(backend=Failing())
    assert state["a"] == "gen"
    assert isinstance(state.error(), OSError)


# ---------------------------------------------------------------- streaming


@sgl.function
def streamed(s):
    s += "Q: hi\nA:" + sgl.gen("answer")
    s += " | " + sgl.select("pick", choices=["yes", "no"])


def _stream_backend() -> ScriptedBackend:
    return ScriptedBackend(reply=lambda p, params: " hello there", stream_piece_len=3)


def test_text_iter_streams_pieces_that_join_to_the_final_text() -> None:
    # Each piece after the first is produced only once the reader got something new, so the
    # reader must see the generation arrive in several chunks.
    received = threading.Semaphore(0)
    backend = _stream_backend()
    backend.before_piece = lambda i: received.acquire() if i > 0 else None
    state = streamed.run(backend=backend, stream=True)
    pieces = []
    for piece in state.text_iter():
        pieces.append(piece)
        received.release()
    assert len(pieces) >= 4  # " hello there" is 4 pieces of 3 characters
    assert "".join(pieces) == state.text() == "Q: hi\nA: hello there | no"
    assert backend.calls[0][0] == "generate_stream"


def test_text_iter_of_one_variable_yields_only_its_value() -> None:
    state = streamed.run(backend=_stream_backend(), stream=True)
    pieces = list(state.text_iter("answer"))
    assert "".join(pieces) == " hello there"


def test_text_async_iter_matches_text_iter() -> None:
    async def collect() -> list[str]:
        state = streamed.run(backend=_stream_backend(), stream=True)
        return [p async for p in state.text_async_iter("answer")]

    assert "".join(asyncio.run(collect())) == " hello there"


def test_text_iter_without_stream_yields_the_whole_text() -> None:
    state = streamed.run(backend=_stream_backend())
    assert list(state.text_iter()) == ["Q: hi\nA: hello there | no"]


def test_stream_of_a_failing_program_raises_from_text_iter() -> None:
    @sgl.function
    def prog(s):
        s += "x"
        raise RuntimeError("body failed")

    state = prog.run(backend=ScriptedBackend(), stream=True)
    with pytest.raises(RuntimeError, match="body failed"):
        list(state.text_iter())
    assert isinstance(state.error(), RuntimeError)
