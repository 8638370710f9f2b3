"""Tests of SamplingParams.from_dict: validation messages and normalization."""

from __future__ import annotations

import json

import pytest

from sglang.srt.sampling.sampling_params import SamplingParams


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"max_tokens": 5}, "max_tokens"),
        ({"temperature": 0.5, "bogus": 1}, "bogus"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": 1.5}, "max_new_tokens"),
        ({"min_new_tokens": -2}, "min_new_tokens"),
        ({"min_new_tokens": 10, "max_new_tokens": 5}, "min_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"n": 0}, "n"),
        ({"ignore_eos": 1}, "ignore_eos"),
        ({"regex": "a+", "json_schema": {"type": "string"}}, "regex"),
        ({"regex": "a+", "ebnf": 'root ::= "a"'}, "ebnf"),
        ({"regex": ""}, "regex"),
        ({"regex": 5}, "regex"),
        ({"ebnf": "   "}, "ebnf"),
        ({"stop": 5}, "stop"),
        ({"stop": ["ok", 3]}, "stop"),
        ({"stop_token_ids": [1, -1]}, "stop_token_ids"),
        ({"stop_token_ids": 3}, "stop_token_ids"),
        ({"json_schema": "{not json"}, "json_schema"),
        ({"json_schema": 42}, "json_schema"),
        ({"seed": "abc"}, "seed"),
    ],
)
def test_bad_field_raises_value_error_naming_it(fields, named):
    with pytest.raises(ValueError, match=named):
        SamplingParams.from_dict(fields)


def test_not_a_dict_is_rejected():
    with pytest.raises(ValueError, match="sampling_params"):
        SamplingParams.from_dict(["temperature", 0])  # type: ignore[arg-type]


def test_defaults_and_none_values():
    p = SamplingParams.from_dict(None)
    assert (p.max_new_tokens, p.temperature, p.top_p, p.min_p) == (128, 1.0, 1.0, 0.0)
    assert p.top_k == 1 << 30 and p.stop_strs == [] and p.grammar is None
    assert not p.is_greedy
    # null means "default" for fields that are not nullable
    assert SamplingParams.from_dict({"max_new_tokens": None}).max_new_tokens == 128


def test_normalize_stop_strings_and_numbers():
    assert SamplingParams.from_dict({"stop": "END"}).stop_strs == ["END"]
    assert SamplingParams.from_dict({"stop": ["a", "", "bc"]}).stop_strs == ["a", "bc"]
    assert SamplingParams.from_dict({"stop": ""}).stop_strs == []
    p = SamplingParams.from_dict({"temperature": 0, "top_p": 1, "top_k": 5})
    assert isinstance(p.temperature, float) and isinstance(p.top_p, float)
    assert p.top_k == 5 and p.is_greedy
    assert SamplingParams.from_dict({"top_k": 1}).is_greedy
    assert SamplingParams.from_dict({"stop": ["ab", "abcd"]}).max_stop_str_len() == 4


def test_json_schema_object_becomes_a_json_string():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    p = SamplingParams.from_dict({"json_schema": schema})
    assert isinstance(p.json_schema, str) and json.loads(p.json_schema) == schema
    assert p.grammar == ("json_schema", p.json_schema)
    assert SamplingParams.from_dict({"regex": "[0-9]+"}).grammar == ("regex", "[0-9]+")


def test_valid_edge_values_are_accepted():
    p = SamplingParams.from_dict(
        {
            "max_new_tokens": 0,
            "top_p": 1.0,
            "top_k": -1,
            "min_p": 1.0,
            "frequency_penalty": -2,
            "presence_penalty": 2,
            "repetition_penalty": 2,
            "n": 128,
            "seed": 0,
            "stop_token_ids": [0, 5],
            "ignore_eos": True,
        }
    )
    assert p.max_new_tokens == 0 and p.seed == 0 and p.stop_token_ids == [0, 5]
