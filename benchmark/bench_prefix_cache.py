"""Shared-prefix workloads (the SGLang paper's shape): what the radix cache buys.

Two workloads of 200 questions each behind ONE 20-example few-shot prefix (~1.5k tokens),
generated deterministically here (synthetic, seeded):

- mmlu:      multiple-choice question, the answer generated with max_new_tokens=3, greedy.
- hellaswag: pick one of 4 endings with `select`, done over raw HTTP exactly as SPEC.md §3
             says: /generate the context (max_new_tokens 0), then one batch /generate of the
             4 continuations with return_logprob and logprob_start_len = prompt_tokens - 2,
             choosing the highest mean logprob.

Each workload runs on a server with the radix cache and on one with --disable-radix-cache
(a fresh server each); we report questions/s of both, their ratio and the cache hit rate
(GET /get_server_info `cache_hit_rate`, and the same computed from `cached_tokens`).

    python benchmark/bench_prefix_cache.py                      # both workloads, both modes
    python benchmark/bench_prefix_cache.py --workloads mmlu --num-questions 100
    python benchmark/bench_prefix_cache.py --url http://127.0.0.1:30000   # one server, as is
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    Row,
    attach_or_start,
    flush_cache,
    generate,
    get_server_info,
    print_env,
    print_table,
    run_concurrently,
)

NUM_SHOTS = 20
CHOICE_LETTERS = "ABCD"

# ---------------------------------------------------------------- the MMLU-style workload

_NAMES = [
    "Anna",
    "Brian",
    "Carla",
    "David",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Irene",
    "Jonas",
    "Kavya",
    "Liam",
    "Maria",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
]
_ITEMS = [
    ("boxes of pencils", "shop"),
    ("crates of apples", "market"),
    ("bags of flour", "bakery"),
    ("rolls of cable", "warehouse"),
    ("packs of cards", "club"),
    ("sacks of rice", "kitchen"),
    ("jars of honey", "farm stall"),
    ("cans of paint", "workshop"),
]
_SUBJECTS = ["elementary mathematics", "high school arithmetic", "everyday word problems"]


@dataclass
class MCQuestion:
    """A multiple-choice question; `answer` is the correct letter."""

    text: str
    choices: list[str]
    answer: str

    def render(self, with_answer: bool) -> str:
        lines = [self.text] + [f"{L}. {c}" for L, c in zip(CHOICE_LETTERS, self.choices)]
        tail = f" {self.answer}\n\n" if with_answer else ""
        return "\n".join(lines) + "\nAnswer:" + tail


def mc_question(rng: random.Random) -> MCQuestion:
    name, (item, place) = rng.choice(_NAMES), rng.choice(_ITEMS)
    subject = rng.choice(_SUBJECTS)
    a, b = rng.randint(12, 89), rng.randint(3, 49)
    if rng.random() < 0.5:
        value = a + b
        story = (
            f"{name} runs a {place} that had {a} {item}. In the morning {name} received {b} more."
        )
    else:
        a = max(a, b + 5)
        value = a - b
        story = (
            f"{name} runs a {place} that had {a} {item}. During the day {name} sold {b} of them."
        )
    text = (
        f"The following is a question about {subject}.\n{story} "
        f"How many {item} are in the {place} now?"
    )
    wrong = {value + d for d in (-10, -1, 1, 10, 2)} - {value}
    options = [value, *rng.sample(sorted(wrong), 3)]
    rng.shuffle(options)
    return MCQuestion(text, [str(o) for o in options], CHOICE_LETTERS[options.index(value)])


def mmlu_workload(num_questions: int, seed: int = 0) -> tuple[str, list[MCQuestion]]:
    """The shared few-shot prefix and the questions asked behind it."""
    rng = random.Random(seed)
    shots = [mc_question(rng) for _ in range(NUM_SHOTS)]
    prefix = (
        "The following are multiple choice questions (with answers) about arithmetic.\n\n"
        + "".join(q.render(with_answer=True) for q in shots)
    )
    return prefix, [mc_question(rng) for _ in range(num_questions)]


# ---------------------------------------------------------------- the HellaSwag-style workload

_ACTIVITIES = [
    (
        "is standing at a kitchen counter with a cutting board and a pile of fresh vegetables",
        "picks up a sharp knife and begins to slice the carrots into thin rounds",
    ),
    (
        "is kneeling beside a flat bicycle tire in the driveway on a sunny afternoon",
        "pries the tire off the rim with a lever and pulls out the punctured tube",
    ),
    (
        "is sitting at a piano in a quiet living room with an open book of music",
        "places both hands on the keys and plays the opening bars of a slow waltz",
    ),
    (
        "is standing on a ladder next to a wall that has been taped and covered with sheets",
        "dips a wide roller into the tray and spreads pale blue paint across the wall",
    ),
    (
        "is walking a large brown dog through a park covered in autumn leaves",
        "throws a tennis ball across the grass and the dog races off to fetch it",
    ),
    (
        "is crouching by a campfire at dusk while a pot of water hangs above the flames",
        "pours the boiling water into a mug and stirs in a spoonful of instant coffee",
    ),
    (
        "is standing in a garden holding a watering can beside rows of young tomato plants",
        "tips the can forward and waters each plant carefully at the base of its stem",
    ),
    (
        "is sitting in a barber chair while a stylist drapes a cape around their shoulders",
        "watches in the mirror as the stylist trims the hair above the ears with scissors",
    ),
    (
        "is at the edge of a swimming pool wearing goggles and a tight swimming cap",
        "dives into the water and swims several fast laps of front crawl",
    ),
    (
        "is kneeling on a yoga mat in a bright studio with soft music playing",
        "stretches both arms forward and slowly lowers into a deep resting pose",
    ),
    (
        "is standing at a workbench with two planks of wood and a box of screws",
        "drills a pilot hole through the planks and drives in a screw to join them",
    ),
    (
        "is sitting at a desk in front of a laptop with a cup of tea beside the keyboard",
        "types a long email to a colleague and then clicks the send button",
    ),
]
_SETTINGS = [
    "It is early on a cool Saturday morning and the house is still quiet.",
    "The afternoon sun is shining through the window and a radio plays softly.",
    "It is late in the evening after a long and busy day at work.",
    "Rain is tapping on the roof and the lights have just been switched on.",
    "A friend is watching nearby and chatting about plans for the weekend.",
    "Everything needed for the task has been laid out neatly in advance.",
]
_MOODS = [
    "The person looks calm and focused on the job at hand.",
    "The person hums a tune and seems to be in a cheerful mood.",
    "The person checks the time once and then gets ready to start.",
    "The person takes a deep breath and rolls up both sleeves.",
]
_PEOPLE = [
    "A young man",
    "An older woman",
    "A teenage girl",
    "A tall man",
    "A woman",
    "A boy",
    "A chef",
    "A student",
    "A grandfather",
    "A neighbor",
]


@dataclass
class EndingQuestion:
    """A context and four candidate endings; `label` indexes the sensible one."""

    context: str
    endings: list[str]
    label: int


def _ending_question(rng: random.Random) -> EndingQuestion:
    setup_idx = rng.randrange(len(_ACTIVITIES))
    setup, ending = _ACTIVITIES[setup_idx]
    others = rng.sample([a[1] for i, a in enumerate(_ACTIVITIES) if i != setup_idx], 3)
    endings = [ending, *others]
    rng.shuffle(endings)
    context = (
        f"{rng.choice(_PEOPLE)} {setup}. {rng.choice(_SETTINGS)} {rng.choice(_MOODS)}"
        " Then the person"
    )
    return EndingQuestion(context, [" " + e + "." for e in endings], endings.index(ending))


def hellaswag_workload(num_questions: int, seed: int = 1) -> tuple[str, list[EndingQuestion]]:
    """The shared few-shot prefix (context + right ending) and the questions."""
    rng = random.Random(seed)
    shots = [_ending_question(rng) for _ in range(NUM_SHOTS)]
    prefix = "Each story below is completed with its most sensible ending.\n\n" + "".join(
        q.context + q.endings[q.label] + "\n\n" for q in shots
    )
    return prefix, [_ending_question(rng) for _ in range(num_questions)]


# ---------------------------------------------------------------- clients (raw HTTP)


@dataclass
class Answer:
    """What one question cost and returned."""

    choice: str | int
    correct: bool
    prompt_tokens: int = 0
    cached_tokens: int = 0


def ask_mmlu(url: str, prefix: str, q: MCQuestion) -> Answer:
    out = generate(
        url,
        {
            "text": prefix + q.render(with_answer=False),
            "sampling_params": {"max_new_tokens": 3, "temperature": 0},
        },
    )
    meta = out["meta_info"]
    got = out["text"].strip()[:1]
    return Answer(got, got == q.answer, meta["prompt_tokens"], meta.get("cached_tokens", 0))


def ask_hellaswag(url: str, prefix: str, q: EndingQuestion) -> Answer:
    """`select` over HTTP as SPEC.md §3: cache the context, then score the 4 continuations."""
    best, metas = select_over_http(url, prefix + q.context, q.endings)
    return Answer(
        best,
        best == q.label,
        sum(m["prompt_tokens"] for m in metas),
        sum(m.get("cached_tokens", 0) for m in metas),
    )


def select_over_http(url: str, context: str, choices: list[str]) -> tuple[int, list[dict]]:
    """SPEC.md §3's `select` on our server: (index of the best choice by mean token logprob,
    the meta_info of every request it sent)."""
    first = generate(url, {"text": context, "sampling_params": {"max_new_tokens": 0}})
    n_ctx = first["meta_info"]["prompt_tokens"]
    outs = generate(
        url,
        {
            "text": [context + c for c in choices],
            "sampling_params": {"max_new_tokens": 0},
            "return_logprob": True,
            "logprob_start_len": max(n_ctx - 2, 0),
        },
    )
    scores = [_mean_choice_logprob(o["meta_info"], n_ctx) for o in outs]
    best = max(range(len(scores)), key=scores.__getitem__)
    return best, [first["meta_info"]] + [o["meta_info"] for o in outs]


def _mean_choice_logprob(meta: dict, n_ctx: int) -> float:
    """Mean logprob of the tokens after the context (the boundary tokens belong to it)."""
    entries = meta["input_token_logprobs"]
    n_choice = meta["prompt_tokens"] - n_ctx
    if 0 < n_choice <= len(entries):
        entries = entries[-n_choice:]
    values = [e[0] for e in entries if e[0] is not None]
    return sum(values) / max(len(values), 1)


WORKLOADS = {
    "mmlu": (mmlu_workload, ask_mmlu),
    "hellaswag": (hellaswag_workload, ask_hellaswag),
}


@dataclass
class RunResult:
    """One workload on one server."""

    questions: int
    seconds: float
    answers: list[Answer]
    server_hit_rate: float | None
    prefix_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.questions / self.seconds

    @property
    def accuracy(self) -> float:
        return sum(a.correct for a in self.answers) / max(len(self.answers), 1)

    @property
    def token_hit_rate(self) -> float:
        total = sum(a.prompt_tokens for a in self.answers)
        return sum(a.cached_tokens for a in self.answers) / max(total, 1)


def run_workload(url: str, name: str, num_questions: int, concurrency: int) -> RunResult:
    """Send the workload's questions with `concurrency` threads; time the whole batch."""
    make, ask = WORKLOADS[name]
    prefix, questions = make(num_questions)
    # Warm the server up (lazy init, first-call costs) on an unrelated prompt, then start cold.
    generate(url, {"text": "Warm-up: the sky is", "sampling_params": {"max_new_tokens": 2}})
    flush_cache(url)
    start = time.perf_counter()
    answers = run_concurrently(lambda q: ask(url, prefix, q), questions, concurrency)
    seconds = time.perf_counter() - start
    info = get_server_info(url)
    prefix_tokens = generate(url, {"text": prefix, "sampling_params": {"max_new_tokens": 0}})
    return RunResult(
        len(questions),
        seconds,
        answers,
        info.get("cache_hit_rate"),
        prefix_tokens["meta_info"]["prompt_tokens"],
    )


