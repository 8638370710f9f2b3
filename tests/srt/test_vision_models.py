"""LLaVA and LLaVA-NeXT: our processor's prompt layout and our model's logits against
transformers' reference implementation, on tiny random-weight models (tests/vision_models.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.multimodal.inputs import MultimodalInputs
from sglang.srt.multimodal.processors import ImageProcessor, create_image_processor, pad_ids
from sglang.srt.server_args import ServerArgs

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vision_models import image_files, reference, save_tiny_llava  # noqa: E402

PROMPT = "<|im_start|>user\n<image>what is in this image?<|im_end|>\n<|im_start|>assistant\n"
TWO_IMAGES = "<image> the quick <image> brown fox"


class Driver:
    """Runs prompts (with their images) through ModelRunner.forward as the scheduler does."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.rows: dict[str, int] = {}
        self.lens: dict[str, int] = {}
        self.mm: dict[str, MultimodalInputs] = {}

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
            pool.req_to_token[row, start : start + len(new)] = slots
            ids += new
            positions += range(start, start + len(new))
            locs.append(slots)
            starts.append(start)
            rows.append(row)
            self.lens[rid] = start + len(new)
        seq_lens = [self.lens[rid] for rid in chunks]
        mm: Optional[list[Any]] = None
        if mode == ForwardMode.EXTEND and any(rid in self.mm for rid in chunks):
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

    files = image_files(str(tmp_path_factory.mktemp("images")))
    return {k: Image.open(v).convert("RGB") for k, v in files.items()}


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def tiny(request, tmp_path_factory) -> dict[str, Any]:
    """Our runner and processor, and transformers' model and processor, on one saved model."""
    path = save_tiny_llava(str(tmp_path_factory.mktemp(request.param)), request.param)
    ref, ref_processor = reference(path)
    runner = ModelRunner(
        ServerArgs(
            model_path=path, dtype="float32", device="cpu", num_threads=1, quantization="none"
        )
    )
    runner.init_memory_pool(max_total_tokens=4096, max_running_requests=8)
    ours = create_image_processor(path, runner.model_config.vocab_size)
    assert isinstance(ours, ImageProcessor)
    return {"ref": ref, "ref_processor": ref_processor, "runner": runner, "ours": ours}


def ref_inputs(tiny: dict[str, Any], text: str, imgs: list[Any]) -> dict[str, torch.Tensor]:
    return tiny["ref_processor"](images=imgs, text=[text], return_tensors="pt")


def our_prompt(
    tiny: dict[str, Any], text: str, imgs: list[Any]
) -> tuple[list[int], MultimodalInputs]:
    ids = tiny["ref_processor"].tokenizer.encode(text)
    return tiny["ours"].expand(ids, imgs)


@pytest.mark.parametrize("names", [["a"], ["tall"], ["a", "tall"]])
def test_prompt_layout_matches_transformers(tiny, images, names):
    imgs = [images[n] for n in names]
    text = PROMPT if len(imgs) == 1 else TWO_IMAGES
    ref_ids = ref_inputs(tiny, text, imgs)["input_ids"][0].tolist()
    ids, mm = our_prompt(tiny, text, imgs)
    token = tiny["ours"].image_token_id
    assert len(ids) == len(ref_ids)
    ours_image_positions = [p for im in mm.images for p in range(im.offset, im.end)]
    assert ours_image_positions == [p for p, t in enumerate(ref_ids) if t == token]
    text_positions = set(range(len(ids))) - set(ours_image_positions)
    assert all(ids[p] == ref_ids[p] for p in text_positions)
    for im in mm.images:  # positions carry the image's own pad ids
        assert ids[im.offset : im.end] == pad_ids(
            im.hash, im.num_tokens, len(tiny["ref_processor"].tokenizer)
        )


def test_image_positions_count(tiny, images):
    counts = {n: tiny["ours"].preprocess(images[n]).num_tokens for n in ("a", "tall")}
    kind = type(tiny["ref"]).__name__
    # LLaVA: 2x2 patches per 28-px tile; NeXT adds the cropped grid with a newline per row
    assert counts == ({"a": 4, "tall": 4} if kind.startswith("LlavaFor") else {"a": 14, "tall": 16})


def test_same_image_same_ids_different_image_different_ids(tiny, images):
    a1, _ = our_prompt(tiny, PROMPT, [images["a"]])
    a2, _ = our_prompt(tiny, PROMPT, [images["a"].copy()])
    b, _ = our_prompt(tiny, PROMPT, [images["b"]])
    assert a1 == a2
    assert a1 != b


def reference_logits(tiny: dict[str, Any], text: str, imgs: list[Any]) -> torch.Tensor:
    with torch.no_grad():
        return tiny["ref"](**ref_inputs(tiny, text, imgs)).logits[0, -1].float()


@pytest.mark.parametrize("names", [["a"], ["tall"], ["a", "tall"]])
def test_logits_match_transformers(tiny, images, names):
    imgs = [images[n] for n in names]
    text = PROMPT if len(imgs) == 1 else TWO_IMAGES
    ids, mm = our_prompt(tiny, text, imgs)
    driver = Driver(tiny["runner"])
    driver.mm["r"] = mm
    ours = driver.extend({"r": ids})[0]
    torch.testing.assert_close(ours, reference_logits(tiny, text, imgs), atol=2e-4, rtol=1e-4)


def test_chunked_prefill_splitting_an_image_and_a_batch_of_two_images(tiny, images):
    """Chunks that cut through an image, batched with another request's image: the same
    logits as transformers on each whole prompt."""
    driver = Driver(tiny["runner"])
    ids_a, driver.mm["a"] = our_prompt(tiny, PROMPT, [images["a"]])
    ids_t, driver.mm["t"] = our_prompt(tiny, PROMPT, [images["tall"]])
    cut = driver.mm["a"].images[0].offset + 2  # inside the image
    driver.extend({"a": ids_a[:cut]})
    logits = driver.extend({"a": ids_a[cut:], "t": ids_t})
    torch.testing.assert_close(
        logits[0], reference_logits(tiny, PROMPT, [images["a"]]), atol=2e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        logits[1], reference_logits(tiny, PROMPT, [images["tall"]]), atol=2e-4, rtol=1e-4
    )
    assert driver.mm["a"].images[0].features is None  # dropped once the prefill passed it


def test_greedy_decode_matches_generate(tiny, images):
    ids, mm = our_prompt(tiny, PROMPT, [images["tall"]])
    driver = Driver(tiny["runner"])
    driver.mm["r"] = mm
    token = int(driver.extend({"r": ids})[0].argmax())
    out = [token]
    for _ in range(7):
        out.append(int(driver.decode({"r": out[-1]})[0].argmax()))
    inputs = ref_inputs(tiny, PROMPT, [images["tall"]])
    with torch.no_grad():
        ref = tiny["ref"].generate(**inputs, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert out == ref[0, inputs["input_ids"].shape[1] :].tolist()
