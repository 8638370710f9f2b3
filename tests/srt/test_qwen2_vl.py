"""Qwen2-VL and Qwen2.5-VL: our processor's prompt layout, M-RoPE positions and model logits
against transformers' reference implementation, on tiny random-weight models
(tests/vision_models.py): prefill with one and two images, a cached text prefix then the
image, a chunked prefill through an image batched with another request, and decode steps
after an image (the M-RoPE delta)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.multimodal.inputs import MultimodalInputs
from sglang.srt.multimodal.mrope import mrope_positions
from sglang.srt.multimodal.processors import (
    Qwen2VLImageProcessor,
    create_image_processor,
    pad_ids,
)
from sglang.srt.server_args import ServerArgs

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vision_models import (  # noqa: E402
    QWEN_IMAGE,
    image_files,
    make_image,
    reference,
    save_tiny_qwen2_vl,
)

PROMPT = f"<|im_start|>user\n{QWEN_IMAGE}what is in this image?<|im_end|>\n<|im_start|>assistant\n"
TWO_IMAGES = f"{QWEN_IMAGE} the quick {QWEN_IMAGE} brown fox"
TOL = dict(atol=1e-4, rtol=1e-4)


class Driver:
    """Runs prompts (with their images) through ModelRunner.forward as the scheduler does: a
    request's MultimodalInputs go with every pass it is in, extend and decode."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.rows: dict[str, int] = {}
        self.lens: dict[str, int] = {}
        self.mm: dict[str, MultimodalInputs] = {}
        self.slots: list[torch.Tensor] = []

    def release(self) -> None:
        """Give the pool rows and KV slots back."""
        for row in self.rows.values():
            self.runner.req_to_token_pool.free(row)
        for slots in self.slots:
            self.runner.token_to_kv_pool_allocator.free(slots)
        self.rows, self.slots = {}, []

    def extend(self, chunks: dict[str, list[int]]) -> torch.Tensor:
        """next-token logits [B, V] after each request's chunk."""
        return self._run(ForwardMode.EXTEND, chunks)

    def decode(self, tokens: dict[str, int]) -> torch.Tensor:
        return self._run(ForwardMode.DECODE, {rid: [t] for rid, t in tokens.items()})

    def _run(self, mode: ForwardMode, chunks: dict[str, list[int]]) -> torch.Tensor:
        pool = self.runner.req_to_token_pool
        ids, positions, locs, starts, rows = [], [], [], [], []
        for rid, new in chunks.items():
            if rid not in self.rows:
                self.rows[rid], self.lens[rid] = pool.alloc(), 0
            start, row = self.lens[rid], self.rows[rid]
            slots = self.runner.token_to_kv_pool_allocator.alloc(len(new))
            self.slots.append(slots)
            pool.req_to_token[row, start : start + len(new)] = slots
            ids += new
            positions += range(start, start + len(new))
            locs.append(slots)
            starts.append(start)
            rows.append(row)
            self.lens[rid] = start + len(new)
        seq_lens = [self.lens[rid] for rid in chunks]
        mm: Optional[list[Any]] = None
        if any(rid in self.mm for rid in chunks):
            mm = [self.mm.get(rid) for rid in chunks]
        batch = ForwardBatch(
            mode=mode,
            batch_size=len(chunks),
            input_ids=torch.tensor(ids),
            positions=torch.tensor(positions),
            out_cache_loc=torch.cat(locs),
            req_pool_indices=torch.tensor(rows),
            seq_lens=torch.tensor(seq_lens),
            req_to_token=pool.req_to_token,
            seq_lens_cpu=seq_lens,
            extend_prefix_lens_cpu=starts,
            extend_seq_lens_cpu=[len(c) for c in chunks.values()],
            mm_inputs=mm,
        )
        return self.runner.forward(batch).next_token_logits.float()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Any]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    files = image_files(str(folder))
    # 84x112: a 6x8 patch grid, 3x4 merged; Qwen2.5-VL's 2x2 windows do not tile it evenly
    files["wide"] = make_image(str(folder / "wide.png"), 84, 112, seed=4)
    return {k: Image.open(v).convert("RGB") for k, v in files.items()}


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def tiny(request, tmp_path_factory) -> dict[str, Any]:
    """Our runner and processor, and transformers' model and processor, on one saved model."""
    path = save_tiny_qwen2_vl(str(tmp_path_factory.mktemp(request.param)), request.param)
    ref, ref_processor = reference(path)
    runner = ModelRunner(
        ServerArgs(
            model_path=path, dtype="float32", device="cpu", num_threads=1, quantization="none"
        )
    )
    runner.init_memory_pool(max_total_tokens=4096, max_running_requests=8)
    ours = create_image_processor(path, runner.model_config.vocab_size)
    assert isinstance(ours, Qwen2VLImageProcessor)
    return {"ref": ref, "ref_processor": ref_processor, "runner": runner, "ours": ours}


