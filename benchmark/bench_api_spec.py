"""API speculative execution: API calls per program for a three-field extraction, with and without.

The program (the shape of SGLang's openai_speculative example) fills Name, Birthday and Job with
three gens, each stopping at a newline. Without speculation every gen is one API call; with
@function(num_api_spec_tokens=N) one call of N tokens is cut into the three fields, and a new
call is made only where the model's text leaves the program's format.

It runs through the OpenAI backend against any OpenAI-compatible server: ours by default
(started here on the default model), as a completion model (/v1/completions) with and
without speculation, and as a chat model (/v1/chat/completions) with speculation (a chat model
cannot fill a half-written turn without it). We report API calls, tokens and seconds per
program, and how many programs kept the format (every field present and on one line).

    python benchmark/bench_api_spec.py                          # starts our server
    python benchmark/bench_api_spec.py --url http://127.0.0.1:30000 --num-programs 16
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # common.py, and sglang without installing it
from common import attach_or_start, print_env  # noqa: E402

import sglang as sgl  # noqa: E402
from sglang.lang.backend.openai import OpenAI  # noqa: E402
from sglang.lang.ir import SglFunction  # noqa: E402

PEOPLE = ["a painter", "a sailor", "a chemist", "a pilot", "a baker", "a judge", "a poet", "a monk"]
FIELDS = ("name", "birthday", "job")


def completion_program(s: Any, who: str) -> None:
    s += "Here are two characters, one per block.\n\n"
    s += "Name: Steve Jobs\nBirthday: February 24, 1955\nJob: Apple CEO\n\n"
    s += f"The next character is {who}.\n"
    s += "Name:" + sgl.gen("name", stop="\n", max_tokens=16)
    s += "\nBirthday:" + sgl.gen("birthday", stop="\n", max_tokens=16)
    s += "\nJob:" + sgl.gen("job", stop="\n", max_tokens=16)


def chat_program(s: Any, who: str) -> None:
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user("Construct a character within the following format:")
    s += sgl.assistant("Name: Steve Jobs\nBirthday: February 24, 1955\nJob: Apple CEO\n")
    s += sgl.user(f"Please generate a new Name, Birthday and Job for {who}.\n")
    s += sgl.assistant(
        "Name:"
        + sgl.gen("name", stop="\n")
        + "\nBirthday:"
        + sgl.gen("birthday", stop="\n")
        + "\nJob:"
        + sgl.gen("job", stop="\n")
    )


@dataclass
class Result:
    mode: str
    programs: int
    calls: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    kept_format: int
    failed: int

    def row(self) -> str:
        n = self.programs
        return (
            f"| {self.mode} | {self.calls / n:.2f} | {self.prompt_tokens / n:.0f} | "
            f"{self.completion_tokens / n:.0f} | {self.seconds / n:.2f} | "
            f"{self.kept_format}/{n} | {self.failed} |"
        )


def run_mode(mode: str, base_url: str, model: str, n: int, spec: Optional[int]) -> Result:
    is_chat = mode.startswith("chat")
    backend = OpenAI(model, is_chat_model=is_chat, base_url=base_url + "/v1")
    program = SglFunction(chat_program if is_chat else completion_program, spec)
    kept = failed = 0
    start = time.perf_counter()
    for i in range(n):
        state = program.run(who=PEOPLE[i % len(PEOPLE)], backend=backend, temperature=0)
        if state.error() is not None:
            failed += 1
            print(f"# {mode}, program {i}: {str(state.error())[:160]}", flush=True)
            continue
        values = [state[f] for f in FIELDS]
        kept += all(v.strip() and "\n" not in v for v in values)
    seconds = time.perf_counter() - start
    usage = backend.token_usage
    return Result(
        mode,
        n,
        usage.num_calls,
        usage.prompt_tokens,
        usage.completion_tokens,
        seconds,
        kept,
        failed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=None, help="a running server (default: start ours)")
    parser.add_argument("--model", default="default", help="the model name sent to /v1")
    parser.add_argument("--num-programs", type=int, default=8)
    parser.add_argument("--spec-tokens", type=int, default=64, help="num_api_spec_tokens")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["completion", "completion-spec", "chat-spec"],
        default=["completion", "completion-spec", "chat-spec"],
    )
    args = parser.parse_args()
    print_env()
    all_modes = {
        "completion": ("completion, no speculation", None),
        "completion-spec": (
            f"completion, num_api_spec_tokens={args.spec_tokens}",
            args.spec_tokens,
        ),
        "chat-spec": (f"chat, num_api_spec_tokens={args.spec_tokens}", args.spec_tokens),
    }
    modes = [all_modes[m] for m in args.modes]
    with attach_or_start(args.url) as server:
        results = [
            run_mode(name, server.url, args.model, args.num_programs, spec) for name, spec in modes
        ]
    print("\n## API calls for a three-field extraction (greedy)\n")
    print(
        "| mode | calls/program | prompt tok/program | completion tok/program | s/program "
        "| kept format | failed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(r.row())


if __name__ == "__main__":
    main()
