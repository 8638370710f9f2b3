"""The SGLang paper's workloads, each sendable to our server or to llama.cpp's llama-server.

A workload is a list of items and a function that runs one item through a `Client`; both
servers get exactly the same prompts. The clients:

- `OursClient`: POST /generate; `choose` is `select` as SPEC.md §3 does it (the context cached,
  then each choice scored by its mean token logprob); cached tokens from `meta_info`.
- `LlamaClient`: llama-server's POST /completion with `cache_prompt`; `choose` constrains the
  continuation to one of the choices with a GBNF grammar and decodes greedily (llama-server
  returns no logprobs of prompt tokens, so it cannot score choices as we do); cached tokens
  from `timings.cache_n`, prompt tokens from `cache_n + prompt_n`.

Workloads: mmlu (few-shot multiple choice, four subjects with a prefix each, questions
interleaved), hellaswag (`select` of 4 endings behind one 20-shot prefix), chat (multi-turn
conversations behind one system prompt), tot (tree of thought on GSM8K: 2 plans x 2 solutions
per question, majority vote; accuracy), json (JSON decoding constrained by a schema).
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_prefix_cache import (  # noqa: E402
    MCQuestion,
    hellaswag_workload,
    mc_question,
    select_over_http,
)
from common import REPO_ROOT, generate, post_json  # noqa: E402

GSM8K_PATH = REPO_ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"

# ---------------------------------------------------------------- clients


@dataclass
class Completion:
    """One request's text and token accounting."""

    text: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Ask:
    """One greedy completion request, as both servers take it."""

    prompt: str
    max_tokens: int
    stop: Optional[list[str]] = None
    json_schema: Optional[dict] = None
    grammar: Optional[str] = None  # GBNF (llama.cpp only)


class Client(Protocol):
    """A server the workloads can talk to."""

    name: str

    def complete(self, ask: Ask) -> Completion: ...

    def choose(self, context: str, choices: list[str]) -> tuple[int, list[Completion]]: ...


@dataclass
class OursClient:
    """Our server over its native API."""

    url: str
    name: str = "sglang"

    def complete(self, ask: Ask) -> Completion:
        params: dict[str, Any] = {"max_new_tokens": ask.max_tokens, "temperature": 0}
        if ask.stop:
            params["stop"] = ask.stop
        if ask.json_schema is not None:
            params["json_schema"] = json.dumps(ask.json_schema)
        out = generate(self.url, {"text": ask.prompt, "sampling_params": params})
        return _ours_completion(out["text"], out["meta_info"])

    def choose(self, context: str, choices: list[str]) -> tuple[int, list[Completion]]:
        best, metas = select_over_http(self.url, context, choices)
        return best, [_ours_completion("", m) for m in metas]


def _ours_completion(text: str, meta: dict) -> Completion:
    return Completion(
        text, meta["prompt_tokens"], meta.get("cached_tokens", 0), meta["completion_tokens"]
    )


@dataclass
class LlamaClient:
    """llama.cpp's llama-server over its /completion route."""

    url: str
    name: str = "llama.cpp"

    def complete(self, ask: Ask) -> Completion:
        body: dict[str, Any] = {
            "prompt": ask.prompt,
            "n_predict": ask.max_tokens,
            "temperature": 0,
            "cache_prompt": True,
        }
        if ask.stop:
            body["stop"] = ask.stop
        if ask.json_schema is not None:
            body["json_schema"] = ask.json_schema
        if ask.grammar is not None:
            body["grammar"] = ask.grammar
        out = post_json(f"{self.url}/completion", body)
        timings = out.get("timings", {})
        cached = timings.get("cache_n", 0)
        return Completion(
            out.get("content", ""),
            cached + timings.get("prompt_n", 0),
            cached,
            out.get("tokens_predicted", 0),
        )

    def choose(self, context: str, choices: list[str]) -> tuple[int, list[Completion]]:
        grammar = "root ::= " + " | ".join(json.dumps(c) for c in choices)
        longest = max(len(c) for c in choices)  # characters: at least as many as tokens
        out = self.complete(Ask(context, longest + 8, grammar=grammar))
        picked = choices.index(out.text) if out.text in choices else -1
        return picked, [out]


# ---------------------------------------------------------------- results of one item


