"""The one image -> tensor path shared by training, evaluation and the app.

Driven by the facts of a checkpoint (input size, mean, std), never by module constants, so
a model is always fed the way it was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from drdemo.intake.decode import to_rgb

if TYPE_CHECKING:
    from drdemo.checkpoint import CheckpointConfig


RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}

# The field of view is found on a copy whose longer side is at most this many pixels: fast on a
# 6000 px camera file, and precise to well under one pixel of a 224-299 px model input.
_FOV_PROBE_SIZE = 256
# A pixel belongs to the field of view when its brightest channel exceeds this share of the image's
# bright level (99th percentile): relative, so dark and washed-out photos are cropped alike, with an
# absolute floor above JPEG noise in the black surround.
_FOV_RELATIVE_THRESHOLD = 0.08
_FOV_ABSOLUTE_FLOOR = 10
_FOV_MIN_LINE_SHARE = 0.02  # a row/column needs this share of field-of-view pixels to count


def fundus_mask(pixels: np.ndarray) -> np.ndarray:
    """Boolean HxW mask of the field of view of an HxWx3 uint8 RGB array (the rule `field_of_view_box` uses)."""
    brightest = np.maximum(np.maximum(pixels[..., 0], pixels[..., 1]), pixels[..., 2])
    level = float(np.percentile(brightest, 99))
    return brightest > max(_FOV_ABSOLUTE_FLOOR, _FOV_RELATIVE_THRESHOLD * level)


def field_of_view(view: Image.Image) -> np.ndarray:
    """Boolean (H, W) mask of the retina in a model view (`prepare_image`'s output): where heat maps and
    lesion maps may show anything."""
    return fundus_mask(np.asarray(view.convert("RGB"), dtype=np.uint8))


def field_of_view_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the bright field of view, or None when nothing stands out.

    Rows and columns with almost no bright pixels are the black surround of a fundus camera;
    stray bright specks (text, JPEG noise) do not widen the box.
    """
    probe = image.copy()
    probe.thumbnail((_FOV_PROBE_SIZE, _FOV_PROBE_SIZE), Image.Resampling.BILINEAR)
    inside = fundus_mask(np.asarray(probe.convert("RGB"), dtype=np.uint8))
    rows = np.flatnonzero(inside.mean(axis=1) > _FOV_MIN_LINE_SHARE)
    cols = np.flatnonzero(inside.mean(axis=0) > _FOV_MIN_LINE_SHARE)
    if rows.size == 0 or cols.size == 0:
        return None
    scale_x, scale_y = image.width / probe.width, image.height / probe.height
    return (int(np.floor(cols[0] * scale_x)), int(np.floor(rows[0] * scale_y)),
            int(np.ceil((cols[-1] + 1) * scale_x)), int(np.ceil((rows[-1] + 1) * scale_y)))


def _fundus_geometry(image: Image.Image) -> tuple[tuple[int, int, int, int], int, tuple[int, int]]:
    """(crop box, square side, paste offset) that `crop_to_fundus` applies to `image`."""
    box = field_of_view_box(image)
    if box is None or (box[2] - box[0]) * (box[3] - box[1]) < 0.05 * image.width * image.height:
        box = (0, 0, image.width, image.height)  # nothing that looks like a field of view: keep it all
    width, height = box[2] - box[0], box[3] - box[1]
    side = max(width, height)
    return box, side, ((side - width) // 2, (side - height) // 2)


def crop_to_fundus(image: Image.Image) -> Image.Image:
    """The field of view, cropped from its black surround and padded with black to a square.

    Cameras frame the retina differently (wide black margins, a circle clipped at the top and
    bottom, or no border at all); cropping makes the retina fill the model input the same way for
    all of them. Padding rather than stretching keeps the disc and vessels round.
    """
    box, side, offset = _fundus_geometry(image)
    if box == (0, 0, image.width, image.height) and image.width == image.height:
        return image
    square = Image.new(image.mode, (side, side), 0)
    square.paste(image.crop(box), offset)
    return square


def prepare_image(image: Image.Image, input_size: int, interpolation: str = "bicubic",
                  crop_fov: bool = True) -> Image.Image:
    """Upright RGB, cropped to the field of view (when `crop_fov`), resized to input_size x input_size."""
    image = to_rgb(image)
    if crop_fov:
        image = crop_to_fundus(image)
    return image.resize((input_size, input_size), RESAMPLING[interpolation])


def prepare_mask(mask: np.ndarray, image: Image.Image, input_size: int, crop_fov: bool = True) -> np.ndarray:
    """A boolean mask drawn on `image`, moved through the same crop, pad and resize as
    `prepare_image(image, ...)`, so it lines up with the model input (and its CAM) pixel for pixel."""
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask shape {mask.shape} does not match the image ({image.height}, {image.width})")
    layer = Image.fromarray(mask.astype(np.uint8) * 255)
    image = to_rgb(image)
    if image.size != layer.size:  # EXIF rotation changed the image: masks are drawn on stored pixels
        raise ValueError("the image carries an EXIF rotation; draw masks on the upright image")
    if crop_fov:
        box, side, offset = _fundus_geometry(image)
        square = Image.new("L", (side, side), 0)
        square.paste(layer.crop(box), offset)
        layer = square
    # Area averaging keeps a lesion smaller than one output pixel as a faint value instead of dropping it.
    return np.asarray(layer.resize((input_size, input_size), Image.Resampling.BOX)) > 0


# Local contrast: the difference from the local average is amplified this much around mid-grey, and the
# rim of the field of view this many pixels deep (of the resized image) is dropped with the surround.
LOCAL_CONTRAST_GAIN = 4.0
LOCAL_CONTRAST_RIM = 2


def local_contrast(image: Image.Image, sigma_fraction: float) -> Image.Image:
    """The photo minus its local average colour, x 4 around mid-grey, inside the field of view.

    Ben Graham's preprocessing (Kaggle DR 2015): what changes between cameras and exposures is mostly
    slow (illumination, colour cast, vignetting), what marks disease is small (microaneurysms, exudates,
    haemorrhages), so subtracting a Gaussian blur of sigma `sigma_fraction` x the image side keeps the
    lesions and drops most of the camera. The average is taken over field-of-view pixels only
    (normalised convolution), so the black surround does not paint a bright ring inside the edge; the
    surround and a thin rim become mid-grey. `sigma_fraction` 0 returns the image unchanged.
    """
    if not sigma_fraction:
        return image
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    inside = fundus_mask(pixels)
    if LOCAL_CONTRAST_RIM:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * LOCAL_CONTRAST_RIM + 1,) * 2)
        inside = cv2.erode(inside.astype(np.uint8), kernel).astype(bool)
    weight = inside.astype(np.float32)
    sigma = sigma_fraction * max(image.size)
    local_sum = cv2.GaussianBlur(pixels.astype(np.float32) * weight[..., None], (0, 0), sigma)
    local_weight = cv2.GaussianBlur(weight, (0, 0), sigma)[..., None]
    average = local_sum / np.maximum(local_weight, 1e-3)
    enhanced = LOCAL_CONTRAST_GAIN * (pixels - average) + 128.0
    enhanced[~inside] = 128.0
    return Image.fromarray(np.clip(np.rint(enhanced), 0, 255).astype(np.uint8))


