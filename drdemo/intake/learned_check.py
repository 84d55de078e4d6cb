"""The learned check: does a picture look like a colour fundus photo or like an everyday photo, judged from what an
ImageNet network sees in it; and what that does to the rules' outcome.

The rules (drdemo.intake.fundus_check) read a fundus camera's frame, vessels and colours. Without the frame (a crop
that fills the picture) they have only colour and dark lines to go on, and a cup, a cat's fur or a dim room can pass
them. This check looks at the whole picture instead: pooled features of EfficientNet-Lite0 with its ImageNet
weights (drdemo.models.efficientnet_lite, run by drdemo.serving.photo_check and handed in here: this layer imports
no network), and a logistic regression on them, stored in checkpoints/fundus_check/classifier.safetensors with what
it was fitted on (`python -m benchmarks.gate_fit`). It is independent of the grading checkpoints.

The network sees `network_view(image)`: the whole picture squashed to 224 x 224, so a fundus camera's frame, or its
absence, is part of what it sees. `judge(assessment, likelihood, classifier)` then decides, after the rules:

* refused by the rules: stays refused (the network need not run);
* a crop without a border, or a picture the rules doubt (a cue that does not hold: "may not be a colour fundus
  photo", red-free): graded only when the likelihood is at least `accept_doubtful` (confident it is a fundus photo),
  otherwise refused;
* a picture the rules vouch for (frame, vessels and colour all hold): refused only when the likelihood is below
  `refuse_below` (confident it is an everyday photo).

Without a likelihood (the network's weights are not installed), a crop without a border or a doubted picture is
refused: nothing confirms it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from drdemo.errors import DrdemoError
from drdemo.intake import measures
from drdemo.intake.fundus_check import CUE_HOLDS, Assessment

ROOT = Path(__file__).resolve().parents[2]
CLASSIFIER_PATH = ROOT / "checkpoints" / "fundus_check" / "classifier.safetensors"
FORMAT = "drdemo-fundus-check/1"
VIEW_SIZE = measures.VIEW_SIZE
LIKELIHOOD = "fundus_likelihood"   # the measurement's name in Assessment.measurements

NO_CHECK = ("This does not look enough like a fundus photo to grade: {what}, and the photo classifier that would "
            "confirm a fundus photo is not installed. Upload the full photo, with the camera's round border.")
DOUBTED = ("This does not look enough like a fundus photo to grade: {what}, and the photo classifier gives it a "
           "fundus likelihood of {p:.2f} (at least {needed:.2f} is needed).")
EVERYDAY = ("This does not look like a fundus photo: the photo classifier finds it much more like an everyday "
            "photo (fundus likelihood {p:.3f}; below {below:.3f} counts as an everyday photo).")
ASK_FULL_PHOTO = " Upload the full photo, with the camera's round border."


class LearnedCheckError(DrdemoError, ValueError):
    """A classifier file that cannot be read or written; the message says why."""


def network_view(image: Image.Image | np.ndarray) -> np.ndarray:
    """(224, 224, 3) uint8: the whole picture, squashed to the network's input, from the fundus check's own 512 px
    reduction (as `assess` stores it in Assessment.view, so a 12 MP upload is not reduced twice)."""
    return measures.square_view(measures.probe(image, measures.DETAIL_SIZE), VIEW_SIZE)


@dataclass(frozen=True)
class FundusClassifier:
    """A logistic regression on standardised pooled features: features (B, F) -> P(fundus photo) (B,)."""

    mean: np.ndarray          # (F,) of the fitting photos' features
    scale: np.ndarray         # (F,) their standard deviations
    weights: np.ndarray       # (F,) on the standardised features
    bias: float
    accept_doubtful: float    # a crop without a border, or a doubted picture, is graded at or above this
    refuse_below: float       # a picture the rules vouch for is refused below this
    backbone: str = ""        # which network's features, with its input
    fitted_on: str = ""       # what the regression was fitted on
    threshold_from: str = ""  # how the two thresholds were chosen

    def likelihood(self, features: np.ndarray) -> np.ndarray:
        """P(fundus photo) of each row of `features` (B, F), or of one (F,) vector as a (1,) array."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if features.shape[1] != self.mean.shape[0]:
            raise LearnedCheckError(f"the classifier reads {self.mean.shape[0]} features, got {features.shape[1]}")
        logits = ((features - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))


_ARRAYS = ("mean", "scale", "weights")


