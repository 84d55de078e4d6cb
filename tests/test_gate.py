"""The image gate: safe decoding with specific refusals, and a fundus check that holds across camera variety.

The corpus (tests/gate_corpus.py) is made here, small: synthetic fundus photos plus realistic variants
that must pass, and pictures that are not fundus photos that must be refused.
"""

import struct
import zlib
from dataclasses import FrozenInstanceError
from pathlib import Path

import gate_corpus  # tests/ is on sys.path (conftest.py)
import numpy as np
import pytest
from PIL import Image

from drdemo import gate
from drdemo.gate import (
    FUNDUS_THRESHOLD,
    MAX_PIXELS,
    Assessment,
    GateResult,
    ImageRejected,
    assess,
    check_upload,
    load_image,
)

# --------------------------------------------------------------------------------------------- decoding


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A tiny PNG whose header claims width x height (the body is a few rows at most, never allocated here)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    row = b"\0" + b"\0" * (width * bit_depth // 8)
    body = zlib.compress(row * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _write(tmp_path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, content, messages", [
    ("upload.png", b"", ["empty"]),
    ("upload.png", b"this is a text file, not a photo", ["not an image file", "JPEG, PNG"]),
    ("scan.jpg", b"%PDF-1.7\n%binary", ["PDF document"]),
    ("bomb.png", _png_claiming(20000, 20000, bit_depth=1), ["400 megapixels", "decompression bomb", "refused"]),
    ("bomb.png", _png_claiming(30000, 30000), ["refused", "megapixels"]),
    ("huge.png", _png_claiming(9000, 8000), ["9000 x 8000", "72 megapixels", "50 megapixels"]),
    ("icon.png", gate_corpus.encoded(Image.new("RGB", (32, 40))), ["32 x 40", "too small", "64 pixels"]),
])
def test_refusals_say_what_is_wrong(tmp_path, name, content, messages):
    path = _write(tmp_path, name, content)
    with pytest.raises(ImageRejected) as refused:
        load_image(path)
    for message in messages:
        assert message in str(refused.value)
    assert str(refused.value).startswith(name)


def test_pils_own_bomb_check_stays_on():
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS > MAX_PIXELS >= 6000 * 8000


def test_truncated_jpeg(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8))
    path = _write(tmp_path, "cut.jpg", gate_corpus.encoded(image, "JPEG", quality=95)[:5000])
    with pytest.raises(ImageRejected, match="damaged or truncated"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageRejected, match="could not be read"):
        load_image(tmp_path / "absent.jpg")


def test_too_large_in_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(gate, "MAX_BYTES", 1024 * 1024)
    path = _write(tmp_path, "camera.jpg", b"\xff\xd8" + bytes(3 * 1024 * 1024))
    with pytest.raises(ImageRejected, match=r"the file is 3 MB; the limit is 1 MB"):
        load_image(path)


def test_exif_orientation_is_applied(tmp_path):
    # Displayed upright: red top half, blue bottom half, 80 wide x 120 high. Stored rotated by 90 degrees
    # with orientation 6 ("rotate 90 clockwise to display"), as a phone does.
    upright = Image.new("RGB", (80, 120), (220, 30, 30))
    upright.paste((30, 30, 220), (0, 60, 80, 120))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _write(tmp_path, "phone.jpg", gate_corpus.encoded(stored, "JPEG", quality=95, exif=exif.tobytes()))
    loaded = load_image(path)
    assert loaded.size == (80, 120) and loaded.info["original_size"] == (80, 120)
    top, bottom = np.asarray(loaded)[10, 40], np.asarray(loaded)[110, 40]
    assert top[0] > 180 and top[2] < 80 and bottom[2] > 180 and bottom[0] < 80


KNOWN = (200, 80, 30)   # a fundus-like orange


def _mean_colour(image: Image.Image) -> np.ndarray:
    return np.asarray(image, np.float32).reshape(-1, 3).mean(axis=0)


def test_cmyk_jpeg_keeps_its_colour(tmp_path):
    """Pillow writes CMYK JPEGs as Photoshop does: inverted, with an Adobe APP14 marker."""
    data = gate_corpus.encoded(Image.new("RGB", (96, 96), KNOWN).convert("CMYK"), "JPEG", quality=95)
    assert b"Adobe" in data
    loaded = load_image(_write(tmp_path, "scan.jpg", data))
    assert loaded.mode == "RGB" and np.abs(_mean_colour(loaded) - KNOWN).max() < 4


