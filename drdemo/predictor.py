"""A predictor owns one network and everything around it: preprocessing in, answers out.

The network never sees a PIL image and the UI never sees a tensor (the segment-anything
split): the UI hands a PIL image to `Predictor.predict` or `Predictor.analyse` and gets plain
Python values, numpy maps and PIL images back. Every preprocessing fact comes from the
checkpoint's config.json (`Predictor.config`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from drdemo.calibration import class_probabilities, view_spread
from drdemo.cam.explain import Explainer, on_field_of_view
from drdemo.cam.lesion_maps import upsample_lesion_maps
from drdemo.checkpoint import CheckpointConfig
from drdemo.inference import SYMMETRIES, view_outputs
from drdemo.metrics import task_probabilities
from drdemo.models import create_model, model_defaults
from drdemo.preprocess import field_of_view, normalise, prepare_image
from drdemo.tasks import ICDR_GRADES, REFERABLE_DME_RISK, decided_dme_risks, named_class

# Why a photo is referred: moderate or worse retinopathy, referable macular oedema (DME risk 2), or both.
REFERRAL_REASONS = ("retinopathy", "macular oedema")

if TYPE_CHECKING:
    from drdemo.checkpoint import LoadedModel

@dataclass(frozen=True)
class Prediction:
    """One model's answer for one image."""

    probabilities: dict[str, float]  # class name -> probability, in class order
    grade: int                       # index of the class named: the most probable one on the referral's side
                                     # of the threshold (drdemo.tasks.decided_classes)
    grade_name: str
    seconds: float                   # preprocessing + forward (+ backward for a CAM)
    referable_probability: float | None = None   # P(grade >= 2), where the task defines it
    referable: bool | None = None                  # referable_probability >= the threshold used
    # Three-head models only (empty / None otherwise): the DME risk and the combined referral.
    dme_probabilities: dict[str, float] = field(default_factory=dict)  # DME risk name -> probability
    dme_referable_probability: float | None = None  # P(DME risk 2)
    dme_referable: bool | None = None               # dme_referable_probability >= the checkpoint's dme_threshold
    dme_risk: int | None = None                     # the risk named, agreeing with dme_referable (decided_dme_risks)
    referral_reasons: tuple[str, ...] = ()          # of REFERRAL_REASONS, in that order: why the photo is referred

    @property
    def dme_risk_name(self) -> str | None:
        """The name of the DME risk named (`dme_risk`), None for a model without a DME head."""
        return None if self.dme_risk is None else list(self.dme_probabilities)[self.dme_risk]

    @property
    def referred(self) -> bool | None:
        """The referral decision: for retinopathy or (three-head models) macular oedema; None where the task
        cannot tell referable disease."""
        if self.referable is None:
            return None
        return bool(self.referral_reasons) if self.dme_referable is not None else self.referable


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
    lesion_maps: dict[str, np.ndarray] | None = None  # lesion type -> (H, W) probability over model_view
                                                      # (three-head models), zero outside the field of view
    features: np.ndarray | None = None       # (F,) pooled features of the first view, the classifier's input


