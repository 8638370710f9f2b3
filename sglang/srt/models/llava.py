"""LLaVA (1.5) and LLaVA-NeXT: a CLIP vision tower, an MLP projector and a Llama-family decoder.

The decoder is our LlamaForCausalLM (Llama, Mistral, or Qwen2 with q/k/v biases); the images'
projected features replace the embeddings of their positions in the prompt (see
multimodal/inputs.py). Encoding runs inside the extend pass that first reaches an image, for
all such images of the pass at once, and the features stay with the request until the prefill
has passed them, so a chunked prefill that splits an image encodes it once.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any, Optional

import torch
from torch import nn

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.model_executor.forward_batch import ForwardBatch
from sglang.srt.models.clip import ClipVisionConfig, ClipVisionTower, activation
from sglang.srt.models.llama import LlamaForCausalLM
from sglang.srt.multimodal import anyres
from sglang.srt.multimodal.inputs import ImageItem

_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "image_newline")
# checkpoint prefix -> ours; both the legacy layout (language_model.model.*) and the newer one
# (model.language_model.*) are in use
_RENAMES = (
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("model.language_model.", "model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
)


def read_hf_config(path: str) -> dict[str, Any]:
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        return json.load(f)


class LlavaProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, act: str, bias: bool) -> None:
        super().__init__()
        self.act = act
        self.linear_1 = nn.Linear(in_dim, out_dim, bias=bias)
        self.linear_2 = nn.Linear(out_dim, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(activation(self.act, self.linear_1(x)))


class LlavaForConditionalGeneration(LlamaForCausalLM):
    """LLaVA-1.5: each image is one tile; its features are the tower's patches, projected."""

    def __init__(self, config: ModelConfig) -> None:
        hf = read_hf_config(config.path)
        if hf.get("text_config", {}).get("model_type") == "qwen2":
            config = dataclasses.replace(config, attention_bias=True)
        super().__init__(config)
        self.vision = ClipVisionConfig.from_dict(hf.get("vision_config") or {})
        layers = hf.get("vision_feature_layer", -2)
        self.feature_layers: list[int] = layers if isinstance(layers, list) else [layers]
        self.drop_cls = hf.get("vision_feature_select_strategy", "default") == "default"
        self.vision_tower = ClipVisionTower(self.vision)
        self.multi_modal_projector = LlavaProjector(
            self.vision.hidden_size * len(self.feature_layers),
            config.hidden_size,
            hf.get("projector_hidden_act", "gelu"),
            bool(hf.get("multimodal_projector_bias", True)),
        )

    # ---- the pass -------------------------------------------------------------------------

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        # input_ids, positions: [T] -> hidden states [T, hidden]
        embeds = None
        if forward_batch.mm_inputs is not None:
            embeds = self.embed_with_images(input_ids, forward_batch)
        return self.model(input_ids, positions, forward_batch, input_embeds=embeds)

    def embed_with_images(self, input_ids: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        """Token embeddings [T, hidden] with each image position's feature put in its place."""
        x = self.model.embed_tokens(input_ids)
        spans = _image_spans(fb)
        self._encode([im for *_, im in spans if im.features is None])
        for start, end, flat, im in spans:
            lo, hi = max(im.offset, start), min(im.end, end)  # the image's part in the chunk
            x[flat + lo - start : flat + hi - start] = im.features[lo - im.offset : hi - im.offset]
        for mm, start, length in _chunks(fb):
            if mm is not None:
                mm.drop_features_before(start + length)
        return x

    def _encode(self, images: list[ImageItem]) -> None:
        """Features of all images at once: one tower call over all their tiles."""
        if not images:
            return
        tiles = [self.tiles_of(im) for im in images]
        feats = self.image_features(torch.cat(tiles))  # [sum tiles, patches, hidden]
        for im, per_image in zip(images, feats.split([t.shape[0] for t in tiles])):
            im.features = self.pack(per_image, im)
            assert im.features.shape[0] == im.num_tokens, (
                f"image features {tuple(im.features.shape)} for {im.num_tokens} positions"
            )

    def tiles_of(self, im: ImageItem) -> torch.Tensor:
        # [3, H, W] -> [1, 3, H, W]
        return im.pixel_values.unsqueeze(0).to(self.model.embed_tokens.weight.device)

    def image_features(self, tiles: torch.Tensor) -> torch.Tensor:
        """tiles [N, 3, H, W] -> projected patch features [N, patches, hidden]."""
        states = self.vision_tower(tiles, self.feature_layers)
        feats = torch.cat(states, dim=-1)  # [N, 1 + patches, D * layers]
        if self.drop_cls:
            feats = feats[:, 1:]
        return self.multi_modal_projector(feats)

    def pack(self, feats: torch.Tensor, im: ImageItem) -> torch.Tensor:
        """One image's tile features [tiles, patches, hidden] -> [num_tokens, hidden]."""
        return feats.reshape(-1, feats.shape[-1])

    # ---- weights ----------------------------------------------------------------------------

    def load_checkpoint(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """The decoder's weights through the shared loader (fusing q/k/v), the vision parts'
        one to one by name."""
        from sglang.srt.model_loader.loader import load_weights  # the loader imports the models

        text, vision = [], []
        for name, tensor in weights:
            name = _our_name(name)
            (vision if name.startswith(_VISION_PREFIXES) else text).append((name, tensor))
        params = dict(self.named_parameters())
        is_vision = {n: n.startswith(_VISION_PREFIXES) for n in params}
        load_weights(self, text, {n: p for n, p in params.items() if not is_vision[n]})
        load_weights(self, vision, {n: p for n, p in params.items() if is_vision[n]}, packed={})


class LlavaNextForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA-NeXT: any-resolution tiling; the grid's features are cropped to the image's aspect
    ratio and each row ends in the learned `image_newline`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        hf = read_hf_config(config.path)
        self.pinpoints: list[list[int]] = hf["image_grid_pinpoints"]
        self.image_newline = nn.Parameter(torch.empty(config.hidden_size))

    def tiles_of(self, im: ImageItem) -> torch.Tensor:
        # [tiles, 3, H, W] already
        return im.pixel_values.to(self.model.embed_tokens.weight.device)

    def pack(self, feats: torch.Tensor, im: ImageItem) -> torch.Tensor:
        # feats: [tiles, side*side, hidden] -> [side*side + rows * (cols + 1), hidden]
        assert im.image_size is not None, "a LLaVA-NeXT image needs its original size"
        side = self.vision.image_size // self.vision.patch_size
        rows, cols = anyres.grid_shape(im.image_size, self.pinpoints, self.vision.image_size)
        hidden = feats.shape[-1]
        grid = feats[1:].view(rows, cols, side, side, hidden)
        grid = grid.permute(0, 2, 1, 3, 4).reshape(rows * side, cols * side, hidden)
        r, c = anyres.unpadded_shape(im.image_size, (rows * side, cols * side))
        top, left = (rows * side - r) // 2, (cols * side - c) // 2
        grid = grid[top : top + r, left : left + c]  # [r, c, hidden]
        newline = self.image_newline.to(grid.dtype).expand(r, 1, hidden)
        grid = torch.cat([grid, newline], dim=1).reshape(-1, hidden)  # [r * (c + 1), hidden]
        return torch.cat([feats[0], grid])


def _our_name(name: str) -> str:
    for old, new in _RENAMES:
        if name.startswith(old):
            name = new + name[len(old) :]
            break
    return name.replace("vision_tower.vision_model.", "vision_tower.")


def _chunks(fb: ForwardBatch) -> Iterable[tuple[Optional[Any], int, int]]:
    """(request's MultimodalInputs or None, chunk start, chunk length) per request."""
    assert fb.mm_inputs is not None
    return zip(fb.mm_inputs, fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu)


def _image_spans(fb: ForwardBatch) -> list[tuple[int, int, int, ImageItem]]:
    """(chunk start, chunk end, the chunk's first row in the pass, image) of each image that
    has positions in the pass."""
    spans, flat = [], 0
    for mm, start, length in _chunks(fb):
        if mm is not None:
            end = start + length
            spans += [(start, end, flat, im) for im in mm.overlapping(start, end)]
        flat += length
    return spans
