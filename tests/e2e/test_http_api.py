"""End-to-end tests of the native HTTP API (POST /generate and the control routes)."""

from __future__ import annotations

import json
import math
import threading
import uuid
from typing import Any

import pytest
import requests

PROMPT = "The capital of France is"
GREEDY = {"temperature": 0.0, "max_new_tokens": 12}


def post(url: str, path: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(url + path, json=body, timeout=300, **kwargs)


def generate(url: str, **body: Any) -> Any:
    res = post(url, "/generate", body)
    assert res.status_code == 200, res.text
    return res.json()


def sse_events(res: requests.Response) -> list[Any]:
    """Parse an SSE body strictly: `data: <json>` lines separated by blank lines, ending in [DONE]."""
    lines = res.text.split("\n")
    assert res.text.endswith("data: [DONE]\n\n"), res.text[-200:]
    events = []
    for i, line in enumerate(lines):
        if not line:
            continue
        assert line.startswith("data: "), line
        assert lines[i + 1] == "", "each event must be followed by a blank line"
        payload = line[len("data: ") :]
        events.append(None if payload == "[DONE]" else json.loads(payload))
    assert events[-1] is None and None not in events[:-1]
    return events[:-1]


@pytest.fixture(scope="module")
def greedy_out(server_url: str) -> dict[str, Any]:
    return generate(server_url, text=PROMPT, sampling_params=GREEDY)


def unique_prompt(words: int = 40) -> str:
    tag = uuid.uuid4().hex
    return f"Note {tag}: " + " ".join(f"item{i}" for i in range(words))


# ------------------------------------------------------------------ single / batch / n


def test_single_prompt_shape(greedy_out: dict[str, Any], tokenizer: Any) -> None:
    meta = greedy_out["meta_info"]
    assert set(greedy_out) == {"text", "output_ids", "meta_info"}
    assert meta["prompt_tokens"] == len(tokenizer.encode(PROMPT))
    assert meta["completion_tokens"] == len(greedy_out["output_ids"]) > 0
    assert meta["finish_reason"]["type"] in ("stop", "length")
    if meta["finish_reason"]["type"] == "length":
        assert meta["finish_reason"]["length"] == GREEDY["max_new_tokens"]
        assert meta["completion_tokens"] == GREEDY["max_new_tokens"]
    decoded = tokenizer.decode(greedy_out["output_ids"], skip_special_tokens=True)
    assert greedy_out["text"] == decoded
    assert isinstance(meta["id"], str) and meta["id"]
    assert "input_token_logprobs" not in meta


def test_greedy_is_deterministic_and_input_ids_agree(
    server_url: str, greedy_out: dict[str, Any], tokenizer: Any
) -> None:
    again = generate(server_url, text=PROMPT, sampling_params=GREEDY)
    assert again["output_ids"] == greedy_out["output_ids"]
    by_ids = generate(server_url, input_ids=tokenizer.encode(PROMPT), sampling_params=GREEDY)
    assert by_ids["text"] == greedy_out["text"]


def test_rid_is_echoed(server_url: str) -> None:
    rid = f"my-rid-{uuid.uuid4().hex}"
    out = generate(server_url, text=PROMPT, rid=rid, sampling_params={"max_new_tokens": 2})
    assert out["meta_info"]["id"] == rid


def test_batch_matches_single_requests(server_url: str) -> None:
    prompts = [PROMPT, "One, two, three,", "def fibonacci(n):"]
    params = {"temperature": 0.0, "max_new_tokens": 6}
    outs = generate(server_url, text=prompts, sampling_params=params)
    assert isinstance(outs, list) and len(outs) == 3
    for prompt, out in zip(prompts, outs):
        single = generate(server_url, text=prompt, sampling_params=params)
        assert out["output_ids"] == single["output_ids"], prompt


def test_batch_with_per_prompt_sampling_params(server_url: str) -> None:
    outs = generate(
        server_url,
        text=[PROMPT, PROMPT],
        sampling_params=[{"max_new_tokens": 1}, {"max_new_tokens": 3, "ignore_eos": True}],
    )
    assert [o["meta_info"]["completion_tokens"] for o in outs] == [1, 3]


def test_batch_of_input_ids(server_url: str, tokenizer: Any) -> None:
    ids = [tokenizer.encode("Hello"), tokenizer.encode("Good morning, dear")]
    outs = generate(server_url, input_ids=ids, sampling_params={"max_new_tokens": 2})
    assert [o["meta_info"]["prompt_tokens"] for o in outs] == [len(ids[0]), len(ids[1])]


def test_n_expands_to_samples_with_sub_rids(server_url: str) -> None:
    rid = f"n-{uuid.uuid4().hex}"
    params = {"temperature": 1.0, "max_new_tokens": 8, "n": 3, "ignore_eos": True}
    outs = generate(server_url, text=PROMPT, sampling_params=params, rid=rid)
    assert [o["meta_info"]["id"] for o in outs] == [f"{rid}_{j}" for j in range(3)]
    assert all(o["meta_info"]["completion_tokens"] == 8 for o in outs)


def test_n_with_a_batch_is_prompt_major(server_url: str) -> None:
    prompts = ["Hi", "A much longer prompt than the first one"]
    params = {"max_new_tokens": 1, "n": 2}
    outs = generate(server_url, text=prompts, sampling_params=params)
    counts = [o["meta_info"]["prompt_tokens"] for o in outs]
    assert len(outs) == 4
    assert counts[0] == counts[1] < counts[2] == counts[3]


def test_seeded_sampling_is_reproducible(server_url: str) -> None:
    params = {"temperature": 1.0, "max_new_tokens": 8, "seed": 1234}
    a = generate(server_url, text=PROMPT, sampling_params=params)
    b = generate(server_url, text=PROMPT, sampling_params=params)
    assert a["output_ids"] == b["output_ids"]


# ------------------------------------------------------------------ streaming


def test_streaming_sse_is_cumulative(server_url: str, greedy_out: dict[str, Any]) -> None:
    res = post(server_url, "/generate", {"text": PROMPT, "sampling_params": GREEDY, "stream": True})
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/event-stream")
    events = sse_events(res)
    assert len(events) >= 2
    for prev, cur in zip(events, events[1:]):
        assert cur["text"].startswith(prev["text"])
        assert cur["output_ids"][: len(prev["output_ids"])] == prev["output_ids"]
    assert all(e["meta_info"]["finish_reason"] is None for e in events[:-1])
    assert events[-1]["text"] == greedy_out["text"]
    assert events[-1]["meta_info"]["finish_reason"] == greedy_out["meta_info"]["finish_reason"]


def test_streaming_a_batch_tags_items_with_index(server_url: str) -> None:
    body = {"text": ["Hello", "Goodbye"], "sampling_params": {"max_new_tokens": 3}, "stream": True}
    events = sse_events(post(server_url, "/generate", body))
    assert {e["index"] for e in events} == {0, 1}
    finals = [e for e in events if e["meta_info"]["finish_reason"] is not None]
    assert sorted(e["index"] for e in finals) == [0, 1]


# ------------------------------------------------------------------ logprobs


def test_logprobs_shapes_and_greedy_consistency(server_url: str, tokenizer: Any) -> None:
    out = generate(
        server_url,
        text=PROMPT,
        sampling_params=GREEDY,
        return_logprob=True,
        logprob_start_len=0,
        top_logprobs_num=3,
    )
    meta = out["meta_info"]
    prompt_ids = tokenizer.encode(PROMPT)
    inp, outp = meta["input_token_logprobs"], meta["output_token_logprobs"]
    assert [e[1] for e in inp] == prompt_ids
    assert inp[0][0] is None and meta["input_top_logprobs"][0] is None
    assert all(e[0] <= 0 for e in inp[1:])
    assert [e[1] for e in outp] == out["output_ids"]
    assert len(meta["output_top_logprobs"]) == len(outp)
    for entry, top in zip(outp, meta["output_top_logprobs"]):
        assert len(top) == 3 and entry[2] is None
        assert [t[0] for t in top] == sorted((t[0] for t in top), reverse=True)
        # greedy: the chosen token is a most likely one (the quantized model has exact ties)
        assert math.isclose(entry[0], top[0][0], abs_tol=1e-4)
        assert entry[1] in [t[1] for t in top if math.isclose(t[0], top[0][0], abs_tol=1e-4)]


def test_logprob_start_len_and_texts(server_url: str, tokenizer: Any) -> None:
    prompt_ids = tokenizer.encode(PROMPT)
    start = 2
    out = generate(
        server_url,
        text=PROMPT,
        sampling_params={"max_new_tokens": 3, "temperature": 0.0},
        return_logprob=True,
        logprob_start_len=start,
        return_text_in_logprobs=True,
    )
    inp = out["meta_info"]["input_token_logprobs"]
    assert [e[1] for e in inp] == prompt_ids[start:]
    for _lp, tid, text in inp + out["meta_info"]["output_token_logprobs"]:
        assert text == tokenizer.decode([tid])


def test_default_logprob_start_len_returns_no_prompt_logprobs(server_url: str) -> None:
    out = generate(
        server_url, text=PROMPT, sampling_params={"max_new_tokens": 2}, return_logprob=True
    )
    assert out["meta_info"]["input_token_logprobs"] == []
    assert len(out["meta_info"]["output_token_logprobs"]) == out["meta_info"]["completion_tokens"]


def test_max_new_tokens_zero_scores_the_prompt(server_url: str, tokenizer: Any) -> None:
    out = generate(
        server_url,
        text=PROMPT,
        sampling_params={"max_new_tokens": 0},
        return_logprob=True,
        logprob_start_len=0,
    )
    meta = out["meta_info"]
    assert out["text"] == "" and out["output_ids"] == []
    assert meta["completion_tokens"] == 0
    assert meta["prompt_tokens"] == len(tokenizer.encode(PROMPT))
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"]


# ------------------------------------------------------------------ stopping


def _stop_word(text: str) -> str:
    """A word from the middle of the text (at least 3 chars), to use as a stop string."""
    words = [w for w in text[3:].split() if len(w) >= 3]
    assert words, f"greedy text has no usable word: {text!r}"
    return words[0]


def test_stop_string_is_trimmed_or_kept(server_url: str) -> None:
    params = {"temperature": 0.0, "max_new_tokens": 24, "ignore_eos": True}
    full = generate(server_url, text=PROMPT, sampling_params=params)["text"]
    stop = _stop_word(full)
    cut = full.index(stop)
    out = generate(server_url, text=PROMPT, sampling_params={**params, "stop": [stop]})
    assert out["text"] == full[:cut]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    kept = generate(
        server_url, text=PROMPT, sampling_params={**params, "stop": stop, "no_stop_trim": True}
    )
    assert kept["text"] == full[: cut + len(stop)]


def test_stop_token_ids(server_url: str) -> None:
    params = {"temperature": 0.0, "max_new_tokens": 12, "ignore_eos": True}
    full = generate(server_url, text=PROMPT, sampling_params=params)["output_ids"]
    stop_id = full[3]
    cut = full.index(stop_id)
    out = generate(server_url, text=PROMPT, sampling_params={**params, "stop_token_ids": [stop_id]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}
    assert out["output_ids"][:cut] == full[:cut]
    assert len(out["output_ids"]) in (cut, cut + 1)


def test_min_new_tokens_and_ignore_eos(server_url: str) -> None:
    params = {"temperature": 0.0, "max_new_tokens": 5, "min_new_tokens": 5, "ignore_eos": True}
    out = generate(server_url, text="Say nothing.", sampling_params=params)
    assert out["meta_info"]["completion_tokens"] == 5
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 5}


# ------------------------------------------------------------------ cache & control routes


def test_repeated_prompt_hits_the_cache_and_flush_resets(server_url: str) -> None:
    prompt = unique_prompt()
    params = {"max_new_tokens": 1}
    first = generate(server_url, text=prompt, sampling_params=params)["meta_info"]
    second = generate(server_url, text=prompt, sampling_params=params)["meta_info"]
    assert first["cached_tokens"] == 0
    assert 0 < second["cached_tokens"] <= second["prompt_tokens"]
    res = requests.post(server_url + "/flush_cache", timeout=60)
    assert res.status_code == 200, res.text
    third = generate(server_url, text=prompt, sampling_params=params)["meta_info"]
    assert third["cached_tokens"] == 0


def test_server_info_reports_cache_hits(server_url: str, server: Any) -> None:
    prompt = unique_prompt(80)
    for _ in range(2):
        generate(server_url, text=prompt, sampling_params={"max_new_tokens": 1})
    info = requests.get(server_url + "/get_server_info", timeout=60).json()
    assert 0 < info["cache_hit_rate"] <= 1
    assert info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0
    assert info["max_total_tokens"] > 0 and info["port"] == server.port
    assert info["context_length"] > 0
    alias = requests.get(server_url + "/server_info", timeout=60).json()
    assert alias["max_total_tokens"] == info["max_total_tokens"]


def test_model_info(server_url: str, model_info: dict[str, Any]) -> None:
    assert model_info["is_generation"] is True
    assert model_info["model_path"] and model_info["tokenizer_path"]
    assert "<|im_start|>" in model_info["chat_template"]
    assert model_info["context_length"] > 0
    alias = requests.get(server_url + "/model_info", timeout=30).json()
    assert alias == model_info


def test_health_routes(server_url: str) -> None:
    assert requests.get(server_url + "/health", timeout=30).status_code == 200
    assert requests.get(server_url + "/health_generate", timeout=120).status_code == 200


def test_abort_request_ends_a_running_stream(server_url: str) -> None:
    rid = f"abort-{uuid.uuid4().hex}"
    body = {
        "text": PROMPT,
        "rid": rid,
        "stream": True,
        "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True},
    }
    started = threading.Event()
    events: list[Any] = []

    def consume() -> None:
        with requests.post(server_url + "/generate", json=body, stream=True, timeout=600) as res:
            for line in res.iter_lines():
                if line.startswith(b"data: {"):
                    events.append(json.loads(line[6:]))
                    started.set()

    thread = threading.Thread(target=consume)
    thread.start()
    assert started.wait(300), "the stream produced nothing"
    res = post(server_url, "/abort_request", {"rid": rid})
    assert res.status_code == 200 and rid in res.json()["aborted"]
    thread.join(300)
    final = events[-1]["meta_info"]
    assert final["finish_reason"]["type"] == "abort"
    assert final["completion_tokens"] < 2000


def test_abort_request_needs_a_rid(server_url: str) -> None:
    res = post(server_url, "/abort_request", {})
    assert res.status_code == 400 and "rid" in res.json()["error"]["message"]


def test_min_new_tokens_holds_against_a_stop_string(server_url: str) -> None:
    """A stop string that the output reaches early ends it only after min_new_tokens."""
    free = generate(server_url, text=PROMPT, sampling_params={**GREEDY, "max_new_tokens": 24})
    stop = free["text"][:2]
    assert stop.strip(), free["text"]
    early = generate(server_url, text=PROMPT, sampling_params={**GREEDY, "max_new_tokens": 24, "stop": stop})
    assert early["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert early["meta_info"]["completion_tokens"] < 6
    held = generate(
        server_url,
        text=PROMPT,
        sampling_params={**GREEDY, "max_new_tokens": 24, "stop": stop, "min_new_tokens": 6},
    )
    assert held["meta_info"]["completion_tokens"] >= 6
    assert held["output_ids"][:6] == free["output_ids"][:6]
