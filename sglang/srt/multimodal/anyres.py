"""LLaVA-NeXT's any-resolution geometry: the tile grid an image gets and its token count.

An image is resized into the best of `grid_pinpoints` (sizes (height, width) in pixels), cut
into tiles of the tower's input size, and a base tile of the whole image goes first. After the
tower, the grid's features are cropped back to the image's aspect ratio and each row ends in a
learned newline vector. Pure arithmetic: shared by the HTTP process and the model.
"""

from __future__ import annotations

from typing import Sequence


def best_resolution(size: tuple[int, int], pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The (height, width) of pinpoints that keeps most of an image of `size` (height, width),
    wasting least; the first such one on ties."""
    height, width = size
    best, best_key = None, None
    for ph, pw in pinpoints:
        scale = min(pw / width, ph / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        key = (kept, -(ph * pw - kept))
        if best_key is None or key > best_key:
            best, best_key = (int(ph), int(pw)), key
    assert best is not None, "grid_pinpoints is empty"
    return best


def grid_shape(
    size: tuple[int, int], pinpoints: Sequence[Sequence[int]], tile: int
) -> tuple[int, int]:
    """(rows, columns) of tiles of side `tile` for an image of `size` (height, width)."""
    height, width = best_resolution(size, pinpoints)
    return height // tile, width // tile


def unpadded_shape(size: tuple[int, int], padded: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of a feature map of shape `padded` once the padding around an image of
    aspect `size` (height, width) is cropped off (evenly from both sides)."""
    height, width = size
    rows, cols = padded
    if width / height > cols / rows:
        new_rows = int(round(height * (cols / width), 7))
        return rows - 2 * ((rows - new_rows) // 2), cols
    new_cols = int(round(width * (rows / height), 7))
    return rows, cols - 2 * ((cols - new_cols) // 2)


def num_tiles(size: tuple[int, int], pinpoints: Sequence[Sequence[int]], tile: int) -> int:
    """Tiles the processor makes for an image: the grid plus the base tile."""
    rows, cols = grid_shape(size, pinpoints, tile)
    return rows * cols + 1


def num_image_tokens(
    size: tuple[int, int], pinpoints: Sequence[Sequence[int]], tile: int, side: int
) -> int:
    """Image positions of one image: the base tile's side*side features, then the cropped grid
    with a newline after each row. `side`: features per tile edge (tile // patch size)."""
    rows, cols = grid_shape(size, pinpoints, tile)
    r, c = unpadded_shape(size, (rows * side, cols * side))
    return side * side + r * (c + 1)
