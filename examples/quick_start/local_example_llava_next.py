"""Image question answering; needs a server running a multimodal model.

Start one first, e.g.: python -m sglang.launch_server --model-path <a LLaVA-NeXT folder> --port 30000
Then: python examples/quick_start/local_example_llava_next.py path/to/image.jpg
"""

import argparse

import sglang as sgl


@sgl.function
def image_qa(s, image_file, question):
    s += sgl.user(sgl.image(image_file) + question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=256))


def single(image_file):
    state = image_qa.run(image_file=image_file, question="What is this?", max_new_tokens=128)
    print(state["answer"], "\n")


def stream(image_file):
    state = image_qa.run(
        image_file=image_file, question="Please describe this image in simple words.", stream=True
    )
    for out in state.text_iter("answer"):
        print(out, end="", flush=True)
    print()


def batch(image_file):
    states = image_qa.run_batch(
        [
            {"image_file": image_file, "question": "What is this?"},
            {"image_file": image_file, "question": "What is the main colour?"},
        ],
        max_new_tokens=128,
    )
    for s in states:
        print(s["answer"], "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("image_file")
    parser.add_argument("--url", default="http://localhost:30000")
    args = parser.parse_args()
    sgl.set_default_backend(sgl.RuntimeEndpoint(args.url))
    single(args.image_file)
    stream(args.image_file)
    batch(args.image_file)