# The colour every photo's field of view is balanced to (mean R, G, B inside it): a typical colour
# fundus photo's, so the balanced photo still looks like one.
REFERENCE_FUNDUS_RGB = (150.0, 78.0, 27.0)


def balance_colour(image: Image.Image, target_rgb: Sequence[float] = REFERENCE_FUNDUS_RGB) -> Image.Image:
    """Each channel scaled so that its mean inside the field of view is `target_rgb`.

    A camera's white balance, the flash and the pigment of the fundus multiply each channel by a
    gain; dividing by the photo's own channel means removes any such gain, so a model fed the
    balanced photo cannot tell two photos apart by their overall colour (a shortcut IDRiD's training
    split offers: its healthy eyes were photographed bluer than its diseased ones). The surround
    stays black.
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    inside = fundus_mask(pixels.astype(np.uint8))
    if inside.sum() < 16:
        return image
    means = pixels[inside].mean(axis=0)
    gains = np.asarray(target_rgb, dtype=np.float32) / np.maximum(means, 1.0)
    balanced = pixels * gains
    balanced[~inside] = 0.0
    return Image.fromarray(np.clip(np.rint(balanced), 0, 255).astype(np.uint8))


def normalise(image: Image.Image, mean: Sequence[float], std: Sequence[float],
              local_contrast_sigma: float = 0.0, colour_balance: bool = False) -> torch.Tensor:
    """(3, H, W) float tensor: colour balance and local contrast (when asked), scaled to [0, 1], then
    normalised per channel."""
    if colour_balance:
        image = balance_colour(image)
    return TF.normalize(TF.to_tensor(local_contrast(image, local_contrast_sigma)), list(mean), list(std))


def to_model_input(image: Image.Image, input_size: int, mean: Sequence[float], std: Sequence[float],
                   interpolation: str = "bicubic", crop_fov: bool = True,
                   local_contrast_sigma: float = 0.0, colour_balance: bool = False) -> torch.Tensor:
    """(1, 3, input_size, input_size) float tensor: `prepare_image`, then `normalise`."""
    prepared = prepare_image(image, input_size, interpolation, crop_fov)
    return normalise(prepared, mean, std, local_contrast_sigma, colour_balance).unsqueeze(0)


def normalise_kwargs(config: CheckpointConfig) -> dict:
    """The keyword arguments of `normalise` that a checkpoint's config.json fixes."""
    preprocessing = config.preprocessing
    return dict(mean=config.mean, std=config.std, local_contrast_sigma=preprocessing.get("local_contrast", 0.0),
                colour_balance=preprocessing.get("colour_balance", False))


def preprocess_kwargs(config: CheckpointConfig) -> dict:
    """The keyword arguments of `to_model_input` that a checkpoint's config.json fixes."""
    preprocessing = config.preprocessing
    return dict(input_size=config.input_size, interpolation=preprocessing["interpolation"],
                crop_fov=preprocessing["crop_fov"], **normalise_kwargs(config))