def save_classifier(classifier: FundusClassifier, path: str | Path = CLASSIFIER_PATH) -> Path:
    """Write the classifier as safetensors (float32 arrays; thresholds and provenance in the metadata)."""
    from safetensors.numpy import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: np.ascontiguousarray(getattr(classifier, key), dtype=np.float32) for key in _ARRAYS}
    tensors["bias"] = np.array([classifier.bias], np.float32)
    metadata = {"format": FORMAT, "accept_doubtful": repr(float(classifier.accept_doubtful)),
                "refuse_below": repr(float(classifier.refuse_below)), "backbone": classifier.backbone,
                "fitted_on": classifier.fitted_on, "threshold_from": classifier.threshold_from}
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_classifier(path: str | Path = CLASSIFIER_PATH) -> FundusClassifier:
    """The classifier stored at `path`; LearnedCheckError when it is missing or not one."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise LearnedCheckError(f"the photo classifier is missing: {path}")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            arrays = {key: handle.get_tensor(key).astype(np.float64) for key in (*_ARRAYS, "bias")}
        if metadata.get("format") != FORMAT:
            raise LearnedCheckError(f"{path} is not a {FORMAT} file (format {metadata.get('format')!r})")
        return FundusClassifier(mean=arrays["mean"], scale=arrays["scale"], weights=arrays["weights"],
                                bias=float(arrays["bias"][0]), accept_doubtful=float(metadata["accept_doubtful"]),
                                refuse_below=float(metadata["refuse_below"]), backbone=metadata.get("backbone", ""),
                                fitted_on=metadata.get("fitted_on", ""),
                                threshold_from=metadata.get("threshold_from", ""))
    except LearnedCheckError:
        raise
    except Exception as exc:   # safetensors raises its own types for a damaged file; KeyError for a foreign one
        raise LearnedCheckError(f"{path} is not a readable {FORMAT} file: {exc}") from exc


def doubted(assessment: Assessment) -> bool:
    """A crop without a border, or a picture one of whose cues does not hold (the rules' "may not be a colour fundus
    photo", red-free): the learned check must be confident before it is graded."""
    return assessment.field_of_view == "no border" or any(v < CUE_HOLDS for v in assessment.cues.values())


def _doubt(assessment: Assessment) -> str:
    """What makes the rules doubt a picture, in words for the refusal."""
    if assessment.field_of_view == "no border":
        return "it is a crop without the camera's border"
    if "red-free" in assessment.reason:
        return "it looks like a red-free or greyscale photo"
    return "the rules are not sure of it (" + assessment.reason.rstrip(".").split(": ", 1)[-1].split(". ")[0] + ")"


def judge(assessment: Assessment, likelihood: float | None, classifier: FundusClassifier | None) -> Assessment:
    """The rules' assessment with the learned check's likelihood that the picture is a fundus photo (None: no
    classifier to ask) added, by the module's policy; a refusal says why and keeps the values measured."""
    if assessment.outcome == "refused" or LIKELIHOOD in assessment.measurements:
        return assessment
    is_doubted = doubted(assessment)
    ask_full = ASK_FULL_PHOTO if assessment.field_of_view == "no border" else ""
    if likelihood is None or classifier is None:
        if not is_doubted:
            return assessment
        reason = NO_CHECK.format(what=_doubt(assessment))
        return replace(assessment, outcome="refused", reason=reason, warnings=(), quality=(),
                       details=assessment.details.rstrip(".") + "; photo classifier: not installed.")
    p = float(likelihood)
    measurements = {**assessment.measurements, LIKELIHOOD: round(p, 4)}
    needed = classifier.accept_doubtful if is_doubted else classifier.refuse_below
    details = (assessment.details.rstrip(".") + f"; photo classifier: fundus likelihood {p:.3f} (a picture the rules "
               f"vouch for is refused below {classifier.refuse_below:.3f}, a crop without a border or a doubted one "
               f"needs {classifier.accept_doubtful:.2f}).")
    if p < classifier.refuse_below:
        reason = EVERYDAY.format(p=p, below=classifier.refuse_below) + ask_full
    elif p < needed:
        reason = DOUBTED.format(what=_doubt(assessment), p=p, needed=needed) + ask_full
    else:
        return replace(assessment, measurements=measurements, details=details)
    return replace(assessment, outcome="refused", reason=reason, warnings=(), quality=(), measurements=measurements,
                   details=details)


def describe(classifier: FundusClassifier | None) -> str:
    """One line for the About tab."""
    if classifier is None:
        return ("Photo classifier: not installed, so a crop without the camera's border, or a picture the rules "
                "doubt, is refused.")
    return (f"Photo classifier ({classifier.backbone}; fitted on {classifier.fitted_on}): a picture is refused as an "
            f"everyday photo below a fundus likelihood of {classifier.refuse_below:.3f}, and a crop without the "
            f"camera's border, or a picture the rules doubt, is graded only from {classifier.accept_doubtful:.2f}.")


def provenance(classifier: FundusClassifier) -> dict:
    """What the classifier is, as JSON-ready values (for a benchmark's report)."""
    return json.loads(json.dumps({"backbone": classifier.backbone, "fitted_on": classifier.fitted_on,
                                  "threshold_from": classifier.threshold_from,
                                  "accept_doubtful": classifier.accept_doubtful,
                                  "refuse_below": classifier.refuse_below}))
