"""One decoder: the same file gives the same pixels to the app's gate and to the data loaders, for
every encoding, and deep samples are scaled by their bit depth (not clipped, not stretched)."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from drdemo.checkpoint import CheckpointConfig
from drdemo.data import open_image
from drdemo.data.synthetic import generate_fundus
from drdemo.intake.decode import DECODE_ABOVE, read_image, to_8_bit, to_rgb
from drdemo.intake.gate import load_image
from drdemo.preprocess import prepare_image, preprocess_kwargs


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.info["exif"] = exif.tobytes()
    image.getexif()[0x0112] = 6
    assert to_rgb(image).size == (100, 200)


def test_transparent_pixels_become_black():
    rgba = Image.new("RGBA", (80, 80), (255, 255, 255, 0))
    assert to_rgb(rgba).getpixel((10, 10)) == (0, 0, 0)


def test_an_rgb_file_is_copied_once_and_outlives_its_file(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(generate_fundus(3, 1, 256).image).save(path, quality=95)
    with Image.open(path) as opened:
        opened.load()
        decoded = to_rgb(opened)
        assert decoded is not opened and decoded.mode == "RGB"
        pixels = np.asarray(opened).copy()
    assert np.array_equal(np.asarray(decoded), pixels)   # still readable after the file is closed


def test_deep_samples_are_scaled_by_their_bit_depth():
    # 12-bit data in a 16-bit container (peak 4095) fills the range instead of reaching the model black
    twelve = np.full((70, 70), 2048, dtype=np.uint16)
    twelve[0, 0] = 4095
    rgb = np.asarray(to_rgb(Image.fromarray(twelve)))
    assert rgb[1, 1, 0] == 128 and rgb[0, 0, 0] == 255
    # a dark photo of 16-bit range stays dark: half scale is half, not stretched to its own peak
    sixteen = np.full((70, 70), 32768, dtype=np.uint16)
    sixteen[0, 0] = 40000
    rgb = np.asarray(to_rgb(Image.fromarray(sixteen)))
    assert rgb[1, 1, 0] == 128 and rgb[0, 0, 0] == 156
    assert to_8_bit(np.array([0, 255, 1023])).tolist() == [0, 64, 255]       # 10-bit
    assert to_8_bit(np.array([0, 200])).tolist() == [0, 200]                 # 8-bit values stay as they are


def _colour_16(peak: int) -> np.ndarray:
    """(60, 80, 3) uint16 RGB: a gradient up to `peak` in red, half of it in green, a tenth in blue."""
    ramp = np.linspace(0, peak, 80).round().astype(np.uint16)[None, :].repeat(60, 0)
    return np.stack([ramp, ramp // 2, ramp // 10], axis=2)


@pytest.mark.parametrize("extension", [".png", ".tif"])
@pytest.mark.parametrize("peak", [4095, 65535])
def test_16_bit_colour_keeps_its_depth(tmp_path, extension, peak):
    path = tmp_path / f"deep{extension}"
    assert cv2.imwrite(str(path), _colour_16(peak)[..., ::-1])
    assert Image.open(path).mode == "RGB"          # Pillow alone would keep only the high byte (max 15)
    rgb = np.asarray(read_image(path))
    expected = np.round(_colour_16(peak) * (255.0 / peak)).astype(np.uint8)
    assert rgb.dtype == np.uint8 and np.array_equal(rgb, expected)


def _exif_rotated_jpeg(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92, exif=exif.tobytes())
    return out.getvalue()


def _encodings(photo: Image.Image) -> dict[str, bytes]:
    """The same fundus photo in every encoding a user or a data set may bring."""
    def saved(image: Image.Image, fmt: str, **kwargs) -> bytes:
        out = io.BytesIO()
        image.save(out, fmt, **kwargs)
        return out.getvalue()

    pixels = np.asarray(photo)
    grey16 = (pixels.mean(axis=2) * 16).astype(np.uint16)                       # 12-bit data
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray(((pixels.sum(axis=2) > 30) * 255).astype(np.uint8)))
    colour16 = {ext: cv2.imencode(ext, (pixels.astype(np.uint16) * 16)[..., ::-1])[1].tobytes()
                for ext in (".png", ".tif")}
    big = photo.resize((DECODE_ABOVE + 400, DECODE_ABOVE + 400))
    return {
        "rgb.jpg": saved(photo, "JPEG", quality=90),
        "rgb.png": saved(photo, "PNG"),
        "exif-rotated.jpg": _exif_rotated_jpeg(photo),
        "cmyk-adobe.jpg": saved(photo.convert("CMYK"), "JPEG", quality=95),
        "cmyk.tif": saved(photo.convert("CMYK"), "TIFF"),
        "palette.png": saved(photo.quantize(64), "PNG"),
        "alpha.png": saved(rgba, "PNG"),
        "grey16.png": saved(Image.fromarray(grey16), "PNG"),
        "grey16.tif": saved(Image.fromarray(grey16), "TIFF"),
        "colour16.png": colour16[".png"],
        "colour16.tif": colour16[".tif"],
        "large.jpg": saved(big, "JPEG", quality=85),
        "large.png": saved(big, "PNG"),
    }


def test_the_app_and_the_data_loaders_give_a_model_the_same_input(tmp_path):
    photo = Image.fromarray(generate_fundus(3, 2, size=320).image)
    kwargs = preprocess_kwargs(CheckpointConfig.for_architecture("medmamba_t"))
    for name, data in _encodings(photo).items():
        path = tmp_path / name
        path.write_bytes(data)
        served, trained = load_image(path), open_image(path)        # the gate (app, batch) / the data loaders
        assert served.mode == trained.mode == "RGB", name
        assert np.array_equal(np.asarray(served), np.asarray(trained)), name
        a = prepare_image(served, 224, kwargs["interpolation"], kwargs["crop_fov"])
        b = prepare_image(trained, 224, kwargs["interpolation"], kwargs["crop_fov"])
        assert a.tobytes() == b.tobytes(), name
        # and every encoding still shows the photo (upright, its colours), not a black or inverted frame
        reference = np.asarray(prepare_image(photo, 224), np.float32)
        error = np.abs(np.asarray(a, np.float32) - reference).mean()
        limit = 40 if name.startswith("grey") else 12
        assert error < limit, (name, error)