def test_plain_cmyk_jpeg_without_adobe_marker_keeps_its_colour(tmp_path):
    """A CMYK JPEG without the Adobe marker stores plain (not inverted) values."""
    cmyk = Image.new("RGB", (96, 96), KNOWN).convert("CMYK")
    inverted = Image.merge("CMYK", [band.point(lambda v: 255 - v) for band in cmyk.split()])
    data = gate_corpus.encoded(inverted, "JPEG", quality=95)   # written inverted twice: plain values
    start = data.index(b"\xff\xee")
    assert data[start + 4:start + 9] == b"Adobe"
    data = data[:start] + data[start + 2 + struct.unpack(">H", data[start + 2:start + 4])[0]:]
    loaded = load_image(_write(tmp_path, "plain-cmyk.jpg", data))
    assert np.abs(_mean_colour(loaded) - KNOWN).max() < 4


def test_16_bit_png_is_scaled_not_stretched(tmp_path):
    image = Image.fromarray(np.full((80, 100), 32768, np.uint16))
    path = tmp_path / "deep.png"
    image.save(path)
    assert Image.open(path).mode.startswith("I")
    loaded = load_image(path)
    assert loaded.mode == "RGB" and np.abs(_mean_colour(loaded) - 128).max() <= 1


def _half_transparent(mode: str) -> Image.Image:
    """100 x 80, the left half fully transparent (green underneath), the right half opaque KNOWN."""
    if mode == "P":
        image = Image.new("P", (100, 80), 1)
        image.putpalette([0, 255, 0, *KNOWN] + [0] * 762)
        image.paste(0, (0, 0, 50, 80))
        image.info["transparency"] = 0
        return image
    rgba = Image.new("RGBA", (100, 80), KNOWN + (255,))
    rgba.paste((0, 255, 0, 0), (0, 0, 50, 80))
    return rgba.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_becomes_black(tmp_path, mode):
    path = tmp_path / "cutout.png"
    image = _half_transparent(mode)
    image.save(path, transparency=0) if mode == "P" else image.save(path)
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (80, 100, 3)
    assert loaded[:, :50].max() == 0 and loaded[:, 50:].mean() > 50


