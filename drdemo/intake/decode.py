"""The one decoder: every image a model sees becomes upright 8-bit RGB here, the same way.

An upload (through drdemo.intake.gate, which adds the app's limits), a training or evaluation photo
(through drdemo.data), a batch member and a PIL image handed to the preprocessing all pass
through `decode_opened` / `to_rgb`, so training and serving see the same pixels for every
encoding. The rules:

* EXIF orientation is applied; transparency is flattened onto black (a fundus photo's surround).
* A CMYK JPEG without Adobe's APP14 marker stores plain values; Pillow assumes Adobe's inverted
  convention for every CMYK JPEG, so those are inverted back.
* Samples deeper than 8 bits (16-bit greyscale and colour PNG/TIFF, 32-bit integer, float) are
  scaled by the bit depth that holds the image's peak: 8, 10, 12, 14 or 16 bits. 12-bit camera
  data stored in 16-bit files (peak 4095) fills the range, a dark 16-bit photo stays dark, and
  nothing is stretched to its own peak. Pillow keeps only the high byte of 16-bit colour, so those
  files are re-read at full depth with OpenCV.
* Files longer than DECODE_ABOVE px are decoded at a reduced scale (JPEG's own 1/2, 1/4, 1/8
  decode, otherwise whole-factor box reduction), never below DECODE_TARGET: the models see
  224-299 px and the fundus check 512 px.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageChops, ImageOps

DECODE_ABOVE = 2048
DECODE_TARGET = 1024
BIT_DEPTHS = (8, 10, 12, 14, 16)
_HIGH_BIT_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def to_8_bit(values: np.ndarray) -> np.ndarray:
    """uint8 from integer samples deeper than 8 bits, scaled by the smallest of BIT_DEPTHS that
    holds the peak (so neither clipped at 255 nor stretched to the image's own peak)."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0, None)
    return np.round(values * (255.0 / _full_scale(values))).astype(np.uint8)


def _full_scale(values: np.ndarray) -> float:
    peak = float(values.max()) if values.size else 0.0
    return next((2.0 ** bits - 1 for bits in BIT_DEPTHS if peak <= 2 ** bits - 1), peak)


def to_rgb(image: Image.Image, fmt: str | None = None) -> Image.Image:
    """Upright 8-bit RGB of a decoded PIL image, by the module's rules; `fmt` is the file's format
    (Image.format), which decides how CMYK is read."""
    fmt = fmt or image.format
    if image.mode == "CMYK" and fmt in ("JPEG", "MPO") and "adobe" not in image.info:
        image = _with_exif(image, ImageChops.invert(image))
    if image.mode in _HIGH_BIT_GREY:
        image = _with_exif(image, Image.fromarray(_grey_to_8_bit(image)))
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flattened = Image.new("RGB", image.size, (0, 0, 0))
        flattened.paste(rgba, mask=rgba.getchannel("A"))
        return flattened
    return image if image.mode == "RGB" else image.convert("RGB")   # exif_transpose has already copied it


def decode_opened(image: Image.Image, path: str | Path) -> Image.Image:
    """Upright 8-bit RGB of a file Pillow has opened (header read, pixels not yet) from `path`:
    large files at a reduced scale, 16-bit colour at its full depth; info["stored_size"] is the
    file's own (W, H). Damaged data raises Pillow's error types (OpenCV's as OSError); the callers
    turn them into their own messages."""
    fmt = image.format
    width, height = image.size
    if _is_deep_colour(image, Path(path)):
        rgb = _decode_deep_colour(image, Path(path))
    else:
        if fmt in ("JPEG", "MPO") and max(width, height) > DECODE_ABOVE:
            scale = DECODE_TARGET / max(width, height)
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        image.load()
        rgb = to_rgb(_reduce(image), fmt)
    rgb.info["stored_size"] = (width, height)  # before any reduction or EXIF rotation, as masks are drawn
    return rgb


def read_image(path: str | Path) -> Image.Image:
    """`decode_opened` of a file, for the data loaders (the gate adds the app's limits first)."""
    with Image.open(path) as image:
        return decode_opened(image, path)


def _reduction(size: tuple[int, int]) -> int:
    factor = max(size) // DECODE_TARGET
    return factor if max(size) > DECODE_ABOVE and factor >= 2 else 1


def _reduce(image: Image.Image) -> Image.Image:
    """A copy at least DECODE_TARGET px on the longer side, by whole-factor box reduction."""
    factor = _reduction(image.size)
    if factor == 1:
        return image
    if image.mode in ("P", "1", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    reduced = image.reduce(factor)
    reduced.info = dict(image.info)
    return reduced


def _grey_to_8_bit(image: Image.Image) -> np.ndarray:
    values = np.asarray(image)
    if image.mode == "F":  # floating point: 0..1 when it fits there, else integer-valued samples
        values = np.nan_to_num(values.astype(np.float64))
        if values.size and values.max() <= 1:
            return np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)
        values = np.round(values)
    return to_8_bit(values)


def _with_exif(source: Image.Image, target: Image.Image) -> Image.Image:
    """`target` carrying `source`'s EXIF, so the orientation is still applied after a conversion."""
    exif = source.getexif()
    if exif:
        target.info["exif"] = exif.tobytes()
    return target


def _is_deep_colour(image: Image.Image, path: Path) -> bool:
    """16-bit RGB or RGBA, which Pillow reads as 8-bit by keeping only the high byte. Read from the
    file's header (PNG) or tags (TIFF), which stay valid after Pillow has loaded the pixels."""
    if image.mode not in ("RGB", "RGBA"):
        return False
    if image.format == "PNG":
        with open(path, "rb") as handle:
            header = handle.read(26)
        return len(header) == 26 and header[12:16] == b"IHDR" and header[24] == 16
    if image.format == "TIFF":
        bits = getattr(image, "tag_v2", {}).get(258, ())
        return isinstance(bits, tuple) and bool(bits) and all(b == 16 for b in bits)
    return False


def _decode_deep_colour(image: Image.Image, path: Path) -> Image.Image:
    try:
        pixels = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)  # BGR(A), no EXIF rotation
    except cv2.error as exc:  # callers handle Pillow's error types; OpenCV's joins them as OSError
        raise OSError(f"cannot decode the {image.mode} 16-bit data: {exc}") from exc
    if pixels is None or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise OSError(f"cannot decode the {image.mode} 16-bit data")
    factor = _reduction((pixels.shape[1], pixels.shape[0]))
    if factor > 1:
        size = (pixels.shape[1] // factor, pixels.shape[0] // factor)
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    colour = pixels[..., 2::-1].astype(np.float64)
    if pixels.shape[2] == 4:  # flattened onto black, as to_rgb does
        alpha = pixels[..., 3:4].astype(np.float64)
        colour = np.round(colour * (alpha / _full_scale(alpha)))
    eight = to_8_bit(colour) if pixels.dtype == np.uint16 else colour.astype(np.uint8)
    return ImageOps.exif_transpose(_with_exif(image, Image.fromarray(eight)))
