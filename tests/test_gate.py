"""The image gate refuses bad uploads with a specific message and accepts every real mode."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from drdemo.gate import MAX_PIXELS, ImageRejected, load_image


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the body is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"this is a text file, not a photo", "not an image file"),
    (_png_claiming(30000, 30000), "refused"),
    (_png_claiming(9000, 8000), "megapixels"),
])
def test_refusals_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(ImageRejected, match=message):
        load_image(path)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ImageRejected, match="damaged or truncated"):
        load_image(path)


def test_too_small(tmp_path):
    path = tmp_path / "icon.png"
    Image.new("RGB", (32, 32)).save(path)
    with pytest.raises(ImageRejected, match="too small"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageRejected, match="could not be read"):
        load_image(tmp_path / "absent.jpg")


def test_limit_is_checked_before_decoding():
    assert MAX_PIXELS >= 6000 * 8000  # a large camera file is still accepted


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "I;16"])
def test_every_common_mode_becomes_rgb(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    image = base.convert("L").convert(mode) if mode == "I;16" else base.convert(mode)
    path = tmp_path / ("photo.tif" if mode in ("CMYK", "I;16") else "photo.png")
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (160, 120)
