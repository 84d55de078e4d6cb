"""Image -> tensor transforms for training and evaluation, built on the one preprocessing path.

Evaluation is exactly what the app does (`drdemo.preprocess`): crop to the field of view,
resize, normalise. Training adds random augmentation between the resize and the
normalisation, so the model sees the same framing at train and test time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from drdemo.preprocess import fundus_mask, normalise, prepare_image


class UnevenIllumination:
    """Multiply by a random linear brightness ramp (1 - amplitude .. 1 + amplitude across the image, in a
    random direction), as a decentred flash or a small pupil light one side of the retina."""

    def __init__(self, amplitude: float):
        self.amplitude = amplitude

    def __call__(self, image: Image.Image) -> Image.Image:
        angle = float(torch.rand(()) * 2 * np.pi)
        strength = float(torch.rand(())) * self.amplitude
        height, width = image.height, image.width
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = ((xs / max(width - 1, 1) - 0.5) * np.cos(angle) + (ys / max(height - 1, 1) - 0.5) * np.sin(angle))
        gain = 1.0 + 2.0 * strength * ramp
        pixels = np.asarray(image, dtype=np.float32) * gain[..., None]
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


class KeepSurround:
    """Apply photometric `steps`, then put the black surround back: a camera's mask stays black whatever
    the exposure, while ColorJitter's contrast would lift it towards grey and let it pass for retina."""

    def __init__(self, steps: list[Callable[[Image.Image], Image.Image]]):
        self.steps = T.Compose(steps)

    def __call__(self, image: Image.Image) -> Image.Image:
        outside = ~fundus_mask(np.asarray(image, dtype=np.uint8))
        pixels = np.array(self.steps(image))
        pixels[outside] = 0
        return Image.fromarray(pixels)


@dataclass(frozen=True)
class Augmentation:
    """Random changes applied to a training image after it is cropped and resized."""

    rotation_degrees: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    blur_probability: float = 0.0
    blur_kernel: int = 3
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    illumination: float = 0.0              # amplitude of UnevenIllumination's ramp
    illumination_probability: float = 0.0
    fov_clip: float = 0.0                  # the largest black band cut off top and bottom (a sensor's short side
                                           # clipping a circular field of view), as a share of the height
    fov_clip_probability: float = 0.0

    def build(self) -> JointAugment:
        """The random transform this augmentation describes, for an image and (optionally) its lesion masks."""
        return JointAugment(self)


class JointAugment:
    """A training image and its lesion masks changed together: the same flips, affine warp and clipped
    field of view move both (masks with nearest-neighbour sampling, so drawn masks stay binary); blur, colour,
    exposure and illumination change the image alone. Randomness comes from torch's global generator,
    so the trainer's per-batch seeding makes a run repeatable."""

    def __init__(self, augmentation: Augmentation):
        self.augmentation = augmentation
        a = augmentation
        self.blur = T.GaussianBlur(a.blur_kernel, sigma=a.blur_sigma) if a.blur_probability else None
        photometric: list[Callable] = []
        if a.illumination and a.illumination_probability:
            photometric.append(T.RandomApply([UnevenIllumination(a.illumination)], p=a.illumination_probability))
        if any((a.brightness, a.contrast, a.saturation, a.hue)):
            photometric.append(T.ColorJitter(a.brightness, a.contrast, a.saturation, a.hue))
        self.photometric = KeepSurround(photometric) if photometric else None

    def __call__(self, image: Image.Image, masks: np.ndarray | None = None) -> tuple[Image.Image, np.ndarray | None]:
        """(image, masks) -> their augmented copies; `masks` is (types, H, W) over the image, bool (drawn masks)
        or uint8 (soft masks, probability x 255; drdemo.data.prepared.soft_masks) and comes back in its own
        dtype, or None."""
        a = self.augmentation
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        layers = torch.from_numpy(masks.astype(np.uint8)) if masks is not None else None
        if a.fov_clip and a.fov_clip_probability and float(torch.rand(())) < a.fov_clip_probability:
            band = int(float(torch.rand(())) * a.fov_clip * pixels.shape[1])
            if band:
                pixels[:, :band] = 0
                pixels[:, pixels.shape[1] - band:] = 0
                if layers is not None:
                    layers[:, :band] = 0
                    layers[:, layers.shape[1] - band:] = 0
        flips = [dim for dim, on in ((2, a.horizontal_flip), (1, a.vertical_flip))
                 if on and float(torch.rand(())) < 0.5]
        if flips:
            pixels = pixels.flip(flips)
            layers = layers.flip(flips) if layers is not None else None
        if a.rotation_degrees or a.scale != (1.0, 1.0) or a.translate:
            translate = (a.translate, a.translate) if a.translate else None
            angle, shift, scale, shear = T.RandomAffine.get_params(
                (-a.rotation_degrees, a.rotation_degrees), translate, a.scale, None, [pixels.shape[2], pixels.shape[1]])
            # fill 0: what rotates in from outside is the camera's black surround.
            pixels = TF.affine(pixels, angle, list(shift), scale, list(shear), T.InterpolationMode.BILINEAR, fill=0)
            if layers is not None:
                layers = TF.affine(layers, angle, list(shift), scale, list(shear), T.InterpolationMode.NEAREST, fill=0)
        result = Image.fromarray(pixels.permute(1, 2, 0).numpy())
        if self.blur is not None and float(torch.rand(())) < a.blur_probability:
            result = self.blur(result)
        if self.photometric is not None:
            result = self.photometric(result)
        return result, (layers.numpy().astype(masks.dtype) if layers is not None else None)


