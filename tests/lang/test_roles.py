"""Roles through a chat template: the prompt text, messages(), default system prompts, images."""

from __future__ import annotations

import base64

import pytest
from scripted_backend import ScriptedBackend

import sglang as sgl
from sglang.lang.chat_template import ChatTemplate

PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
)


@sgl.function
def chat(s):
    s += sgl.system("You are terse.")
    with s.user():
        s += "Question: 2+2?"
    s += sgl.assistant_begin()
    s += "Answer: " + sgl.gen("answer")
    s += sgl.assistant_end()


def test_roles_are_formatted_by_the_backend_template() -> None:
    state = chat.run(backend=ScriptedBackend(chat_template="chatml"))
    assert state.text() == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nQuestion: 2+2?<|im_end|>\n"
        "<|im_start|>assistant\nAnswer: gen<|im_end|>\n"
    )


def test_messages_have_the_roles_and_contents_in_order() -> None:
    state = chat.run(backend=ScriptedBackend(chat_template="chatml"))
    assert state.messages() == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Question: 2+2?"},
        {"role": "assistant", "content": "Answer: gen"},
    ]


def test_the_generation_sees_the_open_assistant_prefix() -> None:
    backend = ScriptedBackend(chat_template="chatml")
    chat.run(backend=backend).sync()
    assert backend.calls[0][1].endswith("<|im_start|>assistant\nAnswer: ")


def test_state_role_methods_wrap_an_expression() -> None:
    @sgl.function
    def prog(s):
        s += s.system("sys")
        s += s.user("u")
        s += s.assistant(sgl.gen("a"))

    state = prog.run(backend=ScriptedBackend(chat_template="default"))
    assert [m["role"] for m in state.messages()] == ["system", "user", "assistant"]
    assert state.text() == "SYSTEM: sys\nUSER: u\nASSISTANT:gen\n"


def test_default_system_prompt_is_inserted_before_a_first_user_turn() -> None:
    template = ChatTemplate(
        name="t",
        role_prefix_and_suffix={
            "system": ("<s>", "</s>"),
            "user": ("<u>", "</u>"),
            "assistant": ("<a>", "</a>"),
        },
        default_system_prompt="Be nice.",
    )

    @sgl.function
    def prog(s):
        s += sgl.user("hi")
        s += sgl.user("again")

    state = prog.run(backend=ScriptedBackend(chat_template=template))
    assert state.text() == "<s>Be nice.</s><u>hi</u><u>again</u>"
    assert state.messages()[0] == {"role": "system", "content": "Be nice."}


def test_llama2_style_puts_the_system_prompt_inside_the_first_user_turn() -> None:
    @sgl.function
    def prog(s):
        s += sgl.system("SYS")
        s += sgl.user("hi")
        s += sgl.assistant("yo")
        s += sgl.user("more")

    state = prog.run(backend=ScriptedBackend(chat_template="llama-2-chat"))
    assert (
        state.text() == "[INST] <<SYS>>\nSYS\n<</SYS>>\n\nhi [/INST] yo </s><s>[INST] more [/INST]"
    )


def test_images_become_image_url_parts_in_order() -> None:
    @sgl.function
    def prog(s):
        s += sgl.user("look " + sgl.image(PNG_1X1) + " and " + sgl.image(PNG_1X1) + " done")

    state = prog.run(backend=ScriptedBackend(chat_template="chatml"))
    (msg,) = state.messages()
    kinds = [p["type"] for p in msg["content"]]
    assert kinds == ["text", "image_url", "text", "image_url", "text"]
    assert msg["content"][1]["image_url"]["url"].startswith("data:image/png;base64,iVBOR")
    assert [p["text"] for p in msg["content"] if p["type"] == "text"] == ["look ", " and ", " done"]
    assert state.text() == "<|im_start|>user\nlook <image> and <image> done<|im_end|>\n"
    assert len(state.stream_executor.images_) == 2


def test_images_since_the_last_generation_are_the_current_ones() -> None:
    seen = []

    def reply(prompt: str, params: object) -> str:
        return "x"

    backend = ScriptedBackend(reply=reply)
    original = backend.generate

    def spy(s, params):
        seen.append(len(s.cur_images))
        return original(s, params)

    backend.generate = spy

    @sgl.function
    def prog(s):
        s += sgl.image(PNG_1X1) + sgl.gen("a") + sgl.gen("b")

    prog.run(backend=backend).sync()
    assert seen == [1, 0]


def test_image_of_a_missing_file_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="nope.png"):
        sgl.image("/nonexistent/nope.png")


def test_unbalanced_roles_fail_the_program() -> None:
    @sgl.function
    def prog(s):
        s += sgl.user_begin()
        s += sgl.assistant_end()

    state = prog.run(backend=ScriptedBackend())
    err = state.error()
    assert isinstance(err, ValueError) and "assistant" in str(err)
