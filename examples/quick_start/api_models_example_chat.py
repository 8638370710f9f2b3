"""The multi-turn chat on an API model: OpenAI, Anthropic, Gemini (VertexAI) or any LiteLLM model.

Set the provider's key first (OPENAI_API_KEY, ANTHROPIC_API_KEY, GOOGLE_API_KEY, ...), then e.g.
    python examples/quick_start/api_models_example_chat.py anthropic claude-3-5-haiku-latest
    python examples/quick_start/api_models_example_chat.py vertexai gemini-2.0-flash
    python examples/quick_start/api_models_example_chat.py litellm openai/gpt-4o-mini
"""

import argparse

import sglang as sgl

BACKENDS = {
    "openai": "OpenAI",
    "anthropic": "Anthropic",
    "vertexai": "VertexAI",
    "litellm": "LiteLLM",
}


@sgl.function
def multi_turn_question(s, question_1, question_2):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=256))
    s += sgl.user(question_2)
    s += sgl.assistant(sgl.gen("answer_2", max_tokens=256))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", choices=sorted(BACKENDS))
    parser.add_argument("model")
    args = parser.parse_args()
    sgl.set_default_backend(getattr(sgl, BACKENDS[args.backend])(args.model))

    state = multi_turn_question.run(
        question_1="What is the capital of the United States?",
        question_2="List two local attractions.",
    )
    for m in state.messages():
        print(m["role"], ":", m["content"])
    print(state["answer_1"])
