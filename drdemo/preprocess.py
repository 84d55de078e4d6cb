"""The one image -> tensor path shared by training, evaluation and the app.

Driven by the facts of a checkpoint (input size, mean, std), never by module constants, so
a model is always fed the way it was trained.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import functional as TF


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB: EXIF orientation applied; L, P, RGBA, CMYK and 16-bit modes converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flattened = Image.new("RGB", image.size, (0, 0, 0))  # a fundus photo's surround is black
        flattened.paste(rgba, mask=rgba.getchannel("A"))
        return flattened
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # High bit depth greyscale: rescale to 8 bits rather than clip at 255.
        values = np.asarray(image, dtype=np.float32)
        peak = float(values.max()) or 1.0
        image = Image.fromarray(np.round(values / peak * 255).astype(np.uint8))
    return image.convert("RGB")


RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def to_model_input(image: Image.Image, input_size: int, mean: Sequence[float], std: Sequence[float],
                   interpolation: str = "bicubic") -> torch.Tensor:
    """(1, 3, input_size, input_size) float tensor, resized and normalised with the given statistics."""
    image = to_rgb(image).resize((input_size, input_size), RESAMPLING[interpolation])
    return TF.normalize(TF.to_tensor(image), list(mean), list(std)).unsqueeze(0)
