"""Token healing: composing constraints behind the removed text, and the requests it makes."""

from __future__ import annotations

import json
import re
from typing import Iterator

import pytest
from test_runtime_endpoint import FakeServer

import sglang as sgl
from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint
from sglang.lang.token_healing import (
    HealingPlan,
    can_heal_token,
    heal_grammar,
    heal_json_schema,
    heal_regex,
    plan_constraint,
    regex_literal,
    stops_overlap,
)


@pytest.mark.parametrize("text", [" ", " Par", "a.b*(c)", "x\ny\t", "[1-2]{3}", "é ü"])
def test_regex_literal_matches_exactly_its_text(text: str) -> None:
    assert re.fullmatch(regex_literal(text), text)
    assert not re.fullmatch(regex_literal(text), text + "x")


def test_healed_regex_is_the_removed_text_then_the_constraint() -> None:
    healed = heal_regex(" ", r"[0-9]+")
    assert re.fullmatch(healed, " 42") and not re.fullmatch(healed, "42")
    assert not re.fullmatch(healed, " 4a")
    anything = heal_regex(" Par", None)
    assert re.fullmatch(anything, " Paris\nis big") and not re.fullmatch(anything, "Paris")
    assert re.fullmatch(heal_regex(" ", "a|b"), " b")  # the alternation stays grouped


def test_which_tokens_are_healed() -> None:
    assert can_heal_token(" ", "Answer: ")
    assert can_heal_token(" Par", "The capital is Par")
    assert not can_heal_token("\n", "A:\n")
    assert not can_heal_token("<|im_start|>", "x<|im_start|>")
    assert not can_heal_token(" ", " ")  # nothing would be left of the prompt
    assert not can_heal_token("x", "abc")  # not the prompt's end
    assert not can_heal_token(None, "abc")


def test_stops_that_could_match_inside_the_removed_text_turn_healing_off() -> None:
    assert stops_overlap(" ", [" "], [])
    assert stops_overlap(" Par", ["ar"], [])
    assert stops_overlap(" Par", ["r\n"], [])  # starts inside the removed text
    assert not stops_overlap(" ", ["\n"], [])
    assert stops_overlap(" 1", [], [r"\d"])
    assert not stops_overlap(" ", ["\n"], [r"\d"])


def test_json_schema_becomes_a_grammar_with_the_servers_defaults() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    grammar = heal_json_schema(" ", json.dumps(schema))
    assert grammar is not None
    head, body = grammar.split("\n", 1)
    assert head == 'start: " " sgl_healed_json'
    sent = json.loads(body.split("%json ", 1)[1])
    assert sent["additionalProperties"] is False
    assert sent["x-guidance"]["whitespace_flexible"] is False
    assert heal_json_schema(" ", "true") is None


def test_grammars_get_a_new_root_in_their_own_dialect() -> None:
    gbnf = heal_grammar(" ", 'root ::= "root" | item\nitem ::= [a-z]+ # root\n')
    assert gbnf.startswith('root ::= " " sgl_healed_root\n')
    assert 'sgl_healed_root ::= "root" | item' in gbnf and "# root" in gbnf
    lark = heal_grammar(":", 'start: "start" /start+/ x\nx: "a"\n')
    assert lark.startswith('start: ":" sgl_healed_start\n')
    assert 'sgl_healed_start: "start" /start+/ x' in lark


def test_plan_constraint_per_kind() -> None:
    assert plan_constraint(" ", {"max_new_tokens": 4}, "llguidance")["regex"] == r" [\s\S]*"
    assert plan_constraint(" ", {"regex": "[0-9]+"}, None)["regex"] == " (?:[0-9]+)"
    planned = plan_constraint(" ", {"json_schema": '{"type": "integer"}'}, "llguidance")
    assert "json_schema" not in planned and "%json" in planned["ebnf"]
    assert plan_constraint(" ", {"json_schema": "{}"}, "xgrammar") is None
    assert plan_constraint(" ", {"ebnf": 'root ::= "a"'}, "none") is None


def test_the_value_never_holds_the_removed_text() -> None:
    plan = HealingPlan(removed=" Par", prompt="The capital is", sampling={})
    assert plan.value_of(" Paris.") == "is."
    assert plan.value_of(" P") == ""  # stopped inside the removed text: adds nothing


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    s = FakeServer()
    s.reply_text = " Paris."
    yield s
    s.close()


@sgl.function
def answer(s):
    s += "Q: capital of France?\nA: " + sgl.gen("a", max_tokens=8, stop="\n")


def test_a_healed_gen_backs_the_prompt_up_and_constrains_the_start(fake: FakeServer) -> None:
    state = answer.run(backend=RuntimeEndpoint(fake.url))
    assert state["a"] == "Paris."
    assert state.text() == "Q: capital of France?\nA: Paris."
    assert state.get_meta_info("a")["token_healing"] == {"removed": " "}
    probe, last, healed = fake.generates()
    assert probe["sampling_params"]["max_new_tokens"] == 0
    assert last["return_logprob"] and last["logprob_start_len"] == probe_tokens(probe) - 1
    assert healed["text"] == "Q: capital of France?\nA:"
    assert healed["sampling_params"]["regex"] == r" [\s\S]*"


def probe_tokens(body: dict) -> int:
    from test_runtime_endpoint import tokenize

    return len(tokenize(body["text"]))


def test_healing_streams_without_the_removed_text(fake: FakeServer) -> None:
    state = answer.run(backend=RuntimeEndpoint(fake.url), stream=True)
    assert "".join(state.text_iter("a")) == "Paris."
    assert state.text().endswith("A: Paris.")


@pytest.mark.parametrize(
    "backend_kwargs,run_kwargs,gen_kwargs",
    [
        ({"token_healing": False}, {}, {}),
        ({}, {"token_healing": False}, {}),
        ({}, {}, {"token_healing": False}),
    ],
)
def test_healing_can_be_turned_off(fake, backend_kwargs, run_kwargs, gen_kwargs) -> None:
    @sgl.function
    def prog(s):
        s += "A: " + sgl.gen("a", max_tokens=8, **gen_kwargs)

    state = prog.run(backend=RuntimeEndpoint(fake.url, **backend_kwargs), **run_kwargs)
    assert state["a"] == " Paris."
    assert [b["text"] for b in fake.generates()] == ["A: "]


def test_prompts_ending_in_a_newline_are_not_probed(fake: FakeServer) -> None:
    @sgl.function
    def prog(s):
        s += "A:\n" + sgl.gen("a", max_tokens=8)

    prog.run(backend=RuntimeEndpoint(fake.url)).sync()
    assert len(fake.generates()) == 1
