"""The images of one request as the scheduler and the model see them (no transformers here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class ImageItem:
    """One image of a prompt: its preprocessed pixels and where its positions are.

    NOTE: the prompt holds `num_tokens` positions for the image from `offset` on; their ids are
    pad ids derived from `hash` (see processors.pad_ids), so the radix cache shares them only
    between requests with the same image. The model puts the image's features there.
    """

    # LLaVA: [3, H, W]; LLaVA-NeXT: [tiles, 3, H, W]; Qwen2-VL: [patches, C * tp * p * p]
    pixel_values: torch.Tensor
    hash: int  # 64-bit digest of the pixels
    offset: int  # first prompt position of the image
    num_tokens: int
    image_size: Optional[tuple[int, int]] = None  # (height, width) before preprocessing
    # Qwen2-VL: (t, h, w) patch grid the tower reads (before the spatial merge)
    grid_thw: Optional[tuple[int, int, int]] = None
    # Filled by the model at the first pass that reaches the image; [num_tokens, hidden].
    features: Optional[torch.Tensor] = None

    @property
    def end(self) -> int:
        return self.offset + self.num_tokens


@dataclass
class MultimodalInputs:
    """The images of one request, in prompt order."""

    images: list[ImageItem] = field(default_factory=list)
    # M-RoPE models: the position offset of the tokens after the last image (see mrope.py)
    mrope_delta: Optional[int] = None

    def overlapping(self, start: int, end: int) -> list[ImageItem]:
        """The images with at least one position in [start, end)."""
        return [im for im in self.images if im.offset < end and im.end > start]

    def drop_features_before(self, position: int) -> None:
        """Forget the features of images wholly computed before `position` (memory)."""
        for im in self.images:
            if im.end <= position:
                im.features = None
