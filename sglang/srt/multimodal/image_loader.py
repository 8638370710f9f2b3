"""Reading the images a request names: data URIs, base64, http(s) URLs, allowed local paths.

Runs in the HTTP process, off the event loop. Local files are read only under the folders
given by --allowed-local-media-path (none by default: a request cannot make the server read
its files); URLs are fetched with a timeout and a size limit.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.error
import urllib.request
from typing import Any, Sequence

from PIL import Image

MAX_IMAGE_BYTES = 32 << 20
MAX_IMAGE_PIXELS = 64 << 20
URL_TIMEOUT_S = 10.0


def load_image(source: Any, allowed_dirs: Sequence[str] = ()) -> Image.Image:
    """An RGB PIL image from one entry of image_data; ValueError naming what is wrong."""
    if not isinstance(source, str) or not source:
        raise ValueError(f"image_data entries must be non-empty strings, got {_short(source)}")
    if source.startswith("data:"):
        return decode_image(_data_uri_bytes(source), "data URI")
    if source.startswith(("http://", "https://")):
        return decode_image(fetch_url(source), source)
    if source.startswith("file://") or _looks_like_path(source):
        return decode_image(read_local(source.removeprefix("file://"), allowed_dirs), source)
    return decode_image(_b64(source, "image_data entry"), "base64 data")


def decode_image(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ValueError(
                f"image {_short(what)} has {image.width}x{image.height} pixels: too many"
            )
        return image.convert("RGB")
    except (OSError, Image.DecompressionBombError, SyntaxError) as e:
        raise ValueError(f"image {_short(what)} is not a readable image: {e}") from None


def fetch_url(url: str, timeout_s: float = URL_TIMEOUT_S) -> bytes:
    """The body of a URL, at most MAX_IMAGE_BYTES; ValueError if it cannot be fetched."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (http(s) only)
            data = resp.read(MAX_IMAGE_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ValueError(f"image URL {_short(url)} could not be fetched: {e}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"image URL {_short(url)}: more than {MAX_IMAGE_BYTES} bytes")
    return data


def read_local(path: str, allowed_dirs: Sequence[str]) -> bytes:
    """A local file's bytes, if it lies under one of allowed_dirs (symlinks resolved)."""
    real = os.path.realpath(path)
    roots = [os.path.realpath(d) for d in allowed_dirs]
    if not any(os.path.commonpath([real, root]) == root for root in roots):
        raise ValueError(
            f"image path {_short(path)} is not readable: local files are read only under "
            "--allowed-local-media-path folders"
        )
    if not os.path.isfile(real):
        raise ValueError(f"image path {_short(path)}: no such file")
    if os.path.getsize(real) > MAX_IMAGE_BYTES:
        raise ValueError(f"image path {_short(path)}: more than {MAX_IMAGE_BYTES} bytes")
    with open(real, "rb") as f:
        return f.read()


def _data_uri_bytes(uri: str) -> bytes:
    head, sep, payload = uri.partition(",")
    if not sep or not head.endswith(";base64"):
        raise ValueError(f"image data URI must be base64 (data:<type>;base64,...): {_short(uri)}")
    return _b64(payload, "image data URI")


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"{what} {_short(text)} is neither a URL, a data URI, an allowed path nor base64"
        ) from None


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.sep in source and "." in source[-6:]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
