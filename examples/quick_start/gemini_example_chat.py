"""Multi-turn chat on VertexAI("gemini-2.0-flash"); set GOOGLE_API_KEY (or a Vertex AI project) first."""

from sglang import VertexAI, assistant, function, gen, set_default_backend, system, user


@function
def multi_turn_question(s, question_1, question_2):
    s += system("You are a helpful assistant.")
    s += user(question_1)
    s += assistant(gen("answer_1", max_tokens=256))
    s += user(question_2)
    s += assistant(gen("answer_2", max_tokens=256))


set_default_backend(VertexAI("gemini-2.0-flash"))

state = multi_turn_question.run(
    question_1="What is the capital of the United States?",
    question_2="List two local attractions.",
)

for m in state.messages():
    print(m["role"], ":", m["content"])

print(state["answer_1"])