@dataclass
class ItemResult:
    """What one item cost; `correct` is None where the workload has no right answer."""

    completions: list[Completion] = field(default_factory=list)
    correct: Optional[bool] = None
    valid: bool = True


def fork(fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
    """Run fn over args in parallel threads (a program's `fork`), keeping order."""
    with ThreadPoolExecutor(max_workers=max(len(args), 1)) as pool:
        return list(pool.map(fn, args))


# ---------------------------------------------------------------- mmlu: several subjects at once

MMLU_SUBJECTS = ["arithmetic", "stock keeping", "shop accounts", "warehouse logistics"]
MMLU_SHOTS = 5


def mmlu_items(num: int, seed: int = 0) -> list[tuple[str, MCQuestion]]:
    """(prefix, question) pairs; each subject has its own few-shot prefix, and consecutive
    items belong to different subjects, so every prefix is in use at once."""
    prefixes = []
    for i, subject in enumerate(MMLU_SUBJECTS):
        rng = random.Random(seed * 100 + i)
        shots = "".join(mc_question(rng).render(with_answer=True) for _ in range(MMLU_SHOTS))
        header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        prefixes.append((header + shots, rng))
    items = []
    for k in range(num):
        prefix, rng = prefixes[k % len(prefixes)]
        items.append((prefix, mc_question(rng)))
    return items


def run_mmlu(client: Client, item: tuple[str, MCQuestion]) -> ItemResult:
    prefix, q = item
    out = client.complete(Ask(prefix + q.render(with_answer=False), 3))
    letter = out.text.strip()[:1]
    return ItemResult([out], letter == q.answer, letter in "ABCD" and bool(letter))


# ---------------------------------------------------------------- hellaswag: select


def hellaswag_items(num: int, seed: int = 1) -> list[tuple[str, Any]]:
    prefix, questions = hellaswag_workload(num, seed)
    return [(prefix, q) for q in questions]


def run_hellaswag(client: Client, item: tuple[str, Any]) -> ItemResult:
    prefix, q = item
    picked, outs = client.choose(prefix + q.context, q.endings)
    return ItemResult(outs, picked == q.label, picked >= 0)


# ---------------------------------------------------------------- chat: multi-turn

CHAT_SYSTEM = (
    "You are a friendly assistant for a small travel agency. Answer briefly and concretely, "
    "in one or two sentences, and stay on the topic of the traveller's trip."
)
CHAT_OPENERS = [
    "I want to visit Lisbon in spring.",
    "We are planning a week of hiking in the Alps.",
    "My parents want a quiet beach holiday in Greece.",
    "I have two days in Tokyo on a business trip.",
    "We would like to see the northern lights in Norway.",
    "I am taking my kids to Rome for the first time.",
    "I want a cheap weekend city break from London.",
    "We are thinking about a road trip along the Californian coast.",
]
CHAT_FOLLOW_UPS = [
    "What should I pack?",
    "Which neighbourhood should we stay in?",
    "What is one dish we must try?",
    "How do we get around cheaply?",
    "What is a good day trip from there?",
]
CHAT_TURNS = 3
CHAT_TOKENS = 32


def chatml(messages: list[dict]) -> str:
    """Messages in ChatML (the default model's template), ready for the assistant's turn."""
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


def chat_items(num: int, seed: int = 2) -> list[list[str]]:
    """Each item: the user's turns of one conversation."""
    rng = random.Random(seed)
    return [
        [CHAT_OPENERS[k % len(CHAT_OPENERS)], *rng.sample(CHAT_FOLLOW_UPS, CHAT_TURNS - 1)]
        for k in range(num)
    ]


def run_chat(client: Client, turns: list[str]) -> ItemResult:
    messages = [{"role": "system", "content": CHAT_SYSTEM}]
    outs = []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        out = client.complete(Ask(chatml(messages), CHAT_TOKENS, stop=["<|im_end|>"]))
        messages.append({"role": "assistant", "content": out.text.strip()})
        outs.append(out)
    return ItemResult(outs)


# ---------------------------------------------------------------- tot: tree of thought on GSM8K

TOT_SYSTEM = "You are a careful math tutor. Solve the problem step by step."
TOT_PLANS = ["Plan 1 (work forwards from the facts):", "Plan 2 (find what is asked first):"]
TOT_SOLUTIONS = ["Solution A:", "Solution B (check each step):"]
TOT_PLAN_TOKENS = 48
TOT_SOLUTION_TOKENS = 96


@dataclass
class MathProblem:
    question: str
    answer: str  # the number after "#### "


def gsm8k_items(num: int, path: Path = GSM8K_PATH) -> list[MathProblem]:
    """The first `num` problems of the GSM8K test set."""
    if not Path(path).is_file():
        raise SystemExit(f"GSM8K test set not found at {path} (pass --gsm8k-path)")
    items = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            items.append(MathProblem(row["question"], _number(row["answer"].split("####")[-1])))
            if len(items) == num:
                break
    return items


def _number(text: str) -> str:
    """The last number in text, without thousands separators ('' if none)."""
    found = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return found[-1].replace(",", "").rstrip(".") if found else ""


def run_tot(client: Client, problem: MathProblem) -> ItemResult:
    """Question -> 2 plans -> 2 solutions each (all branches of a level in parallel, sharing the
    question's prefix); the answer is the majority of the 4 solutions' final numbers."""
    base = chatml(
        [{"role": "system", "content": TOT_SYSTEM}, {"role": "user", "content": problem.question}]
    )
    plans = fork(lambda p: client.complete(Ask(base + p, TOT_PLAN_TOKENS, ["\n\n"])), TOT_PLANS)
    leaves = [
        base + head + plan.text + "\n\n" + sol
        for head, plan in zip(TOT_PLANS, plans)
        for sol in TOT_SOLUTIONS
    ]
    solutions = fork(lambda p: client.complete(Ask(p, TOT_SOLUTION_TOKENS)), leaves)
    votes = [_number(s.text) for s in solutions if _number(s.text)]
    answer = max(set(votes), key=votes.count) if votes else ""
    return ItemResult(plans + solutions, answer == problem.answer, bool(votes))


# ---------------------------------------------------------------- json: schema-constrained

CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 32},
        "country": {"type": "string", "maxLength": 32},
        "population": {"type": "integer"},
        "famous_for": {"type": "string", "maxLength": 64},
    },
    "required": ["name", "country", "population", "famous_for"],
    "additionalProperties": False,
}
CITIES = [
    "Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Nairobi", "Toronto", "Sydney",
    "Mumbai", "Berlin", "Madrid", "Seoul", "Hanoi", "Dublin", "Prague", "Santiago",
    "Vienna", "Lagos", "Bogota", "Helsinki", "Manila", "Lisbon", "Athens", "Warsaw",
    "Jakarta", "Havana", "Quito", "Riga", "Tunis", "Zagreb", "Kyoto", "Porto",
]  # fmt: skip
JSON_TOKENS = 96


