"""Fitting a checkpoint's feature score (drdemo.intake.ood): its model's pooled features of its training photos.

    python -m drdemo.serving.ood_fit fit CHECKPOINT [--data ../shared/data/idrid/B. Disease Grading]
        [--everyday-tuning FOLDER] [--components 32]

fits on the photos of the checkpoint's training/split.json "train" part, chooses the threshold on its "val" part
(IDRiD training photos the weights never learned from) and, when given, the tuning part of the everyday-photo
corpus (benchmarks/gate_setup.py), and writes CHECKPOINT/ood.safetensors. It lives in the serving layer because it
runs the checkpoint's network; drdemo.intake.ood itself is handed features and imports none.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from drdemo.checkpoint import load_model
from drdemo.data.datasets import load_samples
from drdemo.errors import DrdemoError
from drdemo.intake.gate import ImageRejected, load_image
from drdemo.intake.ood import DEFAULT_COMPONENTS, OOD_NAME, FeatureScore, OodError, choose_threshold, fit, save
from drdemo.models import model_defaults
from drdemo.models.heads import pooled_features
from drdemo.predictor import Predictor
from drdemo.preprocess import normalise

ROOT = Path(__file__).resolve().parents[2]   # training/split.json names its data relative to the repository

BATCH = 16


def image_features(predictor: Predictor, images: Iterable[Image.Image]) -> np.ndarray:
    """(N, F) pooled features of decoded `images`: the predictor's own model view and normalisation and the
    first view of its forward, as `Predictor.analyse` computes `Analysis.features`, in batches."""
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


def photo_features(predictor: Predictor, paths: Sequence[Path], progress: bool = True) -> tuple[np.ndarray, list[Path]]:
    """(N, F) pooled features of the photos at `paths` that the gate can decode, and which those were."""
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
    parser = argparse.ArgumentParser(prog="python -m drdemo.serving.ood_fit", description=__doc__.split("\n\n")[0])
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