def _describe(tag: str, name: str, r: RunResult) -> None:
    hit = "-" if r.server_hit_rate is None else f"{r.server_hit_rate:.1%}"
    print(
        f"# {name} [{tag}]: {r.questions} questions in {r.seconds:.1f}s = "
        f"{r.throughput:.2f} q/s; accuracy {r.accuracy:.1%}; prefix {r.prefix_tokens} tokens; "
        f"server cache_hit_rate {hit}; cached/prompt tokens {r.token_hit_rate:.1%}",
        flush=True,
    )


def bench_one(args: argparse.Namespace, name: str) -> list[Row]:
    """Run workload `name` with the radix cache and without; return table rows."""
    extra = args.server_args.split() if args.server_args else []
    results: dict[str, RunResult] = {}
    modes = [("radix", [], args.num_questions)]
    if not args.url and not args.skip_baseline:
        modes.append(("no-cache", ["--disable-radix-cache"], args.num_questions_no_cache))
    for tag, flags, n in modes:
        with attach_or_start(args.url, extra + flags) as server:
            results[tag] = run_workload(server.url, name, n, args.concurrency)
        _describe(tag, name, results[tag])
    ours, base = results["radix"], results.get("no-cache")
    hit = ours.server_hit_rate
    agree = None
    if base is not None:
        pairs = zip(ours.answers, base.answers)
        agree = sum(a.choice == b.choice for a, b in pairs) / len(base.answers)
        print(f"# {name}: answers agree with and without the cache on {agree:.1%}", flush=True)
    return [
        Row(f"{name} throughput", ours.throughput, base and base.throughput, None, "q/s"),
        Row(f"{name} cache hit rate (server)", None if hit is None else 100 * hit, None, 90.0, "%"),
        Row(
            f"{name} cached/prompt tokens",
            100 * ours.token_hit_rate,
            base and 100 * base.token_hit_rate,
            None,
            "%",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url",
        help="use a running server instead of starting ours (then no --disable-radix-cache run)",
    )
    parser.add_argument(
        "--workloads",
        default="mmlu,hellaswag",
        help="comma-separated subset of: " + ", ".join(WORKLOADS),
    )
    parser.add_argument("--num-questions", type=int, default=200)
    parser.add_argument(
        "--num-questions-no-cache",
        type=int,
        default=32,
        help="questions for the --disable-radix-cache run (a rate is reported, "
        "so a subset keeps the run bounded)",
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--skip-baseline", action="store_true", help="skip the --disable-radix-cache server"
    )
    parser.add_argument("--server-args", default="", help="extra launch_server arguments")
    args = parser.parse_args()
    print_env()
    rows: list[Row] = []
    for name in args.workloads.split(","):
        rows += bench_one(args, name.strip())
    print_table(
        "Shared-prefix workloads: radix cache vs --disable-radix-cache",
        rows,
        "radix cache",
        "no cache",
    )
    for r in rows:
        if r.metric.endswith("throughput") and r.ratio is not None:
            print(
                f"# {r.metric.split()[0]}: speed-up from the radix cache {r.ratio:.2f}x "
                f"(target >= 5x)"
            )


if __name__ == "__main__":
    main()
