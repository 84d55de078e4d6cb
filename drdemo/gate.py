"""The image gate: every upload is decoded here, safely, before anything else sees it.

Checks the pixel count from the header before decoding (so a decompression bomb is refused
without allocating it), decodes fully (so truncated files fail here, not in a model), and
turns every failure into an `ImageRejected` whose message says what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from drdemo.preprocess import to_rgb

MAX_PIXELS = 50_000_000   # a 6000 x 8000 camera file still fits
MAX_BYTES = 60 * 1024 * 1024
MIN_SIDE = 64


class ImageRejected(ValueError):
    """An upload that cannot be graded; the message is meant for the person who uploaded it."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode `path` into an upright RGB image, or raise ImageRejected saying why not."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageRejected(f"{name}: the file could not be read ({exc.strerror}).") from exc
    if size == 0:
        raise ImageRejected(f"{name}: the file is empty.")
    if size > MAX_BYTES:
        raise ImageRejected(f"{name}: the file is {size / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB.")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageRejected(f"{name}: {width} x {height} pixels is more than this app accepts "
                                    f"({MAX_PIXELS / 1e6:.0f} megapixels). Downscale it and upload again.")
            if min(width, height) < MIN_SIDE:
                raise ImageRejected(f"{name}: {width} x {height} pixels is too small to grade "
                                    f"(at least {MIN_SIDE} pixels a side).")
            image.load()
            return to_rgb(image)
    except UnidentifiedImageError as exc:
        raise ImageRejected(f"{name}: this is not an image file this app can read (JPEG, PNG, TIFF, BMP, WebP).") from exc
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"{name}: the image declares an implausibly large size and was refused.") from exc
    except OSError as exc:
        raise ImageRejected(f"{name}: the image data is damaged or truncated ({exc}).") from exc