@pytest.mark.parametrize("mode", ["L", "P", "1", "CMYK", "I;16"])
def test_every_common_mode_becomes_rgb(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    image = base.convert("L").convert(mode) if mode == "I;16" else base.convert(mode)
    path = tmp_path / ("photo.tif" if mode in ("CMYK", "I;16") else "photo.png")
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (160, 120)
    if mode == "L":
        grey = np.asarray(loaded)
        assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_png_named_jpg_is_sniffed(tmp_path):
    path = _write(tmp_path, "photo.jpg", gate_corpus.encoded(Image.new("RGB", (90, 70), KNOWN), "PNG"))
    loaded = load_image(path)
    assert loaded.info["format"] == "PNG" and np.abs(_mean_colour(loaded) - KNOWN).max() < 1


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    image = Image.new("RGB", (3000, 2400), KNOWN)
    path = _write(tmp_path, "camera.jpg", gate_corpus.encoded(image, "JPEG", quality=80))
    loaded = load_image(path)
    assert loaded.size == (1500, 1200)   # JPEG draft: 1/2 scale, still above DECODE_TARGET
    assert loaded.info["original_size"] == (3000, 2400)
    assert np.abs(_mean_colour(loaded) - KNOWN).max() < 8   # JPEG's subsampled chroma shifts saturated colours


def test_large_png_is_reduced_before_conversion(tmp_path):
    path = _write(tmp_path, "scan.png", gate_corpus.encoded(Image.new("P", (2500, 2100), 3), "PNG"))
    loaded = load_image(path)
    assert loaded.size == (1250, 1050) and loaded.info["original_size"] == (2500, 2100)


# --------------------------------------------------------------------------------------------- fundus check


@pytest.fixture(scope="module")
def fundus_photos() -> dict[str, Image.Image]:
    return gate_corpus.fundus_cases()


@pytest.fixture(scope="module")
def other_pictures() -> dict[str, Image.Image]:
    return gate_corpus.other_cases()


@pytest.fixture(scope="module")
def fundus_assessed(fundus_photos) -> dict[str, Assessment]:
    return {name: assess(image) for name, image in fundus_photos.items()}


@pytest.fixture(scope="module")
def others_assessed(other_pictures) -> dict[str, Assessment]:
    return {name: assess(image) for name, image in other_pictures.items()}


# Quality notes that a corpus photo may (must) carry; every other fundus photo carries none.
EXPECTED_NOTES = {
    "200 px thumbnail": ["very small"],
    "strongly blurred": ["blurred"],
    "blurred (sigma 2 px)": ["blurred"],
    "blurred (sigma 3 px)": ["blurred"],
    "very dark": ["too dark"],
    "strongly washed out": ["low contrast"],
}
# Degraded so far that the colour rule may fail: the quality note must still be given.
MAY_BE_REFUSED = {"strongly washed out"}


def test_fundus_photos_pass_with_the_right_notes(fundus_assessed):
    for name, result in fundus_assessed.items():
        if name not in MAY_BE_REFUSED:
            assert result.is_fundus and result.fundus_score >= FUNDUS_THRESHOLD, (name, result)
        expected = EXPECTED_NOTES.get(name, [])
        assert len(result.quality) == len(expected), (name, result.quality)
        for note, word in zip(result.quality, expected):
            assert word in note and ("counts as" in note or "at least" in note), (name, note)


def test_other_pictures_are_refused(others_assessed):
    for name, result in others_assessed.items():
        assert not result.is_fundus and result.fundus_score < FUNDUS_THRESHOLD, (name, result)
        assert result.reasons[0].startswith("Does not look like a colour fundus photo"), name
        assert len(result.reasons) >= 2, name   # and says why


def test_face_like_oval_scores_well_below_fundus_photos(fundus_assessed, others_assessed):
    weakest_fundus = min(a.fundus_score for name, a in fundus_assessed.items() if name not in MAY_BE_REFUSED)
    face = others_assessed["face-like oval"]
    assert face.fundus_score <= weakest_fundus - 0.4
    assert any("surround" in reason for reason in face.reasons)


def test_tricky_lookalikes_that_the_rules_do_refuse():
    tricky = gate_corpus.tricky_cases()
    for name in ("face-like oval on black", "sunset gradient"):
        assert not assess(tricky[name]).is_fundus, name


@pytest.mark.parametrize("layout, kind", [("circle", "circular"), ("clipped", "clipped circle"),
                                          ("rect", "no border")])
def test_field_of_view_kinds(layout, kind):
    assert assess(gate_corpus._with_layout(layout)).field_of_view == kind


def test_reasons_name_the_failed_rule(others_assessed):
    assert "uniform" in " ".join(others_assessed["mid-grey frame"].reasons)
    assert "no colour" in " ".join(others_assessed["text document"].reasons)
    assert others_assessed["black frame"].field_of_view == "none"
    noise = " ".join(others_assessed["colour noise"].reasons)
    assert "not the red-orange of a retina" in noise


def test_assessment_is_frozen_and_complete(fundus_assessed):
    result = fundus_assessed["synthetic grade 0, 320 px"]
    assert isinstance(result, Assessment) and 0 <= result.fundus_score <= 1
    assert result.original_size == (320, 320) and result.field_of_view in ("circular", "clipped circle", "no border")
    assert {name for name, _ in result.rules} == {"colour", "shape", "surround", "texture"}
    with pytest.raises(FrozenInstanceError):
        result.is_fundus = False


# --------------------------------------------------------------------------------------------- check_upload


def test_check_upload_accepts_a_camera_file_and_records_its_size(tmp_path, fundus_photos):
    big = fundus_photos["synthetic circle"].resize((3000, 3000), Image.Resampling.BILINEAR)
    path = _write(tmp_path, "camera.jpg", gate_corpus.encoded(big, "JPEG", quality=85))
    result = check_upload(path)
    assert isinstance(result, GateResult) and result.assessment.is_fundus
    assert result.assessment.original_size == (3000, 3000) and result.image.size == (1500, 1500)
    assert result.notes == () and "3000 x 3000 pixels" in result.message and "No quality problems" in result.message


def test_check_upload_refuses_or_warns(tmp_path, other_pictures):
    path = _write(tmp_path, "holiday.jpg", gate_corpus.encoded(other_pictures["outdoor photo"], "JPEG"))
    with pytest.raises(ImageRejected, match="holiday.jpg: this does not look like a fundus photo .*No red-orange"):
        check_upload(path)
    warned = check_upload(path, strict=False)
    assert not warned.assessment.is_fundus and warned.notes[0].startswith("Warning: this does not look like")


def test_check_upload_passes_quality_notes_to_the_page(tmp_path, fundus_photos):
    path = _write(tmp_path, "dim.png", gate_corpus.encoded(fundus_photos["very dark"]))
    result = check_upload(path)
    assert result.assessment.is_fundus and any("too dark" in note for note in result.notes)
    assert "too dark" in result.message
