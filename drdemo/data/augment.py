"""Image -> tensor transforms for training and evaluation, built on the one preprocessing path.

Evaluation is exactly what the app does (`drdemo.preprocess`): crop to the field of view,
resize, normalise. Training adds random augmentation between the resize and the
normalisation, so the model sees the same framing at train and test time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms as T

from drdemo.preprocess import normalise, prepare_image


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

    def build(self) -> Callable[[Image.Image], Image.Image]:
        steps: list[Callable] = []
        if self.horizontal_flip:
            steps.append(T.RandomHorizontalFlip())
        if self.vertical_flip:
            steps.append(T.RandomVerticalFlip())
        if self.rotation_degrees or self.scale != (1.0, 1.0) or self.translate:
            # fill 0: what rotates in from outside is the camera's black surround.
            translate = (self.translate, self.translate) if self.translate else None
            steps.append(T.RandomAffine(self.rotation_degrees, translate=translate,
                                        scale=self.scale, interpolation=T.InterpolationMode.BILINEAR, fill=0))
        if self.blur_probability:
            blur = T.GaussianBlur(self.blur_kernel, sigma=self.blur_sigma)
            steps.append(blur if self.blur_probability >= 1 else T.RandomApply([blur], p=self.blur_probability))
        if any((self.brightness, self.contrast, self.saturation, self.hue)):
            steps.append(T.ColorJitter(self.brightness, self.contrast, self.saturation, self.hue))
        return T.Compose(steps)


# Ours: fundus photos have no canonical orientation and vary in exposure and colour cast between
# cameras, so rotations and flips are free, colour changes moderate; blur is rare and mild
# because it erases microaneurysms, the only sign of grade 1.
DRDEMO_AUGMENTATION = Augmentation(rotation_degrees=180, scale=(0.92, 1.08), translate=0.03, horizontal_flip=True,
                                   vertical_flip=True, brightness=0.25, contrast=0.25, saturation=0.15, hue=0.02,
                                   blur_probability=0.15, blur_kernel=3, blur_sigma=(0.1, 0.8))
# Seed 000's MedMamba recipe: RandomRotation(10), GaussianBlur(5, sigma 0.1-3.0), ColorJitter(0.5, 0.5, 0.5).
PAPER_AUGMENTATION = Augmentation(rotation_degrees=10, blur_probability=1.0, blur_kernel=5, blur_sigma=(0.1, 3.0),
                                  brightness=0.5, contrast=0.5, saturation=0.5)


def eval_transform(input_size: int, mean, std, interpolation: str = "bicubic",
                   crop_fov: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (3, H, W) tensor, exactly as the app feeds the model."""
    def transform(image: Image.Image) -> torch.Tensor:
        return normalise(prepare_image(image, input_size, interpolation, crop_fov), mean, std)
    return transform


def train_transform(input_size: int, mean, std, augmentation: Augmentation, interpolation: str = "bicubic",
                    crop_fov: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """Like `eval_transform`, with `augmentation` applied to the resized image."""
    augment = augmentation.build()

    def transform(image: Image.Image) -> torch.Tensor:
        return normalise(augment(prepare_image(image, input_size, interpolation, crop_fov)), mean, std)
    return transform
