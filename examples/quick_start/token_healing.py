"""Token healing: a prompt ending in a space, with and without it.

python -m sglang.launch_server --port 30000
python examples/quick_start/token_healing.py
"""

import sglang as sgl


@sgl.function
def chat_example(s):
    s += sgl.system("You are a helpful assistant.")
    with s.user():
        s += "Question: What is the capital of France?"
    s += sgl.assistant_begin()
    s += "Answer: " + sgl.gen("answer", max_tokens=30, stop="\n")
    s += sgl.assistant_end()


if __name__ == "__main__":
    sgl.set_default_backend(sgl.RuntimeEndpoint("http://localhost:30000"))
    for healing in (True, False):
        state = chat_example.run(temperature=0, token_healing=healing)
        print(f"token_healing={healing}: Answer: {state['answer']!r}")
        print("  meta:", state.get_meta_info("answer").get("token_healing"))
