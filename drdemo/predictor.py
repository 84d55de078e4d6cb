"""A predictor owns one network and everything around it: preprocessing in, probabilities out.

The network never sees a PIL image and the UI never sees a tensor (the segment-anything
split): the UI hands a PIL image to `Predictor.predict` and gets plain Python values back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from drdemo.models import ICDR_GRADES, create_model, model_defaults
from drdemo.preprocess import to_model_input

if TYPE_CHECKING:
    from drdemo.hub import LoadedModel


@dataclass(frozen=True)
class Prediction:
    """One model's answer for one image."""

    probabilities: dict[str, float]  # class name -> probability, in class order
    grade: int                       # index of the most probable class
    grade_name: str
    seconds: float                   # preprocessing + forward


class Predictor:
    """Preprocess an image the way `model` expects, run it, and return class probabilities."""

    def __init__(self, model: torch.nn.Module, *, name: str, input_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], class_names: tuple[str, ...], trained: bool,
                 interpolation: str = "bicubic", crop_fov: bool = True, synthetic_training_data: bool = False):
        self.model = model.eval()
        self.name = name
        self.input_size = input_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.class_names = tuple(class_names)
        self.trained = trained
        self.interpolation = interpolation
        self.crop_fov = crop_fov
        self.synthetic_training_data = synthetic_training_data

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> Predictor:
        """From a checkpoint: every preprocessing fact comes from its config.json."""
        config = loaded.config
        return cls(loaded.model, name=config.architecture, input_size=config.input_size, mean=config.mean,
                   std=config.std, class_names=config.class_names, trained=config.trained,
                   interpolation=config.preprocessing["interpolation"], crop_fov=config.preprocessing["crop_fov"],
                   synthetic_training_data=config.trained_on_synthetic_data)

    @classmethod
    def untrained(cls, architecture: str, seed: int = 0) -> Predictor:
        """Freshly initialised registry model (seeded, so answers repeat). Not a trained model."""
        with torch.random.fork_rng():  # seed the weights without touching the caller's RNG
            torch.manual_seed(seed)
            model = create_model(architecture, num_classes=len(ICDR_GRADES))
        defaults = model_defaults(architecture)
        return cls(model, name=architecture,
                   input_size=defaults.input_size, mean=defaults.mean, std=defaults.std,
                   class_names=ICDR_GRADES, trained=False)

    def warm_up(self) -> None:
        """One prediction on a blank image, so the first user does not pay for kernel builds
        and first-call allocations."""
        self.predict(Image.new("RGB", (self.input_size, self.input_size)))

    @torch.inference_mode()
    def predict(self, image: Image.Image) -> Prediction:
        start = time.perf_counter()
        batch = to_model_input(image, self.input_size, self.mean, self.std, self.interpolation, self.crop_fov)
        probabilities = torch.softmax(self.model(batch).float(), dim=1)[0].tolist()
        grade = max(range(len(probabilities)), key=probabilities.__getitem__)
        return Prediction(probabilities=dict(zip(self.class_names, probabilities)), grade=grade,
                          grade_name=self.class_names[grade], seconds=time.perf_counter() - start)
