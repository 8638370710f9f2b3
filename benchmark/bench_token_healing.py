"""Token healing's effect: the seed's roles example, and few-shot accuracy on prompts ending in a space.

python benchmark/bench_token_healing.py                      # starts a server on the default model
python benchmark/bench_token_healing.py --url http://127.0.0.1:30000

Each few-shot prompt ends in "A: " (a lone space token). Every question runs twice at
temperature 0, with and without healing; a question counts as right when the first line of
the answer contains the expected word (case-insensitive).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sglang as sgl  # noqa: E402
from benchmark.common import attach_or_start, stop_servers_on_sigterm  # noqa: E402

SHOTS = (
    "Q: What is the capital of Italy?\nA: Rome\n\n"
    "Q: What color is the sky on a clear day?\nA: Blue\n\n"
    "Q: How many legs does a dog have?\nA: 4\n\n"
)

QUESTIONS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of England?", "London"),
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of China?", "Beijing"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Greece?", "Athens"),
    ("What is the capital of Portugal?", "Lisbon"),
    ("What color is grass?", "green"),
    ("What color is snow?", "white"),
    ("What color is a banana?", "yellow"),
    ("What color is coal?", "black"),
    ("What color is a ripe tomato?", "red"),
    ("How many legs does a spider have?", "8"),
    ("How many days are in a week?", "7"),
    ("How many wheels does a bicycle have?", "2"),
    ("How many months are in a year?", "12"),
    ("How many legs does a bird have?", "2"),
    ("What is 2 + 2?", "4"),
    ("What is 3 + 5?", "8"),
    ("What is 10 - 3?", "7"),
    ("What is 6 + 3?", "9"),
    ("What animal says meow?", "cat"),
    ("What animal says woof?", "dog"),
    ("What animal gives us milk?", "cow"),
    ("What is the opposite of hot?", "cold"),
    ("What is the opposite of up?", "down"),
    ("What is the opposite of day?", "night"),
    ("What do bees make?", "honey"),
    ("What is frozen water called?", "ice"),
]


@sgl.function
def few_shot(s, question):
    s += SHOTS + "Q: " + question + "\nA: " + sgl.gen("answer", max_tokens=8, stop="\n")


@sgl.function
def chat_example(s):
    """The seed's roles example."""
    s += sgl.system("You are a helpful assistant.")
    with s.user():
        s += "Question: What is the capital of France?"
    s += sgl.assistant_begin()
    s += "Answer: " + sgl.gen("answer", max_tokens=100, stop="\n")
    s += sgl.assistant_end()


def accuracy(healing: bool) -> tuple[float, float, list[str]]:
    sgl.flush_cache()  # each run starts from a cold prefix cache
    start = time.perf_counter()
    states = few_shot.run_batch(
        [{"question": q} for q, _ in QUESTIONS], temperature=0, token_healing=healing
    )
    seconds = time.perf_counter() - start
    answers = [st["answer"] for st in states]
    right = sum(exp.lower() in a.lower() for a, (_, exp) in zip(answers, QUESTIONS))
    return right / len(QUESTIONS), seconds, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=None, help="a running server (default: start one)")
    args = parser.parse_args()
    stop_servers_on_sigterm()
    server = attach_or_start(args.url)
    try:
        sgl.set_default_backend(sgl.RuntimeEndpoint(server.url))
        print("## The seed's roles example (temperature 0, max_tokens 100, stop '\\n')")
        for healing in (True, False):
            state = chat_example.run(temperature=0, token_healing=healing)
            print(f"token_healing={healing}: Answer: {state['answer']!r}")
        print(f"\n## Few-shot accuracy, {len(QUESTIONS)} questions, prompts ending in 'A: '")
        results = {healing: accuracy(healing) for healing in (False, True)}
        for healing, (acc, seconds, _) in sorted(results.items(), reverse=True):
            print(f"token_healing={healing}: accuracy {acc:.1%}, {seconds:.1f} s for the batch")
        print("\nquestion | healed | not healed")
        for i, (q, _) in enumerate(QUESTIONS):
            print(f"{q} | {results[True][2][i]!r} | {results[False][2][i]!r}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
