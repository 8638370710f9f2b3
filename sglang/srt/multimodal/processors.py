"""Preprocessing a request's images for the served model, and the prompt positions they take.

Pixels come from the model's own image processor (transformers' PIL processors, configured by
the model folder's preprocessor_config.json); the number of positions per image and the
prompt's layout are ours. A prompt's image token is expanded to an image's positions, whose
ids are pad ids derived from the image's hash: the radix cache then shares a prefix with an
image only between requests with the same image.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from sglang.srt.multimodal import anyres
from sglang.srt.multimodal.inputs import ImageItem, MultimodalInputs
from sglang.srt.multimodal.mrope import mrope_delta


def read_config(model_path: str) -> dict[str, Any]:
    path = os.path.join(model_path, "config.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def image_token_id(config: dict[str, Any]) -> Optional[int]:
    """The prompt's image token id of a vision-language config.json; None for a text model."""
    if config.get("vision_config") is None:
        return None
    value = config.get("image_token_index", config.get("image_token_id"))
    return int(value) if value is not None else None


def image_digest(pixels: torch.Tensor, extra: tuple = ()) -> int:
    """A 63-bit digest of preprocessed pixels (and of what else decides the features)."""
    h = hashlib.sha256(pixels.detach().to(torch.float32).contiguous().numpy().tobytes())
    h.update(repr((tuple(pixels.shape), extra)).encode())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def pad_ids(digest: int, count: int, vocab_size: int) -> list[int]:
    """The ids an image's positions carry: a sequence drawn from its digest.

    NOTE: ids stay inside the vocabulary (logprob code may index logits with them); two
    different images get the same sequence with probability vocab_size ** -count.
    """
    return np.random.default_rng(digest).integers(0, vocab_size, count).tolist()


class ImageProcessor:
    """LLaVA-1.5: each image is one tile of the tower's size; (side / patch)^2 positions."""

    def __init__(self, model_path: str, config: dict[str, Any], vocab_size: int) -> None:
        from transformers import AutoImageProcessor

        token = image_token_id(config)
        assert token is not None, "not a vision-language model"
        self.image_token_id: int = token
        self.vocab_size = vocab_size
        self.config = config
        vision = config["vision_config"]
        self.tile = int(vision.get("image_size", 224))
        self.side = self.tile // int(vision.get("patch_size", 14))
        self.keep_cls = config.get("vision_feature_select_strategy", "default") == "full"
        self.hf = AutoImageProcessor.from_pretrained(model_path)

    def preprocess(self, image: Image.Image) -> ImageItem:
        pixels = self.hf(image, return_tensors="pt")["pixel_values"][0]  # [3, H, W]
        count = self.side * self.side + int(self.keep_cls)
        size = (image.height, image.width)
        return ImageItem(pixels, image_digest(pixels), 0, count, image_size=size)

    def expand(
        self, ids: list[int], images: list[Image.Image]
    ) -> tuple[list[int], MultimodalInputs]:
        """The prompt with each image token replaced by its image's pad ids; the images with
        their positions. ValueError when the image tokens and the images do not pair up."""
        found = ids.count(self.image_token_id)
        if found != len(images):
            raise ValueError(
                f"the prompt has {found} image token(s) for {len(images)} image(s) in "
                "image_data: put one image token where each image stands"
            )
        items = [self.preprocess(im) for im in images]
        out: list[int] = []
        queue = iter(items)
        for token in ids:
            if token != self.image_token_id:
                out.append(token)
                continue
            item = next(queue)
            item.offset = len(out)
            out.extend(pad_ids(item.hash, item.num_tokens, self.vocab_size))
        return out, MultimodalInputs(images=items)