def json_items(num: int) -> list[str]:
    return [CITIES[k % len(CITIES)] for k in range(num)]


def run_json(client: Client, city: str) -> ItemResult:
    prompt = chatml([{"role": "user", "content": f"Describe the city of {city} as a JSON object."}])
    out = client.complete(Ask(prompt, JSON_TOKENS, json_schema=CITY_SCHEMA))
    return ItemResult([out], None, _fits_schema(out.text))


def _fits_schema(text: str) -> bool:
    """Whether text is a JSON object with CITY_SCHEMA's keys and types."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    types = {"name": str, "country": str, "population": int, "famous_for": str}
    return (
        isinstance(value, dict)
        and set(value) == set(types)
        and all(isinstance(value[k], t) for k, t in types.items())
    )


# ---------------------------------------------------------------- the table of workloads


@dataclass
class Workload:
    """How to make a workload's items and run one; `unit` names an item."""

    name: str
    make: Callable[[int], list[Any]]
    run: Callable[[Client, Any], ItemResult]
    unit: str
    default_size: int


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("mmlu", mmlu_items, run_mmlu, "q", 64),
        Workload("hellaswag", hellaswag_items, run_hellaswag, "q", 32),
        Workload("chat", chat_items, run_chat, "conv", 16),
        Workload("tot", gsm8k_items, run_tot, "problem", 8),
        Workload("json", json_items, run_json, "object", 16),
    ]
}
