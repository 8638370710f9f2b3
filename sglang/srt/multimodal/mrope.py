"""M-RoPE positions (Qwen2-VL, Qwen2.5-VL): three position components (t, h, w) per token.

A text token's three components are equal. An image of merged grid (t, h, w) (the patch grid
divided by the spatial merge size in h and w) takes t*h*w prompt positions, laid out t-major
then row-major; the token at index i of the image gets (i // (h*w), i // w % h, i % w) plus the
image's base, the text position where the image starts. Text after the image continues from
base + max(h, w), so each image moves the text positions that follow it by
max(h, w) - t*h*w (the image's "shift"; <= 0). A request's M-RoPE delta is the sum of its
images' shifts: a token past every image has position (1-D position + delta) in all three.
Pure arithmetic on a request's ImageItems: shared by the HTTP process and the model.
"""

from __future__ import annotations

from typing import Sequence

import torch

from sglang.srt.multimodal.inputs import ImageItem


def merged_grid(im: ImageItem, merge: int) -> tuple[int, int, int]:
    """(t, h, w) of an image's positions: its patch grid with h and w divided by merge."""
    assert im.grid_thw is not None, "an M-RoPE image needs its patch grid"
    t, h, w = im.grid_thw
    return t, h // merge, w // merge


def image_shift(im: ImageItem, merge: int) -> int:
    """How far the text after the image moves from its 1-D positions (<= 0)."""
    _, h, w = merged_grid(im, merge)
    return max(h, w) - im.num_tokens


def mrope_delta(images: Sequence[ImageItem], merge: int) -> int:
    """The position offset of every token after the last image: 3-D = 1-D + delta."""
    return sum(image_shift(im, merge) for im in images)


def mrope_positions(
    images: Sequence[ImageItem], positions: torch.Tensor, merge: int
) -> torch.Tensor:
    """positions [L] int64 (1-D prompt positions of one request, any subset) -> [3, L] int64.

    images: the request's images in prompt order (their offset, num_tokens and grid_thw)."""
    out = positions.unsqueeze(0).repeat(3, 1)  # [3, L]
    shift = 0
    for im in images:
        t, h, w = merged_grid(im, merge)
        inside = (positions >= im.offset) & (positions < im.end)  # [L] bool
        if bool(inside.any()):
            i = positions[inside] - im.offset  # [n] index within the image
            grid = torch.stack([i // (h * w), i // w % h, i % w])  # [3, n]
            out[:, inside] = grid + (im.offset + shift)
        step = image_shift(im, merge)
        out[:, positions >= im.end] += step
        shift += step
    return out
