"""run_batch: order, concurrency, the traced prefix cached once, per-program errors."""

from __future__ import annotations

import threading

import pytest
from scripted_backend import ScriptedBackend

import sglang as sgl
from sglang.lang.interpreter import resolve_num_threads


@sgl.function
def text_qa(s, question):
    s += "You answer briefly.\n"
    s += "Q: " + question + "\n"
    s += "A:" + sgl.gen("answer", stop="\n")


def answer_by_question(prompt: str, params: object) -> str:
    return " answer to " + prompt.splitlines()[-2]


def test_states_come_back_in_input_order() -> None:
    qs = [f"question {i}" for i in range(20)]
    states = text_qa.run_batch(
        [{"question": q} for q in qs], backend=ScriptedBackend(reply=answer_by_question)
    )
    assert len(states) == len(qs)
    assert [s["answer"] for s in states] == [f" answer to Q: {q}" for q in qs]


def test_programs_run_concurrently() -> None:
    # Every gen waits until 4 gens are in flight at once: this passes only if the batch runs
    # at least 4 programs at the same time.
    barrier = threading.Barrier(4, timeout=60)

    def together(prompt: str, params: object) -> str:
        barrier.wait()
        return "ok"

    states = text_qa.run_batch(
        [{"question": str(i)} for i in range(8)],
        backend=ScriptedBackend(reply=together),
        num_threads=4,
    )
    assert [s["answer"] for s in states] == ["ok"] * 8


def test_the_constant_prefix_is_cached_once_before_the_batch() -> None:
    backend = ScriptedBackend()
    text_qa.run_batch([{"question": "a"}, {"question": "b"}], backend=backend)
    assert backend.cached == ["You answer briefly.\nQ: "]


def test_a_single_program_batch_caches_nothing() -> None:
    backend = ScriptedBackend()
    text_qa.run_batch([{"question": "a"}], backend=backend)
    assert backend.cached == []


def test_run_batch_sampling_defaults_apply_to_every_program() -> None:
    backend = ScriptedBackend()
    text_qa.run_batch(
        [{"question": "a"}, {"question": "b"}], backend=backend, temperature=0.0, max_new_tokens=5
    )
    params = [c[2] for c in backend.calls]
    assert [(p.temperature, p.max_new_tokens) for p in params] == [(0.0, 5), (0.0, 5)]


def test_generator_style_yields_in_order_and_progress_bar_runs(capsys) -> None:
    backend = ScriptedBackend(reply=answer_by_question)
    gen = text_qa.run_batch(
        [{"question": f"q{i}"} for i in range(5)],
        backend=backend,
        generator_style=True,
        progress_bar=True,
    )
    answers = [s["answer"] for s in gen]
    assert answers == [f" answer to Q: q{i}" for i in range(5)]
    assert "5/5" in capsys.readouterr().err


def test_a_failing_program_keeps_its_error_and_the_others_finish() -> None:
    @sgl.function
    def picky(s, x):
        if x == 2:
            raise ValueError("x=2 is bad")
        s += str(x) + sgl.gen("y")

    states = picky.run_batch([{"x": i} for i in range(4)], backend=ScriptedBackend())
    assert [s.error() is None for s in states] == [True, True, False, True]
    assert "x=2" in str(states[2].error())
    assert states[3]["y"] == "gen"


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5, True])
def test_bad_num_threads_is_a_value_error(bad) -> None:
    with pytest.raises(ValueError, match="num_threads"):
        text_qa.run_batch([{"question": "a"}], backend=ScriptedBackend(), num_threads=bad)


def test_auto_threads_keep_a_server_busy_from_a_small_client() -> None:
    assert resolve_num_threads("auto", 3) == 3
    assert resolve_num_threads("auto", 64) == 64
    assert resolve_num_threads("auto", 10_000) == 128


def test_bad_batch_arguments() -> None:
    with pytest.raises(ValueError, match="list"):
        text_qa.run_batch({"question": "a"}, backend=ScriptedBackend())
    with pytest.raises(ValueError, match="item 1"):
        text_qa.run_batch([{"question": "a"}, "b"], backend=ScriptedBackend())
    with pytest.raises(ValueError, match="bogus"):
        text_qa.run_batch([{"question": "a"}], backend=ScriptedBackend(), bogus=1)
