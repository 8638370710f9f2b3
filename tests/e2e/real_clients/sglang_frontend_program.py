"""Runs under the original SGLang frontend (its own venv): programs against our server.

Usage: python sglang_frontend_program.py URL  -> prints one JSON object of results.
"""

import json
import sys

import sglang as sgl


@sgl.function
def answer(s, question):
    s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=8, temperature=0, stop="\n")


@sgl.function
def pick(s):
    s += "The color of the clear sky is" + sgl.select("color", choices=[" blue", " green"])


@sgl.function
def digits(s):
    s += "A three digit number: " + sgl.gen("number", max_tokens=8, regex=r"[0-9]{3}")


@sgl.function
def forked(s):
    s += "Two fruits:"
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += f" fruit {i + 1} is" + sgl.gen("fruit", max_tokens=4, temperature=0)
    forks.join()
    s["fruits"] = [f["fruit"] for f in forks]


@sgl.function
def streamed(s):
    s += "Count: 1, 2, 3," + sgl.gen(
        "count", max_tokens=8, temperature=0, return_logprob=True, top_logprobs_num=2
    )


def main() -> None:
    sgl.set_default_backend(sgl.RuntimeEndpoint(sys.argv[1]))
    out = {"version": getattr(sgl, "__version__", None), "module": sgl.__file__}
    out["answer"] = answer.run(question="What is 2 + 2?")["answer"]
    out["color"] = pick.run()["color"]
    out["number"] = digits.run()["number"]
    out["fruits"] = forked.run()["fruits"]
    states = answer.run_batch([{"question": "Hi?"}, {"question": "Why?"}], num_threads=2)
    out["batch"] = [st["answer"] for st in states]
    state = streamed.run(stream=True)
    out["stream_pieces"] = list(state.text_iter("count"))
    out["count"] = state["count"]
    meta = state.get_meta_info("count")
    out["count_logprobs"] = meta["output_token_logprobs"]
    out["count_completion_tokens"] = meta["completion_tokens"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
