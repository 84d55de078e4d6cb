"""Logits to class probabilities, as a checkpoint's config.json says: views, temperature, biases.

Training with class weights (grade 1 has 20 of IDRiD's 330 training photos, so it weighs about
seven times a healthy eye) teaches a network priors that are not the clinic's: the IDRiD-trained
MedMamba-T called 25 of 34 healthy test eyes Mild NPDR. Vector scaling (Guo et al. 2017,
"On Calibration of Modern Neural Networks") repairs that after training: one temperature and
one bias per class, fitted on the validation part by negative log-likelihood, so probabilities
say how often a grade is right. The network itself is not changed.

A fundus photo has no canonical orientation, so a checkpoint may also average its probabilities
over the eight symmetries of the square (`test_time_views`: 1 or 8); the calibration is fitted
on, and applied to, each view's logits before the average.

numpy and scipy only: the training loop, evaluation and the app all call `class_probabilities`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

# Bias shrinkage of the fit (a penalty of SHRINKAGE x the squared biases): 83 validation photos
# with 4 of grade 1 cannot pin five free parameters; see fit_calibration.
SHRINKAGE = 0.05


def check_calibration(calibration: dict, num_classes: int) -> str | None:
    """What is wrong with a config.json `calibration` value, or None when it is valid ({} is none)."""
    if not isinstance(calibration, dict):
        return f"calibration must be an object, got {calibration!r}"
    if not calibration:
        return None
    if set(calibration) != {"temperature", "logit_bias"}:
        return f"calibration must have exactly temperature and logit_bias, got {sorted(calibration)}"
    temperature, bias = calibration["temperature"], calibration["logit_bias"]
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0.05 <= temperature <= 20:
        return f"calibration temperature must be a number in [0.05, 20], got {temperature!r}"
    if (not isinstance(bias, (list, tuple)) or len(bias) != num_classes
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and abs(b) <= 20 for b in bias)):
        return f"calibration logit_bias must be {num_classes} numbers in [-20, 20], got {bias!r}"
    return None


def _views(logits: np.ndarray) -> np.ndarray:
    """(n, V, C) float64 from (n, C) logits (one view) or (n, V, C)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 2:
        logits = logits[:, None]
    if logits.ndim != 3:
        raise ValueError(f"logits must be (n, C) or (n, views, C), got shape {logits.shape}")
    return logits


def _per_view_probabilities(logits: np.ndarray, calibration: dict | None) -> np.ndarray:
    """(n, V, C): softmax(logits / temperature + logit_bias) of each view."""
    logits = _views(logits)
    if calibration:
        logits = logits / calibration["temperature"] + np.asarray(calibration["logit_bias"], dtype=np.float64)
    return softmax(logits, axis=2)


def class_probabilities(logits: np.ndarray, calibration: dict | None = None) -> np.ndarray:
    """(n, C) float64 probabilities from (n, C) logits or (n, V, C) logits of V views of each image:
    softmax(logits / temperature + logit_bias) per view, then the mean over views."""
    return _per_view_probabilities(logits, calibration).mean(axis=1)


def view_spread(logits: np.ndarray, calibration: dict | None = None) -> np.ndarray:
    """(n, C) standard deviation over the views of each class probability (0 with one view)."""
    return _per_view_probabilities(logits, calibration).std(axis=1)


def negative_log_likelihood(probabilities: np.ndarray, targets: Sequence[int]) -> float:
    """Mean -log P(true class), the quantity the fit lowers (floored at 1e-12 so a zero is finite)."""
    targets = np.asarray(targets)
    return float(-np.log(np.maximum(probabilities[np.arange(len(targets)), targets], 1e-12)).mean())


def fit_calibration(logits: np.ndarray, targets: Sequence[int], shrinkage: float = SHRINKAGE) -> dict:
    """Temperature and per-class biases that minimise the NLL of the view-averaged probabilities on
    (logits, targets), plus `shrinkage` x the squared biases. The first class's bias is fixed at 0
    (softmax ignores a common shift). The shrinkage was chosen by 5-fold cross-validation (20
    repeats) inside the 83 IDRiD validation photos of the bundled checkpoints, eight views each:
    NLL / QWK of MedMamba-T 1.25 / 0.76 uncalibrated, 1.07 / 0.76 without shrinkage, 1.10 / 0.78
    with 0.05; of InceptionV3 1.16 / 0.78, 1.07 / 0.77 and 1.07 / 0.80."""
    logits = _views(logits)
    targets = np.asarray(targets, dtype=np.int64)
    if logits.shape[0] != targets.shape[0] or logits.shape[0] < 2:
        raise ValueError(f"need at least two images with one target each, got {logits.shape[0]} logits and "
                         f"{targets.shape[0]} targets")
    classes = logits.shape[2]

    def loss(parameters: np.ndarray) -> float:
        bias = np.concatenate([[0.0], parameters[1:]])
        scaled = logits / np.exp(parameters[0]) + bias
        # log of the mean over views of softmax, computed stably
        log_mean = np.logaddexp.reduce(log_softmax(scaled, axis=2), axis=1) - np.log(scaled.shape[1])
        return float(-log_mean[np.arange(len(targets)), targets].mean() + shrinkage * np.sum(bias ** 2))

    result = minimize(loss, np.zeros(classes), method="L-BFGS-B",
                      bounds=[(np.log(0.05), np.log(20.0))] + [(-20.0, 20.0)] * (classes - 1))
    return {"temperature": round(float(np.exp(result.x[0])), 4),
            "logit_bias": [0.0] + [round(float(b), 4) for b in result.x[1:]]}
