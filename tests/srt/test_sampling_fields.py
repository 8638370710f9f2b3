"""The sampling fields are declared once, by the runtime's SamplingParams; the frontend's gen(),
its SglSamplingParams and the OpenAI routes must stay in step with it (this fails on drift)."""

from __future__ import annotations

import dataclasses
import inspect

from sglang.api import gen
from sglang.lang.ir import SglSamplingParams
from sglang.srt.entrypoints.openai_api import ChatCompletionRequest, _sampling_dict
from sglang.srt.sampling.sampling_params import SamplingParams

# stop_strs and stop_regexes are derived by normalize(), not request fields.
RUNTIME_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)} - {"stop_strs", "stop_regexes"}
# Runtime fields the OpenAI routes do not expose (OpenAI has no such parameter).
NOT_IN_OPENAI = {"spaces_between_special_tokens", "stream_interval", "structural_tag"}
# Frontend fields that are not sampling parameters of the runtime (they go elsewhere).
FRONTEND_ONLY = {
    "return_logprob",
    "logprob_start_len",
    "top_logprobs_num",
    "return_text_in_logprobs",
    "dtype",
    "token_healing",  # done by the frontend before it sends the prompt
}
# Frontend name -> runtime name where they differ.
FRONTEND_TO_RUNTIME = {"grammar": "ebnf"}
# SglSamplingParams name -> gen() parameter where they differ.
FIELD_TO_GEN_ARG = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}


def test_frontend_fields_are_runtime_fields() -> None:
    for f in dataclasses.fields(SglSamplingParams):
        if f.name in FRONTEND_ONLY:
            continue
        assert FRONTEND_TO_RUNTIME.get(f.name, f.name) in RUNTIME_FIELDS, f.name


def test_frontend_sends_only_runtime_fields() -> None:
    every = SglSamplingParams(stop=["x"], stop_token_ids=[1], regex="a", json_schema="{}", grammar="g")
    assert set(every.to_srt_kwargs()) <= RUNTIME_FIELDS


def test_gen_takes_every_frontend_field() -> None:
    params = set(inspect.signature(gen).parameters)
    for f in dataclasses.fields(SglSamplingParams):
        assert FIELD_TO_GEN_ARG.get(f.name, f.name) in params, f"gen() lacks {f.name}"


def test_openai_maps_every_runtime_field() -> None:
    req = ChatCompletionRequest(
        messages=[{"role": "user", "content": "x"}],
        temperature=0.5,
        top_p=0.9,
        n=2,
        stop=["x"],
        presence_penalty=0.1,
        frequency_penalty=0.1,
        seed=1,
        top_k=3,
        min_p=0.1,
        repetition_penalty=1.1,
        min_tokens=1,
        stop_token_ids=[1],
        stop_regex="z+",
        ignore_eos=True,
        skip_special_tokens=False,
        no_stop_trim=True,
        regex="a",
        ebnf="b",
        json_schema="{}",
        logit_bias={"1": 2.0},
        custom_params={"k": 1},
    )
    sent = set(_sampling_dict(req, 8))
    assert sent <= RUNTIME_FIELDS
    assert RUNTIME_FIELDS - sent == NOT_IN_OPENAI
