"""Preprocessing: orientation, modes and normalisation."""

import numpy as np
import torch
from PIL import Image

from drdemo.preprocess import to_model_input, to_rgb


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


def test_16_bit_greyscale_is_rescaled_not_clipped():
    values = np.full((70, 70), 4000, dtype=np.uint16)
    values[0, 0] = 8000
    rgb = np.asarray(to_rgb(Image.fromarray(values)))
    assert rgb[1, 1, 0] == 128 and rgb[0, 0, 0] == 255


def test_normalisation_uses_the_given_statistics():
    image = Image.new("RGB", (300, 200), (255, 0, 128))
    batch = to_model_input(image, 64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert batch.shape == (1, 3, 64, 64)
    expected = torch.tensor([(1 - 0.5) / 0.25, (0 - 0.5) / 0.5, (128 / 255 - 0.5) / 1.0])
    assert torch.allclose(batch[0, :, 32, 32], expected, atol=1e-5)
