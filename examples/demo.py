"""Demo: a few programs of the frontend language against a running server."""

import argparse

import sglang as sgl


@sgl.function
def multi_turn_question(s, question_1, question_2):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=64))
    s += sgl.user(question_2)
    s += sgl.assistant(sgl.gen("answer_2", max_tokens=64))


@sgl.function
def ip_address(s):
    s += "Q: What is the IP address of the Google DNS servers?\n"
    s += "A: " + sgl.gen(
        "answer",
        temperature=0,
        regex=r"((25[0-5]|2[0-4]\d|[01]?\d\d?).){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)",
    )


@sgl.function
def text_qa(s, question):
    s += "Q: " + question + "\n"
    s += "A:" + sgl.gen("answer", stop="\n", max_tokens=32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=30000)
    args = parser.parse_args()
    sgl.set_default_backend(sgl.RuntimeEndpoint(f"http://127.0.0.1:{args.port}"))

    state = multi_turn_question.run(
        question_1="What is the capital of France?",
        question_2="List two local attractions.",
        temperature=0,
    )
    for m in state.messages():
        print(m["role"], ":", m["content"])

    print("\nIP address (regex-constrained):", ip_address.run()["answer"])

    questions = ["What is the capital of the United Kingdom?", "What is the capital of Japan?"]
    states = text_qa.run_batch([{"question": q} for q in questions], temperature=0)
    for q, st in zip(questions, states):
        print(f"\n{q}\n ->{st['answer']}")

    print("\nStreaming:", end=" ")
    state = text_qa.run(question="What is the capital of Italy?", temperature=0, stream=True)
    for out in state.text_iter("answer"):
        print(out, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