class LlavaNextImageProcessor(ImageProcessor):
    """LLaVA-NeXT: the base tile plus the any-resolution grid (see anyres.py)."""

    def __init__(self, model_path: str, config: dict[str, Any], vocab_size: int) -> None:
        super().__init__(model_path, config, vocab_size)
        self.pinpoints = config["image_grid_pinpoints"]
        if self.keep_cls:
            raise ValueError(
                "LLaVA-NeXT with vision_feature_select_strategy 'full' is not supported"
            )

    def preprocess(self, image: Image.Image) -> ImageItem:
        size = (image.height, image.width)
        tiles = anyres.num_tiles(size, self.pinpoints, self.tile)
        pixels = self.hf(image, return_tensors="pt")["pixel_values"][0][:tiles]  # [tiles, 3, H, W]
        count = anyres.num_image_tokens(size, self.pinpoints, self.tile, self.side)
        digest = image_digest(pixels, size)
        return ImageItem(pixels, digest, 0, count, image_size=size)


class Qwen2VLImageProcessor(ImageProcessor):
    """Qwen2-VL and Qwen2.5-VL: the image is resized to multiples of patch * merge pixels within
    the processor's min/max pixels and cut into patches (transformers' Qwen2VLImageProcessor);
    it takes one position per merged patch, t * (h / merge) * (w / merge).

    The prompt's image token is `<|image_pad|>` between `<|vision_start|>` and `<|vision_end|>`;
    a bare `<|image_pad|>` (as chat image parts and the frontend place the image token) gets
    them added around it. The request's M-RoPE delta is computed here, from the whole prompt.
    """

    def __init__(self, model_path: str, config: dict[str, Any], vocab_size: int) -> None:
        from transformers import AutoImageProcessor

        token = image_token_id(config)
        assert token is not None, "not a vision-language model"
        self.image_token_id = token
        self.vocab_size = vocab_size
        self.config = config
        self.vision_start_id: Optional[int] = config.get("vision_start_token_id")
        self.vision_end_id: Optional[int] = config.get("vision_end_token_id")
        self.merge = int(config["vision_config"].get("spatial_merge_size", 2))
        self.hf = AutoImageProcessor.from_pretrained(model_path)

    def preprocess(self, image: Image.Image) -> ImageItem:
        out = self.hf(image, return_tensors="pt")
        pixels = out["pixel_values"]  # [patches, C * temporal_patch * patch * patch]
        t, h, w = (int(v) for v in out["image_grid_thw"][0])
        count = t * (h // self.merge) * (w // self.merge)
        size = (image.height, image.width)
        digest = image_digest(pixels, (t, h, w))
        return ImageItem(pixels, digest, 0, count, image_size=size, grid_thw=(t, h, w))

    def expand(
        self, ids: list[int], images: list[Image.Image]
    ) -> tuple[list[int], MultimodalInputs]:
        ids, mm = super().expand(self.with_vision_markers(ids), images)
        mm.mrope_delta = mrope_delta(mm.images, self.merge)
        return ids, mm

    def with_vision_markers(self, ids: list[int]) -> list[int]:
        """ids with <|vision_start|> before and <|vision_end|> after each image token that
        lacks them."""
        if self.vision_start_id is None or self.vision_end_id is None:
            return ids
        out: list[int] = []
        for i, token in enumerate(ids):
            if token != self.image_token_id:
                out.append(token)
                continue
            if i == 0 or ids[i - 1] != self.vision_start_id:
                out.append(self.vision_start_id)
            out.append(token)
            if i + 1 == len(ids) or ids[i + 1] != self.vision_end_id:
                out.append(self.vision_end_id)
        return out


_PROCESSORS: dict[str, type[ImageProcessor]] = {
    "LlavaForConditionalGeneration": ImageProcessor,
    "LlavaNextForConditionalGeneration": LlavaNextImageProcessor,
    "Qwen2VLForConditionalGeneration": Qwen2VLImageProcessor,
    "Qwen2_5_VLForConditionalGeneration": Qwen2VLImageProcessor,
}


def create_image_processor(model_path: str, vocab_size: int) -> Optional[ImageProcessor]:
    """The image processor of the model at model_path; None for a model that reads no images."""
    config = read_config(model_path)
    arch = (config.get("architectures") or [""])[0]
    if arch not in _PROCESSORS or image_token_id(config) is None:
        return None
    return _PROCESSORS[arch](model_path, config, vocab_size)
