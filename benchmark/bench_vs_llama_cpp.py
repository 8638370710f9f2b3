"""Our server vs llama.cpp's llama-server on the same GGUF, in the same command.

Default: the MMLU-style shared-prefix workload of bench_prefix_cache.py (200 questions behind
one ~1.5k-token few-shot prefix, 3 greedy tokens each, 64 in flight). llama.cpp gets its own
/completion endpoint with n_predict=3, temperature 0, cache_prompt true, continuous batching,
`-t 2 -c <enough for all slots> -np N`; N is swept over --np-list and its best run kept.

--json adds the structured-output comparison: the seed's Harry Potter character regex over 50
names (max 256 tokens, greedy); llama.cpp constrained by an equivalent GBNF grammar, ours by
`regex` in sampling_params, with and without --disable-jump-forward.

Build llama-server first: `python benchmark/llama_cpp.py build`.

    python benchmark/bench_vs_llama_cpp.py
    python benchmark/bench_vs_llama_cpp.py --json --np-list 4
    python benchmark/bench_vs_llama_cpp.py --llama-url http://127.0.0.1:8080 --url http://127.0.0.1:30000
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_prefix_cache import MCQuestion, mmlu_workload  # noqa: E402
from common import (  # noqa: E402
    CHARACTER_REGEX,
    Row,
    ServerProcess,
    attach_or_start,
    free_port,
    generate,
    post_json,
    print_env,
    print_table,
    run_concurrently,
)
from llama_cpp import start_llama_server  # noqa: E402

# ---------------------------------------------------------------- the JSON workload (the seed's)


# The same language as CHARACTER_REGEX in llama.cpp's GBNF (\w and \s restricted to ASCII).
CHARACTER_GBNF = r"""
root ::= "{\n" "    \"name\": \"" str "\",\n" "    \"house\": \"" house "\",\n" "    \"blood status\": \"" blood "\",\n" "    \"occupation\": \"" occupation "\",\n" "    \"wand\": {\n" "        \"wood\": \"" str "\",\n" "        \"core\": \"" str "\",\n" "        \"length\": " length "\n" "    },\n" "    \"alive\": \"" alive "\",\n" "    \"patronus\": \"" str "\",\n" "    \"bogart\": \"" str "\"\n" "}"
str ::= [a-zA-Z0-9_ \t\n\r\x0B\x0C]{1,16}
house ::= "Gryffindor" | "Slytherin" | "Ravenclaw" | "Hufflepuff"
blood ::= "Pure-blood" | "Half-blood" | "Muggle-born"
occupation ::= "student" | "teacher" | "auror" | "ministry of magic" | "death eater" | "order of the phoenix"
length ::= [0-9]{1,2} "." [0-9]{0,2}
alive ::= "Alive" | "Deceased"
"""

CHARACTERS = [
    "Harry Potter",
    "Hermione Granger",
    "Ron Weasley",
    "Albus Dumbledore",
    "Severus Snape",
    "Rubeus Hagrid",
    "Draco Malfoy",
    "Ginny Weasley",
    "Neville Longbottom",
    "Luna Lovegood",
    "Minerva McGonagall",
    "Sirius Black",
    "Remus Lupin",
    "Lord Voldemort",
    "Bellatrix Lestrange",
    "Fred Weasley",
    "George Weasley",
    "Percy Weasley",
    "Molly Weasley",
    "Arthur Weasley",
    "Cedric Diggory",
    "Cho Chang",
    "Dobby",
    "Dolores Umbridge",
    "Filius Flitwick",
    "Gilderoy Lockhart",
    "Horace Slughorn",
    "Kingsley Shacklebolt",
    "Lucius Malfoy",
    "Narcissa Malfoy",
    "Nymphadora Tonks",
    "Peter Pettigrew",
    "Pomona Sprout",
    "Quirinus Quirrell",
    "Alastor Moody",
    "Argus Filch",
    "Sybill Trelawney",
    "Vincent Crabbe",
    "Gregory Goyle",
    "Dean Thomas",
    "Seamus Finnigan",
    "Lavender Brown",
    "Oliver Wood",
    "Fleur Delacour",
    "Viktor Krum",
    "Bill Weasley",
    "Charlie Weasley",
    "Cornelius Fudge",
    "Rita Skeeter",
    "Aberforth Dumbledore",
]


def character_prompt(name: str) -> str:
    return (
        name + " is a character in Harry Potter. Please fill in the following information "
        "about this character.\n"
    )


# ---------------------------------------------------------------- clients


@dataclass
class Result:
    """One workload on one server."""

    label: str
    items: int
    seconds: float
    output_tokens: int = 0
    valid: int = 0  # answers that parse (a letter; a regex match)
    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def throughput(self) -> float:
        return self.items / self.seconds

    def describe(self, unit: str) -> str:
        hit = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return (
            f"# {self.label}: {self.items} {unit} in {self.seconds:.1f}s = "
            f"{self.throughput:.2f} {unit}/s; {self.output_tokens / self.seconds:.0f} output "
            f"tok/s; valid {self.valid}/{self.items}; cached/prompt tokens {hit:.1%}"
        )


def _timed(
    label: str, fn: Callable[[Any], tuple[int, bool, int, int]], items: list[Any], concurrency: int
) -> Result:
    """Run `fn` over items concurrently; fn returns (output tokens, valid, prompt, cached)."""
    start = time.perf_counter()
    outs = run_concurrently(fn, items, concurrency)
    seconds = time.perf_counter() - start
    return Result(
        label,
        len(items),
        seconds,
        sum(o[0] for o in outs),
        sum(o[1] for o in outs),
        sum(o[2] for o in outs),
        sum(o[3] for o in outs),
    )


def ours_mmlu(url: str, prefix: str, questions: list[MCQuestion], concurrency: int) -> Result:
    def ask(q: MCQuestion) -> tuple[int, bool, int, int]:
        out = generate(
            url,
            {
                "text": prefix + q.render(with_answer=False),
                "sampling_params": {"max_new_tokens": 3, "temperature": 0},
            },
        )
        m = out["meta_info"]
        valid = out["text"].strip()[:1] in "ABCD" and bool(out["text"].strip())
        return m["completion_tokens"], valid, m["prompt_tokens"], m.get("cached_tokens", 0)

    generate(url, {"text": "Warm-up: the sky is", "sampling_params": {"max_new_tokens": 2}})
    return _timed("sglang", ask, questions, concurrency)


def llama_mmlu(
    url: str, prefix: str, questions: list[MCQuestion], concurrency: int, label: str
) -> Result:
    def ask(q: MCQuestion) -> tuple[int, bool, int, int]:
        out = post_json(
            f"{url}/completion",
            {
                "prompt": prefix + q.render(with_answer=False),
                "n_predict": 3,
                "temperature": 0,
                "cache_prompt": True,
            },
        )
        t = out.get("timings", {})
        cached = t.get("cache_n", 0)
        text = out.get("content", "").strip()
        return (
            out.get("tokens_predicted", 0),
            text[:1] in "ABCD" and bool(text),
            cached + t.get("prompt_n", 0),
            cached,
        )

    post_json(f"{url}/completion", {"prompt": "Warm-up: the sky is", "n_predict": 2})
    return _timed(label, ask, questions, concurrency)


def ours_json(url: str, names: list[str], concurrency: int, label: str) -> Result:
    def ask(name: str) -> tuple[int, bool, int, int]:
        out = generate(
            url,
            {
                "text": character_prompt(name),
                "sampling_params": {
                    "max_new_tokens": 256,
                    "temperature": 0,
                    "regex": CHARACTER_REGEX,
                },
            },
        )
        m = out["meta_info"]
        valid = re.fullmatch(CHARACTER_REGEX, out["text"]) is not None
        return m["completion_tokens"], valid, m["prompt_tokens"], m.get("cached_tokens", 0)

    generate(url, {"text": "Warm-up: the sky is", "sampling_params": {"max_new_tokens": 2}})
    return _timed(label, ask, names, concurrency)


def llama_json(url: str, names: list[str], concurrency: int, label: str) -> Result:
    def ask(name: str) -> tuple[int, bool, int, int]:
        out = post_json(
            f"{url}/completion",
            {
                "prompt": character_prompt(name),
                "n_predict": 256,
                "temperature": 0,
                "cache_prompt": True,
                "grammar": CHARACTER_GBNF,
            },
        )
        valid = re.fullmatch(CHARACTER_REGEX, out.get("content", "")) is not None
        return out.get("tokens_predicted", 0), valid, 0, 0

    post_json(f"{url}/completion", {"prompt": "Warm-up: the sky is", "n_predict": 2})
    return _timed(label, ask, names, concurrency)


# ---------------------------------------------------------------- driving the servers


def best_llama(
    args: argparse.Namespace, ctx_per_slot: int, run: Callable[[str, str], Result], unit: str
) -> Result:
    """Run `run(url, label)` on llama-server with each -np of --np-list; keep the fastest."""
    if args.llama_url:
        return run(args.llama_url.rstrip("/"), "llama.cpp")
    best: Result | None = None
    for n in [int(x) for x in args.np_list.split(",")]:
        flags = ["-t", str(args.threads), "-c", str(ctx_per_slot * n), "-np", str(n)]
        flags += args.llama_args.split() if args.llama_args else []
        server: ServerProcess = start_llama_server(free_port(), flags)
        with server:
            result = run(server.url, f"llama.cpp -np {n}")
        print(result.describe(unit), flush=True)
        if best is None or result.throughput > best.throughput:
            best = result
    assert best is not None, "--np-list is empty"
    return best


def compare_mmlu(args: argparse.Namespace) -> list[Row]:
    prefix, questions = mmlu_workload(args.num_questions)
    extra = args.server_args.split() if args.server_args else []
    with attach_or_start(args.url, extra) as server:
        ours = ours_mmlu(server.url, prefix, questions, args.concurrency)
    print(ours.describe("q"), flush=True)
    theirs = best_llama(
        args,
        2048,
        lambda url, label: llama_mmlu(url, prefix, questions, args.concurrency, label),
        "q",
    )
    print(f"# best llama.cpp: {theirs.label}", flush=True)
    return [
        Row(
            f"mmlu-style, {len(questions)} q ({theirs.label})",
            ours.throughput,
            theirs.throughput,
            None,
            "q/s",
        )
    ]


def compare_json(args: argparse.Namespace) -> list[Row]:
    names = CHARACTERS[: args.num_names]
    extra = args.server_args.split() if args.server_args else []
    ours: dict[str, Result] = {}
    variants = [("jump-forward", [])]
    if not args.url:
        variants.append(("no jump-forward", ["--disable-jump-forward"]))
    for tag, flags in variants:
        with attach_or_start(args.url, extra + flags) as server:
            ours[tag] = ours_json(server.url, names, args.concurrency, f"sglang ({tag})")
        print(ours[tag].describe("names"), flush=True)
    theirs = best_llama(
        args, 1024, lambda url, label: llama_json(url, names, args.concurrency, label), "names"
    )
    print(f"# best llama.cpp (grammar): {theirs.label}", flush=True)
    return [
        Row(
            f"json regex, {len(names)} names, ours {tag} ({theirs.label})",
            r.throughput,
            theirs.throughput,
            None,
            "names/s",
        )
        for tag, r in ours.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="use our running server instead of starting one")
    parser.add_argument("--llama-url", help="use a running llama-server (no -np sweep)")
    parser.add_argument("--np-list", default="1,4,16", help="llama-server -np values to try")
    parser.add_argument("--threads", type=int, default=2, help="llama-server -t")
    parser.add_argument("--llama-args", default="", help="extra llama-server arguments")
    parser.add_argument("--server-args", default="", help="extra launch_server arguments")
    parser.add_argument("--num-questions", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="add the JSON-regex comparison")
    parser.add_argument("--json-only", action="store_true", help="only the JSON comparison")
    parser.add_argument("--num-names", type=int, default=50)
    args = parser.parse_args()
    print_env()
    rows: list[Row] = []
    if not args.json_only:
        rows += compare_mmlu(args)
    if args.json or args.json_only:
        rows += compare_json(args)
    print_table("sglang vs llama.cpp (same GGUF, CPU)", rows, "sglang", "llama.cpp")
    for r in rows:
        if r.ratio is not None:
            print(f"# {r.metric}: ours/llama.cpp = {r.ratio:.2f}x")


if __name__ == "__main__":
    main()