# Ours: fundus photos have no canonical orientation and vary in exposure and colour cast between
# cameras, so rotations and flips are free, colour changes moderate; blur is rare and mild
# because it erases microaneurysms, the only sign of grade 1.
DRDEMO_AUGMENTATION = Augmentation(rotation_degrees=180, scale=(0.92, 1.08), translate=0.03, horizontal_flip=True,
                                   vertical_flip=True, brightness=0.25, contrast=0.25, saturation=0.15, hue=0.02,
                                   blur_probability=0.15, blur_kernel=3, blur_sigma=(0.1, 0.8))
# Real photographs from one camera (IDRiD): the model must not learn that camera, so colour, exposure,
# illumination, sharpness, scale and the shape of the field of view vary more than between our
# synthetic cameras. Blur stays mild (sigma <= 1 px at the model input) for grade 1's microaneurysms.
REAL_AUGMENTATION = Augmentation(rotation_degrees=180, scale=(0.85, 1.15), translate=0.05, horizontal_flip=True,
                                 vertical_flip=True, brightness=0.3, contrast=0.3, saturation=0.25, hue=0.04,
                                 blur_probability=0.25, blur_kernel=5, blur_sigma=(0.1, 1.0),
                                 illumination=0.3, illumination_probability=0.5,
                                 fov_clip=0.12, fov_clip_probability=0.3)
# The MedMamba paper's augmentation: RandomRotation(10), GaussianBlur(5, sigma 0.1-3.0), ColorJitter(0.5, 0.5, 0.5).
PAPER_AUGMENTATION = Augmentation(rotation_degrees=10, blur_probability=1.0, blur_kernel=5, blur_sigma=(0.1, 3.0),
                                  brightness=0.5, contrast=0.5, saturation=0.5)


def eval_transform(input_size: int, mean, std, interpolation: str = "bicubic", crop_fov: bool = True,
                   local_contrast_sigma: float = 0.0,
                   colour_balance: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (3, H, W) tensor, exactly as the app feeds the model."""
    def transform(image: Image.Image) -> torch.Tensor:
        return normalise(prepare_image(image, input_size, interpolation, crop_fov), mean, std, local_contrast_sigma,
                         colour_balance)
    return transform


def train_transform(input_size: int, mean, std, augmentation: Augmentation, interpolation: str = "bicubic",
                    crop_fov: bool = True, local_contrast_sigma: float = 0.0,
                    colour_balance: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """Like `eval_transform`, with `augmentation` applied to the resized image (before colour balance and local
    contrast, which then remove part of what the colour and illumination changes did, as they do for real
    cameras)."""
    augment = augmentation.build()

    def transform(image: Image.Image) -> torch.Tensor:
        prepared, _ = augment(prepare_image(image, input_size, interpolation, crop_fov))
        return normalise(prepared, mean, std, local_contrast_sigma, colour_balance)
    return transform
