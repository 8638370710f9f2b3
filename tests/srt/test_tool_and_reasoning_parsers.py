"""Tool-call parsers, the tool_choice plan and the reasoning splitter, on whole and streamed text."""

from __future__ import annotations

import json

import pytest

from sglang.srt.function_call.parsers import PARSERS, ToolCallStream, get_parser
from sglang.srt.function_call.tool_choice import ToolPlan
from sglang.srt.managers.chat_messages import normalize_messages, with_tools_in_text
from sglang.srt.reasoning_parser import ReasoningStream, get_reasoning_format, split_reasoning

NAMES = {"get_weather", "now"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "now"}},
]

# One output per format: text before the calls, then two calls.
OUTPUTS = {
    "hermes": (
        "Let me check. ",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>',
    ),
    "qwen25": (
        "",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        '<tool_call>{"name": "now", "arguments": {}}</tool_call>',
    ),
    "mistral": (
        "Sure. ",
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "now", "arguments": {}}]',
    ),
    "llama3": (
        "",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "now", "parameters": {}}',
    ),
    "pythonic": ("", ' [get_weather(city="Paris"), now()]'),
}
EXPECTED = [("get_weather", {"city": "Paris"}), ("now", {})]


def _calls(calls: list) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parser_splits_text_and_calls(name: str) -> None:
    before, section = OUTPUTS[name]
    content, calls = get_parser(name).parse(before + section, NAMES)
    assert content == before
    assert _calls(calls) == EXPECTED
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_streaming_one_character_at_a_time_gives_the_same_result(name: str) -> None:
    before, section = OUTPUTS[name]
    stream = ToolCallStream(get_parser(name), NAMES)
    sent = "".join(stream.feed(ch) for ch in before + section)
    rest, calls = stream.finish()
    assert sent + rest == before
    assert _calls(calls) == EXPECTED


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_unknown_function_or_malformed_call_stays_text(name: str) -> None:
    parser = get_parser(name)
    before, section = OUTPUTS[name]
    text = before + section
    assert parser.parse(text, {"get_weather"}) == (text, [])  # "now" was not offered
    broken = text[:-3]
    assert parser.parse(broken, NAMES) == (broken, [])
    stream = ToolCallStream(parser, NAMES)
    sent = "".join(stream.feed(ch) for ch in broken)
    rest, calls = stream.finish()
    assert sent + rest == broken and calls == []


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_plain_answer_streams_without_being_held(name: str) -> None:
    stream = ToolCallStream(get_parser(name), NAMES)
    assert stream.feed("The weather ") == "The weather "
    assert stream.feed("is fine.") == "is fine."
    assert stream.finish() == ("", [])


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_formatted_calls_parse_back(name: str) -> None:
    parser = get_parser(name)
    written = parser.format_calls([{"name": n, "arguments": a} for n, a in EXPECTED])
    assert _calls(parser.parse(written, NAMES)[1]) == EXPECTED


def test_required_plan_forces_a_list_of_offered_calls() -> None:
    plan = ToolPlan.from_request(TOOLS, "required", False, None)
    schema = json.loads(plan.grammar())
    assert schema["type"] == "array" and schema["minItems"] == 1 and schema["maxItems"] == 1
    names = [c["properties"]["name"]["enum"] for c in schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["now"]]
    content, calls = plan.parse('[{"name": "get_weather", "parameters": {"city": "Oslo"}}]')
    assert content == "" and _calls(calls) == [("get_weather", {"city": "Oslo"})]
    # cut short by max_tokens: stays content
    assert plan.parse('[{"name": "get_weather", "para') == ('[{"name": "get_weather", "para', [])


def test_named_plan_forces_the_arguments_object() -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    plan = ToolPlan.from_request(TOOLS, choice, None, None)
    assert json.loads(plan.grammar()) == TOOLS[0]["function"]["parameters"]
    assert _calls(plan.parse('{"city": "Rome"}')[1]) == [("get_weather", {"city": "Rome"})]


def test_none_and_auto_plans() -> None:
    none = ToolPlan.from_request(TOOLS, "none", None, None)
    assert none.template_tools is None and none.grammar() is None
    assert none.parse("<tool_call>x</tool_call>") == ("<tool_call>x</tool_call>", [])
    auto = ToolPlan.from_request(TOOLS, None, False, get_parser("hermes"))
    assert auto.mode == "auto" and auto.grammar() is None
    # parallel_tool_calls false keeps the first call
    assert _calls(auto.parse(OUTPUTS["hermes"][1])[1]) == EXPECTED[:1]


@pytest.mark.parametrize(
    "tools, choice, fragment",
    [
        (TOOLS, "auto", "--tool-call-parser"),
        (None, "required", "needs tools"),
        (TOOLS, {"type": "function", "function": {"name": "nope"}}, "nope"),
        (TOOLS, "sometimes", "sometimes"),
        ([{"type": "function", "function": {}}], "required", "tools[0].function.name"),
        ([{"type": "retrieval"}], "required", "tools[0]"),
        (TOOLS + TOOLS[:1], "required", "twice"),
    ],
)
def test_bad_tool_requests_are_named(tools: list, choice: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=None) as e:
        ToolPlan.from_request(tools, choice, None, None)
    assert fragment in str(e.value)


def test_history_with_calls_is_written_for_a_template_without_tools() -> None:
    messages = normalize_messages(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ]
    )
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    parser = get_parser("hermes")
    plain_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    out = with_tools_in_text(messages, TOOLS, parser.instructions(), parser.format_calls, plain_template)
    assert out[0]["role"] == "system" and "get_weather" in out[0]["content"]
    assert _calls(parser.parse(out[2]["content"], NAMES)[1]) == [("get_weather", {"city": "Paris"})]
    assert out[3] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    # a template that renders tools itself gets the messages as they are
    own = "{{ tools }}{% for m in messages %}{{ m.tool_calls }}{% endfor %}"
    assert with_tools_in_text(messages, TOOLS, "", parser.format_calls, own) == messages


@pytest.mark.parametrize(
    "fmt, text, expected",
    [
        ("qwen3", "<think>plan it</think>\n\nThe answer.", ("plan it", "The answer.")),
        ("qwen3", "The answer.", ("", "The answer.")),
        ("qwen3", "<think>never closed", ("never closed", "")),
        ("deepseek-r1", "plan it</think>The answer.", ("plan it", "The answer.")),
        ("deepseek-r1", "<think>plan it</think>The answer.", ("plan it", "The answer.")),
        ("deepseek-r1", "still thinking", ("still thinking", "")),
    ],
)
def test_reasoning_split_whole_and_streamed(fmt: str, text: str, expected: tuple) -> None:
    f = get_reasoning_format(fmt)
    assert split_reasoning(f, text) == expected
    stream = ReasoningStream(f)
    parts = [stream.feed(ch) for ch in text] + [stream.finish()]
    assert ("".join(p[0] for p in parts), "".join(p[1] for p in parts)) == expected


def test_unknown_parser_names_are_refused() -> None:
    with pytest.raises(ValueError, match="tool_call_parser='x'"):
        get_parser("x")
    with pytest.raises(ValueError, match="reasoning_parser='x'"):
        get_reasoning_format("x")
