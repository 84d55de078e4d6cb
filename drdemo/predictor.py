"""A predictor owns one network and everything around it: preprocessing in, answers out.

The network never sees a PIL image and the UI never sees a tensor (the segment-anything
split): the UI hands a PIL image to `Predictor.predict` or `Predictor.analyse` and gets plain
Python values, numpy maps and PIL images back. Every preprocessing fact comes from the
checkpoint's config.json (`Predictor.config`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from drdemo.calibration import class_probabilities, view_spread
from drdemo.checkpoint import CheckpointConfig
from drdemo.cam.explain import Explainer
from drdemo.inference import SYMMETRIES, view_logits
from drdemo.metrics import task_probabilities
from drdemo.models import create_model, model_defaults
from drdemo.preprocess import normalise, prepare_image
from drdemo.tasks import ICDR_GRADES

if TYPE_CHECKING:
    from drdemo.checkpoint import LoadedModel

@dataclass(frozen=True)
class Prediction:
    """One model's answer for one image."""

    probabilities: dict[str, float]  # class name -> probability, in class order
    grade: int                       # index of the most probable class
    grade_name: str
    seconds: float                   # preprocessing + forward (+ backward for a CAM)
    referable_probability: float | None = None   # P(grade >= 2), where the task defines it
    referable: bool | None = None                  # referable_probability >= the threshold used


@dataclass(frozen=True)
class Analysis:
    """A prediction with what the app shows around it."""

    prediction: Prediction
    model_view: Image.Image                  # the photo as the model received it (cropped, resized), before
                                             # any local contrast, so a clinician sees the photo itself
    heatmap: np.ndarray | None = None        # (H, W) in [0, 1] over model_view, when a CAM was asked for
    cam_method: str | None = None
    cam_target: int | None = None            # the class the map explains
    spread: dict[str, float] | None = None   # over several views: class name -> std of its probability
    views: int = 1                           # symmetric views the probabilities are the mean of


class Predictor:
    """Preprocess an image the way the checkpoint says, run the model, return probabilities (and a CAM)."""

    def __init__(self, model: torch.nn.Module, config: CheckpointConfig):
        self.model = model.eval().requires_grad_(False)  # served, never trained: a CAM's backward skips weights
        self.model.to(memory_format=model_defaults(config.architecture).memory_format)
        self.config = config
        self.explainer = Explainer.for_checkpoint(self.model, config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def name(self) -> str:
        return self.config.architecture

    @property
    def trained(self) -> bool:
        return self.config.trained

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> Predictor:
        return cls(loaded.model, loaded.config)

    @classmethod
    def untrained(cls, architecture: str, seed: int = 0) -> Predictor:
        """Freshly initialised registry model (seeded, so answers repeat). Not a trained model."""
        with torch.random.fork_rng():  # seed the weights without touching the caller's RNG
            torch.manual_seed(seed)
            model = create_model(architecture, num_classes=len(ICDR_GRADES))
        return cls(model, CheckpointConfig.for_architecture(architecture, provenance={"trained": False}))

    def warm_up(self) -> None:
        """One analysis with a CAM on a blank image, so the first user does not pay for kernel
        builds and first-call allocations."""
        self.analyse(Image.new("RGB", (self.input_size, self.input_size)), cam_method=self.config.cam_method)

    def model_view(self, image: Image.Image) -> Image.Image:
        """`image` cropped and resized exactly as the model receives it."""
        preprocessing = self.config.preprocessing
        return prepare_image(image, self.input_size, preprocessing["interpolation"], preprocessing["crop_fov"])

    def predict(self, image: Image.Image, referable_threshold: float | None = None) -> Prediction:
        return self.analyse(image, referable_threshold=referable_threshold).prediction

    def analyse(self, image: Image.Image, cam_method: str | None = None, cam_target: int | None = None,
                tta: bool = False, referable_threshold: float | None = None) -> Analysis:
        """Probabilities for `image` over the checkpoint's `test_time_views` (all eight symmetric views
        with `tta`, which also reports their spread), calibrated as config.json says; with
        `cam_method`, the CAM of the most probable class (or `cam_target`). With one view the CAM
        comes from the same forward pass (plus one backward)."""
        start = time.perf_counter()
        view = self.model_view(image)
        batch = normalise(view, self.config.mean, self.config.std,
                          self.config.preprocessing["local_contrast"]).unsqueeze(0).to(self.device)
        views = len(SYMMETRIES) if tta else self.config.test_time_views
        heatmap = target = spread = None
        if views == 1 and cam_method is not None:
            explanation = self.explainer.explain(batch, method=cam_method, target=cam_target)
            probabilities, heatmap, target = explanation.probabilities, explanation.heatmap, explanation.target
        else:
            logits = view_logits(self.model, batch, views)
            probabilities = class_probabilities(logits, self.config.calibration)[0]
            if views > 1:
                spread = dict(zip(self.class_names, view_spread(logits, self.config.calibration)[0].tolist()))
            if cam_method is not None:
                target = int(probabilities.argmax()) if cam_target is None else cam_target
                explanation = self.explainer.explain(batch, method=cam_method, target=target)
                heatmap = explanation.heatmap
        prediction = self._prediction(probabilities, time.perf_counter() - start, referable_threshold)
        return Analysis(prediction=prediction, model_view=view, heatmap=heatmap, cam_method=cam_method,
                        cam_target=target, spread=spread, views=views)

    def _prediction(self, probabilities: np.ndarray, seconds: float, threshold: float | None) -> Prediction:
        threshold = self.config.referable_threshold if threshold is None else threshold
        grade = int(np.argmax(probabilities))
        referable = task_probabilities(probabilities[None], self.config.task).get("referable")
        referable_probability = None if referable is None else float(referable[0])
        return Prediction(probabilities=dict(zip(self.class_names, map(float, probabilities))), grade=grade,
                          grade_name=self.class_names[grade], seconds=seconds,
                          referable_probability=referable_probability,
                          referable=None if referable_probability is None else referable_probability >= threshold)