@dataclass(frozen=True)
class PreparedPhoto:
    """A photo as one predictor's model receives it (`Predictor.prepare`), so that the preprocessing can run while
    something else looks at the same photo (the app's image check does, on the other core)."""

    view: Image.Image          # cropped and resized (Analysis.model_view)
    batch: torch.Tensor        # (1, 3, H, W) on the CPU: the view normalised as the checkpoint says
    inside: np.ndarray         # (H, W) bool: the view's field of view
    made_for: tuple            # the preprocessing facts it followed (Predictor._preparation)
    seconds: float             # what preparing it took


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

    @functools.cached_property
    def lesion_cell_px(self) -> float | None:
        """The side of one lesion-map cell in pixels of the model input (None without a lesion head): what the map
        can resolve, measured once on a blank input, since it depends on the layers the decoder reads."""
        if not self.config.heads:
            return None
        blank = torch.zeros(1, 3, self.input_size, self.input_size, device=self.device)
        with torch.inference_mode():
            lesion_logits = self.model(blank.contiguous(
                memory_format=model_defaults(self.config.architecture).memory_format)).lesion_logits
        return self.input_size / lesion_logits.shape[-1]

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

    def prepare(self, image: Image.Image) -> PreparedPhoto:
        """`image` cropped, resized and normalised for this model: the first step of `analyse`, on its own."""
        start = time.perf_counter()
        view = self.model_view(image)
        batch = self._model_input([view], device="cpu")   # may run on any thread; analyse moves it to the model
        return PreparedPhoto(view, batch, field_of_view(view), self._preparation, time.perf_counter() - start)

    @property
    def _preparation(self) -> tuple:
        preprocessing = self.config.preprocessing
        return (self.input_size, tuple(self.config.mean), tuple(self.config.std),
                tuple(sorted((k, str(v)) for k, v in preprocessing.items())))

    def analyse(self, image: Image.Image | PreparedPhoto, cam_method: str | None = None,
                cam_target: int | None = None, tta: bool = False,
                referable_threshold: float | None = None) -> Analysis:
        """Probabilities for `image` (a photo, or this predictor's `prepare` of one) over the checkpoint's
        `test_time_views` (all eight symmetric views with `tta`, which also reports their spread), calibrated as
        config.json says; with `cam_method`, the CAM of the most probable class (or `cam_target`). With one view
        the CAM comes from the same forward pass (plus one backward)."""
        start = time.perf_counter()
        prepared = image if isinstance(image, PreparedPhoto) else self.prepare(image)
        if prepared.made_for != self._preparation:
            raise ValueError("this photo was prepared for a model with other preprocessing; prepare it with "
                             "this predictor")
        if prepared is image:
            start -= prepared.seconds   # the preparation counts, wherever it ran
        view, batch = prepared.view, prepared.batch.to(self.device)
        views = len(SYMMETRIES) if tta else self.config.test_time_views
        heatmap = target = spread = heads = None
        if views == 1 and cam_method is not None:
            explanation = self.explainer.explain(batch, method=cam_method, target=cam_target,
                                                 referable_threshold=referable_threshold)
            probabilities, heatmap, target = explanation.probabilities, explanation.heatmap, explanation.target
            heads, features = explanation.heads, explanation.features
        else:
            outputs = view_outputs(self.model, batch, views, self._classifier)
            logits, features = outputs["logits"], outputs["features"][0]
            heads = outputs if self.config.heads else None
            probabilities = class_probabilities(logits, self.config.calibration)[0]
            if views > 1:
                spread = dict(zip(self.class_names, view_spread(logits, self.config.calibration)[0].tolist()))
            if cam_method is not None:
                target = (named_class(probabilities, self.config.task, self._threshold(referable_threshold))
                          if cam_target is None else cam_target)
                explanation = self.explainer.explain(batch, method=cam_method, target=target)
                heatmap = explanation.heatmap
        inside = prepared.inside
        if heatmap is not None:
            heatmap = on_field_of_view(heatmap, inside)
        lesion_maps = dme = None
        if heads is not None:
            dme = class_probabilities(heads["dme_logits"], None)[0]
            lesion_maps = upsample_lesion_maps(heads["lesion_probabilities"][0], self.config.heads["lesion_types"],
                                               inside)
        prediction = self._prediction(probabilities, time.perf_counter() - start, referable_threshold, dme)
        return Analysis(prediction=prediction, model_view=view, heatmap=heatmap, cam_method=cam_method,
                        cam_target=target, spread=spread, views=views, lesion_maps=lesion_maps,
                        features=None if features is None else np.asarray(features, dtype=np.float32))

    def predict_batch(self, images: Sequence[Image.Image], referable_threshold: float | None = None
                      ) -> list[Analysis]:
        """Each image's prediction and pooled features from one forward pass over the stacked batch, over the
        checkpoint's `test_time_views`: what `analyse` returns without a heat map, spread or lesion maps, for
        grading many photos at once (screening). `Prediction.seconds` is the batch's time per image."""
        if not images:
            return []
        start = time.perf_counter()
        shown = [self.model_view(image) for image in images]
        outputs = view_outputs(self.model, self._model_input(shown), self.config.test_time_views, self._classifier)
        probabilities = class_probabilities(outputs["logits"], self.config.calibration)
        dme = class_probabilities(outputs["dme_logits"], None) if self.config.heads else [None] * len(images)
        seconds = (time.perf_counter() - start) / len(images)
        features = outputs.get("features")
        return [Analysis(prediction=self._prediction(p, seconds, referable_threshold, d), model_view=view,
                         views=self.config.test_time_views,
                         features=None if features is None else np.asarray(features[i], dtype=np.float32))
                for i, (p, d, view) in enumerate(zip(probabilities, dme, shown))]

    def _model_input(self, views: Sequence[Image.Image], device: torch.device | str | None = None) -> torch.Tensor:
        """Model views normalised as the checkpoint says, stacked on `device` (default: the model's)."""
        preprocessing = self.config.preprocessing
        return torch.stack([normalise(view, self.config.mean, self.config.std, preprocessing["local_contrast"],
                                      preprocessing["colour_balance"]) for view in views]).to(device or self.device)

    @property
    def _classifier(self) -> str:
        return model_defaults(self.config.architecture).classifier

    def _threshold(self, referable_threshold: float | None) -> float:
        """The referral threshold of a call: the caller's, else the checkpoint's."""
        return self.config.referable_threshold if referable_threshold is None else referable_threshold

    def _prediction(self, probabilities: np.ndarray, seconds: float, threshold: float | None,
                    dme: np.ndarray | None = None) -> Prediction:
        threshold = self._threshold(threshold)
        grade = named_class(probabilities, self.config.task, threshold)
        referable = task_probabilities(probabilities[None], self.config.task).get("referable")
        referable_probability = None if referable is None else float(referable[0])
        is_referable = None if referable_probability is None else referable_probability >= threshold
        extra: dict = {}
        if dme is not None:
            dme_probability = float(dme[REFERABLE_DME_RISK])
            dme_risk = int(decided_dme_risks(dme[None], self.config.dme_threshold)[0])
            dme_referable = dme_risk == REFERABLE_DME_RISK
            reasons = tuple(reason for reason, on in zip(REFERRAL_REASONS, (bool(is_referable), dme_referable)) if on)
            extra = dict(dme_probabilities=dict(zip(self.config.heads["dme_classes"], map(float, dme))),
                         dme_referable_probability=dme_probability, dme_referable=dme_referable, dme_risk=dme_risk,
                         referral_reasons=reasons)
        return Prediction(probabilities=dict(zip(self.class_names, map(float, probabilities))), grade=grade,
                          grade_name=self.class_names[grade], seconds=seconds,
                          referable_probability=referable_probability, referable=is_referable, **extra)

