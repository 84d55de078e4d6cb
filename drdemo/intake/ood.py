"""The models' own opinion of a photo: how far its pooled features lie from the photos the model learned from.

The score is the Mahalanobis distance of Lee et al. (NeurIPS 2018): class-conditional Gaussians with one shared
covariance, fitted on a checkpoint's training photos, in a PCA-reduced space of the pooled penultimate features
(the classifier's input, which the grading forward already computes: `Analysis.features`). A photo's score is
its distance to the nearest class mean, divided by the square root of the number of components, so that a
training photo scores about 1 whatever the space's size.

Stored beside the weights as ood.safetensors: the feature mean, the PCA basis, the class means, the shared
precision, the threshold above which a photo is "unlike the photos this model learned from", and in its
metadata what it was fitted on and how the threshold was chosen. A checkpoint without the file is served with
the rules-based check only.

This module is handed features (whoever computes them) and imports no network; fitting a checkpoint's score, which
runs the checkpoint's model over its training photos, is `python -m drdemo.serving.ood_fit fit CHECKPOINT`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from drdemo.errors import DrdemoError
from drdemo.intake.fundus_check import FRAMED_MARGIN

OOD_NAME = "ood.safetensors"
FORMAT = "drdemo-ood/1"
DEFAULT_COMPONENTS = 32
SHRINKAGE = 0.05              # covariance shrunk this far towards its mean variance: few photos, many features
VALIDATION_QUANTILE = 0.99    # the threshold stays above this share of the validation photos ...
VALIDATION_MARGIN = 1.25      # ... by this factor, so photos of other cameras keep some room


class OodError(DrdemoError, ValueError):
    """A feature score that cannot be fitted, stored or read; the message says why."""


@dataclass(frozen=True)
class FeatureScore:
    """A fitted Mahalanobis score: pooled features (B, F) -> distances (B,)."""

    mean: np.ndarray          # (F,) feature mean of the fitting photos
    components: np.ndarray    # (F, K) PCA basis
    class_means: np.ndarray   # (C, K) per class, in the reduced space
    precision: np.ndarray     # (K, K) inverse of the shared covariance
    threshold: float          # a score above this: unlike the photos the model learned from
    fitted_on: str = ""       # what the Gaussians were fitted on
    threshold_from: str = ""  # what the threshold was chosen on

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance of each row of `features` (B, F) or one (F,) vector to the nearest class, in units where a
        training photo scores about 1."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        reduced = (features - self.mean) @ self.components
        offsets = reduced[:, None, :] - self.class_means[None]                     # (B, C, K)
        squared = np.einsum("bck,kl,bcl->bc", offsets, self.precision, offsets)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0) / self.components.shape[1])

    def in_distribution(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) <= self.threshold

    def with_threshold(self, threshold: float, threshold_from: str) -> FeatureScore:
        return FeatureScore(self.mean, self.components, self.class_means, self.precision, float(threshold),
                            self.fitted_on, threshold_from)


def fit(features: np.ndarray, labels: Sequence[int], components: int = DEFAULT_COMPONENTS,
        fitted_on: str = "") -> FeatureScore:
    """Class-conditional Gaussians with a shared covariance on `features` (N, F) with `labels` (N,), in the
    first `components` principal directions. The threshold is left at infinity: see `choose_threshold`."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise OodError(f"features must be (N, F) with one label each; got {features.shape} and {labels.shape}")
    if len(features) < 3:
        raise OodError(f"at least 3 photos are needed to fit the score, got {len(features)}")
    mean = features.mean(axis=0)
    centred = features - mean
    k = max(1, min(components, len(features) - 1, features.shape[1]))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[:k].T
    reduced = centred @ basis
    classes = np.unique(labels)
    class_means = np.stack([reduced[labels == c].mean(axis=0) for c in classes])
    within = reduced - class_means[np.searchsorted(classes, labels)]
    covariance = within.T @ within / max(len(features) - len(classes), 1)
    scale = float(np.trace(covariance)) / k or 1.0
    covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * scale * np.eye(k)
    return FeatureScore(mean=mean, components=basis, class_means=class_means,
                        precision=np.linalg.inv(covariance), threshold=float("inf"), fitted_on=fitted_on)


def choose_threshold(validation: np.ndarray, everyday: np.ndarray | None = None) -> tuple[float, str]:
    """The threshold from the scores of held-out fundus photos (`validation`) and, when given, everyday photos
    (`everyday`): VALIDATION_MARGIN above the VALIDATION_QUANTILE of the fundus photos, lowered towards the
    lowest everyday scores only while every fundus photo stays below it. Returns it and how it was chosen."""
    validation = np.asarray(validation, dtype=np.float64)
    threshold = float(np.quantile(validation, VALIDATION_QUANTILE)) * VALIDATION_MARGIN
    how = (f"{VALIDATION_MARGIN} x the {VALIDATION_QUANTILE:.0%} quantile of {len(validation)} held-out training "
           f"photos (their highest score {validation.max():.2f})")
    if everyday is not None and len(everyday):
        everyday = np.asarray(everyday, dtype=np.float64)
        floor = float(validation.max()) * 1.05
        low = float(np.quantile(everyday, 0.02))
        if floor < low < threshold:
            threshold = low
            how += f"; lowered to the 2% quantile of {len(everyday)} everyday tuning photos"
        how += (f"; {int((everyday > threshold).sum())} of {len(everyday)} everyday tuning photos above it")
    return threshold, how


# --------------------------------------------------------------------------------------------- storage

_KEYS = ("mean", "components", "class_means", "precision")


def save(score: FeatureScore, folder: str | Path) -> Path:
    """Write `folder`/ood.safetensors."""
    path = Path(folder) / OOD_NAME
    tensors = {key: torch.from_numpy(np.ascontiguousarray(getattr(score, key), dtype=np.float32)) for key in _KEYS}
    tensors["threshold"] = torch.tensor([score.threshold], dtype=torch.float32)
    save_file(tensors, path, metadata={"format": FORMAT, "fitted_on": score.fitted_on,
                                       "threshold_from": score.threshold_from, "score": "mahalanobis"})
    return path


def load_feature_score(folder: str | Path) -> FeatureScore | None:
    """The score stored in a checkpoint folder, or None where the checkpoint has none (rules only)."""
    path = Path(folder) / OOD_NAME
    if not path.is_file():
        return None
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        arrays = {key: tensors[key].double().numpy() for key in _KEYS}
        threshold = float(tensors["threshold"][0])
    except Exception as exc:   # safetensors raises its own types for a damaged file; KeyError for a foreign one
        raise OodError(f"{path} is not a readable {FORMAT} file: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise OodError(f"{path} is not a {FORMAT} file (format {metadata.get('format')!r})")
    return FeatureScore(**arrays, threshold=threshold, fitted_on=metadata.get("fitted_on", ""),
                        threshold_from=metadata.get("threshold_from", ""))


def describe(score: FeatureScore | None) -> str:
    """One line for the About tab."""
    if score is None:
        return ("Image check: rules only; this checkpoint has no stored feature score, so photos unlike the "
                "training photos are not flagged by the model itself.")
    return (f"Image check: rules plus the model's own feature score (Mahalanobis distance in "
            f"{score.components.shape[1]} principal components, fitted on {score.fitted_on}): a photo with the "
            f"camera's frame (or a crop without it that the photo classifier confirmed) above "
            f"{score.threshold * FRAMED_MARGIN:.2f}, or an unconfirmed crop above {score.threshold:.2f}, is unlike the "
            f"training photos and is graded with a warning.")