@pytest.fixture
def driver(tiny) -> Any:
    d = Driver(tiny["runner"])
    yield d
    d.release()


def ref_inputs(tiny: dict[str, Any], text: str, imgs: list[Any]) -> dict[str, torch.Tensor]:
    return tiny["ref_processor"](images=imgs, text=[text], return_tensors="pt")


def our_prompt(
    tiny: dict[str, Any], text: str, imgs: list[Any]
) -> tuple[list[int], MultimodalInputs]:
    ids = tiny["ref_processor"].tokenizer.encode(text)
    return tiny["ours"].expand(ids, imgs)


def reference_logits(tiny: dict[str, Any], text: str, imgs: list[Any]) -> torch.Tensor:
    with torch.no_grad():
        return tiny["ref"](**ref_inputs(tiny, text, imgs)).logits[0, -1].float()


def reference_rope(tiny: dict[str, Any], text: str, imgs: list[Any]) -> tuple[torch.Tensor, int]:
    """transformers' (t, h, w) positions [3, L] and M-RoPE delta of a prompt."""
    inputs = ref_inputs(tiny, text, imgs)
    positions, deltas = tiny["ref"].model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
    )
    return positions[:, 0], int(deltas[0, 0])


CASES = {
    "a": (PROMPT, ["a"]),
    "tall": (PROMPT, ["tall"]),
    "wide": (PROMPT, ["wide"]),
    "two": (TWO_IMAGES, ["a", "tall"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prompt_layout_matches_transformers(tiny, images, case):
    text, names = CASES[case]
    imgs = [images[n] for n in names]
    ref_ids = ref_inputs(tiny, text, imgs)["input_ids"][0].tolist()
    ids, mm = our_prompt(tiny, text, imgs)
    token = tiny["ours"].image_token_id
    assert len(ids) == len(ref_ids)
    ours_image_positions = [p for im in mm.images for p in range(im.offset, im.end)]
    assert ours_image_positions == [p for p, t in enumerate(ref_ids) if t == token]
    text_positions = set(range(len(ids))) - set(ours_image_positions)
    assert all(ids[p] == ref_ids[p] for p in text_positions)
    for im in mm.images:  # positions carry the image's own pad ids
        assert ids[im.offset : im.end] == pad_ids(im.hash, im.num_tokens, tiny["ours"].vocab_size)


def test_image_positions_count(tiny, images):
    # 40x60 -> 56x84 pixels, 4x6 patches, 2x3 merged; 70x30 -> 112x56, 8x4, 4x2; 84x112: 3x4
    counts = {n: tiny["ours"].preprocess(images[n]).num_tokens for n in ("a", "tall", "wide")}
    assert counts == {"a": 6, "tall": 8, "wide": 12}


def test_bare_image_token_gets_vision_markers(tiny, images):
    bare = PROMPT.replace(QWEN_IMAGE, "<|image_pad|>")
    assert our_prompt(tiny, bare, [images["a"]])[0] == our_prompt(tiny, PROMPT, [images["a"]])[0]


def test_same_image_same_ids_different_image_different_ids(tiny, images):
    a1, _ = our_prompt(tiny, PROMPT, [images["a"]])
    a2, _ = our_prompt(tiny, PROMPT, [images["a"].copy()])
    b, _ = our_prompt(tiny, PROMPT, [images["b"]])
    assert a1 == a2
    assert a1 != b


@pytest.mark.parametrize("case", list(CASES))
def test_mrope_positions_and_delta_match_transformers(tiny, images, case):
    text, names = CASES[case]
    imgs = [images[n] for n in names]
    want, delta = reference_rope(tiny, text, imgs)
    ids, mm = our_prompt(tiny, text, imgs)
    assert mm.mrope_delta == delta
    merge = tiny["ours"].merge
    got = mrope_positions(mm.images, torch.arange(len(ids)), merge)
    assert torch.equal(got, want)
    # any slice of the prompt (a chunk) gets the same positions as the whole
    assert torch.equal(mrope_positions(mm.images, torch.arange(5, 20), merge), want[:, 5:20])


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(tiny, images, case, driver):
    text, names = CASES[case]
    imgs = [images[n] for n in names]
    ids, mm = our_prompt(tiny, text, imgs)
    driver.mm["r"] = mm
    ours = driver.extend({"r": ids})[0]
    torch.testing.assert_close(ours, reference_logits(tiny, text, imgs), **TOL)


def test_text_only_prompt_matches_transformers(tiny, driver):
    text = "<|im_start|>user\nthe quick brown fox<|im_end|>\n<|im_start|>assistant\n"
    ids = tiny["ref_processor"].tokenizer.encode(text)
    ours = driver.extend({"r": ids})[0]
    torch.testing.assert_close(ours, reference_logits(tiny, text, []), **TOL)


def test_cached_text_prefix_then_the_image(tiny, images, driver):
    """The text before the image in one pass (as a cached prefix is), the image and the rest
    in the next: the logits of the whole prompt."""
    ids, mm = our_prompt(tiny, PROMPT, [images["tall"]])
    driver.mm["r"] = mm
    cut = mm.images[0].offset
    driver.extend({"r": ids[:cut]})
    ours = driver.extend({"r": ids[cut:]})[0]
    torch.testing.assert_close(ours, reference_logits(tiny, PROMPT, [images["tall"]]), **TOL)


def test_chunked_prefill_splitting_an_image_and_a_batch_of_two_images(tiny, images, driver):
    """Chunks that cut through an image, batched with another request's image and a text-only
    request: the same logits as transformers on each whole prompt."""
    ids_a, driver.mm["a"] = our_prompt(tiny, PROMPT, [images["wide"]])
    ids_t, driver.mm["t"] = our_prompt(tiny, TWO_IMAGES, [images["a"], images["tall"]])
    text = "the lazy dog"
    ids_x = tiny["ref_processor"].tokenizer.encode(text)
    cut = driver.mm["a"].images[0].offset + 5  # inside the image
    driver.extend({"a": ids_a[:cut]})
    logits = driver.extend({"a": ids_a[cut:], "t": ids_t, "x": ids_x})
    torch.testing.assert_close(logits[0], reference_logits(tiny, PROMPT, [images["wide"]]), **TOL)
    two = reference_logits(tiny, TWO_IMAGES, [images["a"], images["tall"]])
    torch.testing.assert_close(logits[1], two, **TOL)
    torch.testing.assert_close(logits[2], reference_logits(tiny, text, []), **TOL)
    assert driver.mm["a"].images[0].features is None  # dropped once the prefill passed it


def reference_generate(tiny: dict[str, Any], text: str, imgs: list[Any], n: int) -> list[int]:
    inputs = ref_inputs(tiny, text, imgs)
    with torch.no_grad():
        out = tiny["ref"].generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_greedy_decode_after_images_matches_generate(tiny, images, driver):
    """Decode steps place new tokens at 1-D position + the M-RoPE delta; a batch of an image
    request (one image, then two) and a text-only one decodes as transformers does each."""
    ids_1, driver.mm["one"] = our_prompt(tiny, PROMPT, [images["tall"]])
    ids_2, driver.mm["two"] = our_prompt(tiny, TWO_IMAGES, [images["wide"], images["a"]])
    text = "the quick brown"
    ids_x = tiny["ref_processor"].tokenizer.encode(text)
    first = driver.extend({"one": ids_1, "two": ids_2, "x": ids_x}).argmax(-1).tolist()
    outs = {"one": [first[0]], "two": [first[1]], "x": [first[2]]}
    for _ in range(7):
        step = driver.decode({rid: out[-1] for rid, out in outs.items()}).argmax(-1).tolist()
        for rid, token in zip(outs, step):
            outs[rid].append(token)
    assert outs["one"] == reference_generate(tiny, PROMPT, [images["tall"]], 8)
    assert outs["two"] == reference_generate(tiny, TWO_IMAGES, [images["wide"], images["a"]], 8)
    assert outs["x"] == reference_generate(tiny, text, [], 8)


def test_decode_logits_after_an_image_match_transformers(tiny, images, driver):
    """The logits of decode steps themselves (not only their argmax): the prompt and the
    generated tokens through transformers' full forward."""
    ids, mm = our_prompt(tiny, PROMPT, [images["a"]])
    driver.mm["r"] = mm
    token = int(driver.extend({"r": ids})[0].argmax())
    generated = [token]
    for _ in range(3):
        ours = driver.decode({"r": generated[-1]})[0]
        inputs = ref_inputs(tiny, PROMPT, [images["a"]])
        extra = torch.tensor([generated])
        inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        zeros = torch.zeros_like(extra, dtype=inputs["mm_token_type_ids"].dtype)
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], zeros], dim=1)
        with torch.no_grad():
            want = tiny["ref"](**inputs).logits[0, -1].float()
        torch.testing.assert_close(ours, want, **TOL)
        generated.append(int(ours.argmax()))
