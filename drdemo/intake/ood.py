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

    python -m drdemo.intake.ood fit CHECKPOINT [--data ../shared/data/idrid/B. Disease Grading]
        [--everyday-tuning FOLDER] [--components 32]

fits on the photos of the checkpoint's training/split.json "train" part, chooses the threshold on its "val" part
(IDRiD training photos the weights never learned from) and, when given, the tuning part of the everyday-photo
corpus (benchmarks/gate_setup.py), and writes CHECKPOINT/ood.safetensors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from drdemo.errors import DrdemoError
from drdemo.intake.fundus_check import FRAMED_MARGIN

OOD_NAME = "ood.safetensors"
ROOT = Path(__file__).resolve().parents[2]   # training/split.json names its data relative to the repository
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
            f"camera's frame above {score.threshold * FRAMED_MARGIN:.2f}, or a crop without it above "
            f"{score.threshold:.2f}, is unlike the training photos and is graded with a warning.")


# --------------------------------------------------------------------------------------------- fitting

BATCH = 16


def image_features(predictor, images: Iterable[Image.Image]) -> np.ndarray:
    """(N, F) pooled features of decoded `images`: the predictor's own model view and normalisation and the
    first view of its forward, as `Predictor.analyse` computes `Analysis.features`, in batches."""
    from drdemo.models import model_defaults
    from drdemo.models.heads import pooled_features
    from drdemo.preprocess import normalise
    config, preprocessing = predictor.config, predictor.config.preprocessing
    classifier = model_defaults(config.architecture).classifier
    rows, pending = [], []

    def flush() -> None:
        if pending:
            with torch.inference_mode():
                _, features = pooled_features(predictor.model, classifier, torch.stack(pending).to(predictor.device))
            rows.append(features.float().cpu().numpy())
            pending.clear()

    for image in images:
        pending.append(normalise(predictor.model_view(image), config.mean, config.std,
                                 preprocessing["local_contrast"], preprocessing["colour_balance"]))
        if len(pending) == BATCH:
            flush()
    flush()
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def photo_features(predictor, paths: Sequence[Path], progress: bool = True) -> tuple[np.ndarray, list[Path]]:
    """(N, F) pooled features of the photos at `paths` that the gate can decode, and which those were."""
    from drdemo.intake.gate import ImageRejected, load_image
    kept: list[Path] = []

    def decoded():
        for i, path in enumerate(paths):
            if progress and i and i % 100 == 0:
                print(f"  {i} / {len(paths)}", file=sys.stderr)
            try:
                image = load_image(path)
            except ImageRejected:
                continue
            kept.append(Path(path))
            yield image

    return image_features(predictor, decoded()), kept


def _split_samples(folder: Path, data: Path | None):
    from drdemo.data.datasets import load_samples
    split_path = folder / "training" / "split.json"
    if not split_path.is_file():
        raise OodError(f"{split_path} is missing: the score is fitted on the photos the checkpoint trained on")
    split = json.loads(split_path.read_text())
    named = Path(split["data"])
    candidates = [Path(data)] if data else [named, ROOT / named]
    root = next((c for c in candidates if c.is_dir()), None)
    if root is None:
        raise OodError(f"the training photos are not at {candidates[0]}; pass --data")
    samples = {s.image_id: s for s in load_samples(root, split.get("layout"), split.get("part"))}
    parts = {name: [samples[i] for i in ids if i in samples] for name, ids in split["parts"].items()}
    return root, parts


def fit_checkpoint(folder: str | Path, data: str | Path | None = None, everyday_tuning: str | Path | None = None,
                   components: int = DEFAULT_COMPONENTS) -> FeatureScore:
    """Fit the score on a checkpoint's training photos, choose its threshold, store it beside the weights."""
    from drdemo.checkpoint import load_model
    from drdemo.predictor import Predictor
    folder = Path(folder)
    predictor = Predictor.from_loaded(load_model(folder, device="cpu"))
    root, parts = _split_samples(folder, Path(data) if data else None)
    train, val = parts.get("train", []), parts.get("val", [])
    if not train or not val:
        raise OodError(f"{folder}/training/split.json needs a 'train' and a 'val' part of photos under {root}")
    print(f"features of {len(train)} training photos", file=sys.stderr)
    features, kept = photo_features(predictor, [s.path for s in train])
    grades = {s.path: s.grade for s in train}
    score = fit(features, [grades[p] for p in kept], components,
                fitted_on=f"{len(train)} photos of the 'train' part of training/split.json ({root.name})")
    print(f"features of {len(val)} validation photos", file=sys.stderr)
    validation = score.score(photo_features(predictor, [s.path for s in val])[0])
    everyday = None
    if everyday_tuning:
        paths = sorted(p for p in Path(everyday_tuning).rglob("*") if p.is_file())
        print(f"features of {len(paths)} everyday tuning photos", file=sys.stderr)
        everyday = score.score(photo_features(predictor, paths)[0])
    threshold, how = choose_threshold(validation, everyday)
    score = score.with_threshold(threshold, how)
    save(score, folder)
    return score


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drdemo.intake.ood", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit_parser = commands.add_parser("fit", help="fit the feature score of a checkpoint folder and store it there")
    fit_parser.add_argument("checkpoint", type=Path)
    fit_parser.add_argument("--data", type=Path, default=None,
                            help="the training photos' folder (default: the one training/split.json names)")
    fit_parser.add_argument("--everyday-tuning", type=Path, default=None,
                            help="the tuning part of the everyday-photo corpus (python -m benchmarks.gate_setup)")
    fit_parser.add_argument("--components", type=int, default=DEFAULT_COMPONENTS)
    args = parser.parse_args(argv)
    try:
        score = fit_checkpoint(args.checkpoint, args.data, args.everyday_tuning, args.components)
    except DrdemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.checkpoint / OOD_NAME}: threshold {score.threshold:.3f} ({score.threshold_from})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
