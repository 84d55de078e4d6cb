"""Evaluate a checkpoint on a graded data folder: metrics, per-image predictions and two plots.

    python -m drdemo.evaluate --checkpoint FOLDER_OR_REPO [--revision R] --data DIR --out OUT
        [--batch-size 16] [--workers 0] [--limit N] [--part test] [--split split.json --part val]
        [--choose-threshold 0.9] [--cam [--cam-overlap CSV --cam-photos copies|others]]

writes OUT/metrics.json (drdemo.metrics.grading_metrics, plus where the checkpoint and the data
came from and how fast it ran), OUT/predictions.csv (one row per image), OUT/confusion_matrix.png
and OUT/roc.png. Images are preprocessed exactly as the checkpoint's config.json says
(drdemo.preprocess.preprocess_kwargs), the same path the app and training use.

`evaluate(loaded, samples)` is the reusable part (its loop, drdemo.inference.loader_logits, is
training's validation loop too); the CLI adds loading, the files and the plots. `--part` names an
official part of the data set (IDRiD's train or test) or, with `--split`, a part of that split file
(a training run's training/split.json has train and val). `--cam` on a folder of lesion masks
without grades (IDRiD's segmentation set) scores the heat maps only.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
import shlex
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from drdemo.calibration import class_probabilities, fit_calibration
from drdemo.cam_evaluation import CamEvaluationError, evaluate_cams, plot_cam_grid
from drdemo.checkpoint import (
    CheckpointConfig,
    CheckpointError,
    LoadedModel,
    choose_cam_default,
    choose_referable_threshold,
    load_model,
    record_calibration,
    record_evaluation,
    record_referral_share,
)
from drdemo.data import (
    LAYOUTS,
    PARTS,
    DatasetError,
    FundusDataset,
    Sample,
    detect_layout,
    generator_info,
    load_photos,
    load_samples,
    load_split,
)
from drdemo.data.lesions import (
    LesionSample,
    detect_lesion_layout,
    grading_copies,
    load_lesion_samples,
    split_by_copies,
)
from drdemo.errors import DrdemoError
from drdemo.explain import CAM_METHODS, ExplainError
from drdemo.inference import VIEW_COUNTS, loader_logits
from drdemo.metrics import MetricsError, grading_metrics, task_probabilities
from drdemo.preprocess import preprocess_kwargs, to_model_input
from drdemo.tasks import DERIVED_MIN_GRADE, task_targets

METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.csv"
CONFUSION_NAME = "confusion_matrix.png"
ROC_NAME = "roc.png"
CAM_METRICS_NAME = "cam_metrics.json"
CAM_GRID_NAME = "cam_grid.png"
QUESTION_LABELS = {"referable": "Referable (grade \u2265 2)", "any_dr": "Any DR (grade \u2265 1)"}


class EvaluateError(DrdemoError, ValueError):
    """Arguments that cannot be evaluated (output path, split part, limit); the message says the fix."""


def _image_tensor(image: Image.Image, **kwargs) -> torch.Tensor:
    """(3, H, W): `to_model_input` without the batch dimension (a module-level function, so DataLoader
    workers can pickle it)."""
    return to_model_input(image, **kwargs)[0]


def probability_column(class_name: str) -> str:
    """CSV column of a class probability: 'Mild NPDR' -> 'prob_mild_npdr'."""
    return "prob_" + re.sub(r"[^a-z0-9]+", "_", class_name.lower()).strip("_")


def predict_probabilities(loaded: LoadedModel, samples: Sequence[Sample], batch_size: int = 16, workers: int = 0,
                          progress: bool = True) -> np.ndarray:
    """(n, C) float64 class probabilities of `samples`, in order, preprocessed, viewed and calibrated as
    the checkpoint says (drdemo.calibration)."""
    logits = predict_logits(loaded, samples, batch_size, workers, progress)
    return class_probabilities(logits, loaded.config.calibration)


def predict_logits(loaded: LoadedModel, samples: Sequence[Sample], batch_size: int = 16, workers: int = 0,
                   progress: bool = True, views: int | None = None) -> np.ndarray:
    """(n, views, C) float64 logits of `samples`, in order, preprocessed as the checkpoint says, of each
    of `views` symmetric views (default: the checkpoint's test_time_views)."""
    views = loaded.config.test_time_views if views is None else views
    if not samples:
        raise EvaluateError("no samples to evaluate")
    if batch_size < 1 or workers < 0:
        raise EvaluateError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    pin = next(loaded.model.parameters()).device.type == "cuda"
    loader = DataLoader(FundusDataset(samples, partial(_image_tensor, **preprocess_kwargs(loaded.config))),
                        batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    return loader_logits(loaded.model, loader, views, progress="evaluate" if progress else None)[0]


def evaluate(loaded: LoadedModel, samples: Sequence[Sample], batch_size: int = 16, workers: int = 0,
             progress: bool = True) -> tuple[dict, list[dict]]:
    """Run `loaded` over `samples`: (grading_metrics + seconds + images_per_second, one row per image).

    `loaded` is a drdemo.checkpoint.LoadedModel, or anything with its `.model` and `.config` (a model being
    trained); every module's train/eval mode is restored afterwards. The rows are those
    of predictions.csv: image_id, grade, target (the task's class), prob_<class> for each class,
    predicted, predicted_name, then referable_probability / any_dr_probability where the task
    defines them (drdemo.tasks.task_probabilities).
    """
    start = time.perf_counter()
    logits = predict_logits(loaded, samples, batch_size, workers, progress)
    return score(loaded.config, samples, logits, time.perf_counter() - start)


def score(config: CheckpointConfig, samples: Sequence[Sample], logits: np.ndarray,
          seconds: float) -> tuple[dict, list[dict]]:
    """`evaluate`'s metrics and rows from the logits of `samples` (n, views, C), calibrated as `config` says."""
    probabilities = class_probabilities(logits, config.calibration)
    grades = np.array([sample.grade for sample in samples])
    metrics = grading_metrics(grades, probabilities, config.task, config.class_names,
                              referable_threshold=config.referable_threshold)
    metrics["seconds"] = round(seconds, 3)
    metrics["images_per_second"] = round(len(samples) / seconds, 3) if seconds > 0 else None

    targets = task_targets(grades, config.task)
    derived = task_probabilities(probabilities, config.task)
    columns = [probability_column(name) for name in config.class_names]
    rows = []
    for i, sample in enumerate(samples):
        predicted = int(probabilities[i].argmax())
        row = {"image_id": sample.image_id, "grade": int(sample.grade), "target": int(targets[i])}
        row.update({column: float(p) for column, p in zip(columns, probabilities[i])})
        row.update(predicted=predicted, predicted_name=config.class_names[predicted])
        row.update({f"{question}_probability": float(scores[i]) for question, scores in derived.items()})
        rows.append(row)
    return metrics, rows


# ---------------------------------------------------------------------------------------------- files

def write_predictions(path: Path, rows: Sequence[dict]) -> Path:
    """predictions.csv; probabilities at full precision, so every metric can be recomputed from the file."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_confusion_matrix(metrics: dict, path: Path, title: str) -> Path:
    """Counts in each cell, colour = share of the true class (rows sum to 1), class names on the axes."""
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas for files

    counts = np.array(metrics["confusion_matrix"])
    support = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    names = metrics["class_names"]
    fig = Figure(figsize=(0.9 * len(names) + 3.0, 0.75 * len(names) + 2.4), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), [f"{name} ({n})" for name, n in zip(names, support[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (images)")
    ax.set_title(f"{title}\naccuracy {metrics['accuracy']:.3f}, QWK {metrics['qwk']:.3f}, n = {metrics['n']}",
                 fontsize=10)
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.savefig(path, dpi=120)
    return path


def plot_roc(metrics: dict, rows: Sequence[dict], path: Path, title: str) -> Path:
    """ROC of each screening question the task defines, AUC in the legend, the operating point marked."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(5.6, 5.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    undefined = []
    grades = np.array([row["grade"] for row in rows])
    for question, label in QUESTION_LABELS.items():
        column = f"{question}_probability"
        if column not in rows[0]:
            continue
        if metrics.get(f"{question}_auc") is None:
            undefined.append(label)
            continue
        truth = grades >= DERIVED_MIN_GRADE[question]
        fpr, tpr, _ = roc_curve(truth, np.array([row[column] for row in rows]))
        line, = ax.plot(fpr, tpr, linewidth=2,
                        label=f"{label}: AUC {metrics[f'{question}_auc']:.3f} "
                              f"({int(truth.sum())}/{len(rows)} positive)")
        ax.plot(1 - metrics[f"{question}_specificity"], metrics[f"{question}_sensitivity"], "o",
                color=line.get_color(), label=f"  at threshold {metrics[f'{question}_threshold']:g}")
    if undefined:
        ax.text(0.5, 0.35, "ROC undefined (one class only):\n" + "\n".join(undefined), ha="center", va="center")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m drdemo.evaluate",
                                     description="evaluate a checkpoint on a graded fundus data folder")
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or Hub repo id (ORG/NAME)")
    parser.add_argument("--revision", help="Hub branch, tag or commit (repo ids only)")
    parser.add_argument("--data", type=Path, required=True, help="data set folder (layout detected)")
    parser.add_argument("--layout", choices=LAYOUTS, help="data set layout (default: detected)")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json, predictions.csv and plots")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images (by image id)")
    parser.add_argument("--split", type=Path, help="split JSON from python -m drdemo.data.split, or a training "
                        "run's training/split.json")
    parser.add_argument("--part", help="part of --split to evaluate (default: test), or without --split the "
                        "data set's official part (IDRiD: train or test)")
    parser.add_argument("--choose-threshold", type=float, metavar="SENSITIVITY",
                        help="make the referable threshold the highest one that keeps this referable sensitivity "
                             "on these images (choose on a validation part, never the test part); local folders")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit the checkpoint's calibration (a temperature and per-class biases, by negative "
                             "log-likelihood) on these images and write it into config.json, before any "
                             "--choose-threshold (fit on a validation part, never the test part); local folders")
    parser.add_argument("--views", type=int, choices=VIEW_COUNTS,
                        help="with --calibrate: make the checkpoint average this many symmetric views of each "
                             "photo (default: keep its test_time_views)")
    parser.add_argument("--ungraded", action="store_true",
                        help="the folder's photos have no grades (DRIVE, CHASE_DB1: mostly eyes without referable "
                             "DR): report the share the model refers, at its threshold")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto)")
    parser.add_argument("--cam", action="store_true",
                        help="also score CAM methods against the lesion masks (synthetic layout): cam_metrics.json")
    parser.add_argument("--cam-methods", nargs="+", default=list(CAM_METHODS), metavar="METHOD",
                        help=f"CAM methods to score (default: all of {', '.join(CAM_METHODS)})")
    parser.add_argument("--cam-limit", type=int, default=50, help="photos with lesion masks to score CAMs on")
    parser.add_argument("--cam-overlap", type=Path, help="IDRiD's segmentation_grading_overlap.csv: with "
                        "--cam-photos, score only the segmentation photos that are (not) copies of grading "
                        "training photos")
    parser.add_argument("--cam-photos", choices=("copies", "others"),
                        help="copies: photos that are copies of grading training photos (training data anyway: "
                             "choose on them); others: the rest (report on them)")
    parser.add_argument("--road-limit", type=int, default=20,
                        help="of those, how many also get the (slow) ROAD perturbation score")
    parser.add_argument("--cam-layers", nargs="+", metavar="LAYER",
                        help="target layers to score the CAM methods at (default: the checkpoint's cam_target_layer); "
                             "join layers with '+' to average their maps, e.g. Mixed_6e+Mixed_7c")
    parser.add_argument("--record", action="store_true",
                        help="write the results (as test_* metrics, and with --cam the CAM table) into the "
                             "checkpoint folder's config.json and model card; local checkpoint folders only")
    parser.add_argument("--record-as", choices=("test", "val"), default="test",
                        help="with --record: the numbers are test_* (held-out test data, default) or val_* (the "
                             "validation part the epoch and threshold were chosen on)")
    parser.add_argument("--choose-cam-default", action="store_true",
                        help="with --cam: make the best-pointing method and layer the checkpoint's default CAM "
                             "(run it on images other than the ones --record reports); local folders only")
    return parser


def select_samples(args: argparse.Namespace) -> tuple[list[Sample], str]:
    """The samples the arguments ask for, and the data set's layout."""
    layout = args.layout or detect_layout(args.data)
    official = layout in PARTS
    if args.part is not None and args.split is None and not official:
        raise EvaluateError(f"--part needs --split (a split JSON from python -m drdemo.data.split): the {layout} "
                            "layout has no official parts")
    if official and args.split is not None and args.part is None:
        raise EvaluateError(f"--split on a {layout} folder: pass --part (a part of the split file)")
    # a split file of a data set with official parts divides its training part (as training does)
    part = ("train" if official else None) if args.split is not None else args.part
    samples = load_samples(args.data, layout, part=part)
    if args.split is not None:
        part = args.part or "test"
        parts = load_split(args.split, samples)
        if part not in parts:
            raise EvaluateError(f"{args.split} has no part {part!r} (it has {', '.join(parts)}); pass --part NAME")
        samples = parts[part]
        if not samples:
            raise EvaluateError(f"part {part!r} of {args.split} is empty; pass another --part")
    if args.limit is not None:
        samples = samples[:args.limit]
    return samples, layout


def select_lesion_samples(args: argparse.Namespace, graded: Sequence[Sample] | None) -> tuple[list[LesionSample], str]:
    """The photos with lesion masks to score CAMs on (those of `graded`, where the data is graded too),
    and a line saying which they are."""
    part = args.part if graded is None else None
    samples = load_lesion_samples(args.data, part=part)
    if graded is not None:
        wanted = {s.image_id for s in graded}
        samples = [s for s in samples if s.image_id in wanted]
    description = "photos with lesion masks"
    if args.cam_photos is not None:
        copies, others = split_by_copies(samples, grading_copies(args.cam_overlap))
        samples = copies if args.cam_photos == "copies" else others
        description = ("photos with lesion masks that are copies of grading training photos"
                       if args.cam_photos == "copies" else
                       "photos with lesion masks that are not copies of grading training photos (not training data)")
    return samples, description


def run(args: argparse.Namespace) -> dict:
    """Everything the CLI does; returns the metrics written."""
    if args.out.exists() and not args.out.is_dir():
        raise EvaluateError(f"--out {args.out} is a file; give a folder (it is created if needed)")
    if (args.cam_overlap is None) != (args.cam_photos is None):
        raise EvaluateError("--cam-overlap and --cam-photos go together: the overlap table, and which photos of it")
    if args.cam_photos is not None and not args.cam:
        raise EvaluateError("--cam-photos needs --cam")
    if args.choose_threshold is not None and not 0 < args.choose_threshold <= 1:
        raise EvaluateError(f"--choose-threshold is a sensitivity in (0, 1], got {args.choose_threshold}")
    if args.cam and (args.cam_limit < 1 or args.road_limit < 0):
        raise EvaluateError(f"--cam-limit must be >= 1 and --road-limit >= 0, got {args.cam_limit} and "
                            f"{args.road_limit}")
    if args.limit is not None and args.limit < 1:
        raise EvaluateError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1 or args.workers < 0:
        raise EvaluateError(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    if args.views is not None and not args.calibrate:
        raise EvaluateError("--views goes with --calibrate (the calibration is fitted on those views)")
    for flag, wanted in (("--record", args.record), ("--choose-cam-default", args.choose_cam_default),
                         ("--choose-threshold", args.choose_threshold is not None), ("--calibrate", args.calibrate)):
        if wanted and not Path(args.checkpoint).is_dir():
            raise EvaluateError(f"{flag} writes into a local checkpoint folder; {args.checkpoint} is not one")
    if (args.choose_cam_default or args.cam_layers) and not args.cam:
        raise EvaluateError("--choose-cam-default and --cam-layers need --cam")
    if args.cam and _lesions_only(args.data):
        return run_cams_only(args)
    if args.ungraded:
        return run_ungraded(args)
    samples, layout = select_samples(args)
    loaded = load_model(args.checkpoint, revision=args.revision, device=args.device)
    config = loaded.config
    print(f"evaluating {config.architecture} ({config.task}) from {loaded.origin} on {len(samples)} images "
          f"of {args.data}", file=sys.stderr)
    command = _command(args)
    description = _describe(args.data, layout, len(samples), (args.part or "test") if args.split else args.part)
    start = time.perf_counter()
    logits = predict_logits(loaded, samples, args.batch_size, args.workers, views=args.views)
    seconds = time.perf_counter() - start
    if args.calibrate:
        loaded = _calibrate(args, loaded, samples, logits, description, command)
        config = loaded.config
    grading, rows = score(config, samples, logits, seconds)
    if args.choose_threshold is not None:
        # Choose first, so metrics.json and the recorded numbers are those at the threshold the app will use.
        threshold = choose_referable_threshold(args.checkpoint, np.array([row["grade"] for row in rows]),
                                               np.array([row["referable_probability"] for row in rows]),
                                               args.choose_threshold, description, command)
        print(f"referable threshold of {args.checkpoint} is now {threshold:g}", file=sys.stderr)
        probabilities = np.array([[row[probability_column(n)] for n in config.class_names] for row in rows])
        grading = {**grading, **grading_metrics(np.array([row["grade"] for row in rows]), probabilities, config.task,
                                                config.class_names, referable_threshold=threshold)}

    metrics = {
        "checkpoint": {"source": loaded.source, "revision": loaded.revision, "commit": loaded.commit,
                       "architecture": config.architecture, "task": config.task, "trained": config.trained},
        "data": {"root": str(args.data.resolve()), "layout": layout, "n": len(samples),
                 "split": str(args.split.resolve()) if args.split else None,
                 "part": (args.part or "test") if args.split else args.part, "limit": args.limit},
        "device": str(next(loaded.model.parameters()).device),
        **grading,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_predictions(args.out / PREDICTIONS_NAME, rows)
    title = f"{config.architecture} ({config.task}) on {args.data.name}"
    plot_confusion_matrix(metrics, args.out / CONFUSION_NAME, title)
    plot_roc(metrics, rows, args.out / ROC_NAME, title)
    if args.cam:
        loaded.model.requires_grad_(False)  # a CAM needs no weight gradients: backward stops at its layer
        lesion_samples, _ = select_lesion_samples(args, samples)
        cam_metrics = _score_cams(args, loaded, lesion_samples, metrics["checkpoint"])
        metrics["cam"] = {"pointing_game": cam_metrics["pointing_game"], "default_method": config.cam_method,
                          "default_layer": cam_metrics["default_layer"], "best": cam_metrics["best"],
                          "file": CAM_METRICS_NAME}
    (args.out / METRICS_NAME).write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if args.record:
        record_evaluation(args.checkpoint, metrics, description, command, cam_metrics if args.cam else None,
                          prefix=args.record_as)
    if args.choose_cam_default:
        _choose_cam(args, cam_metrics, description, command)
    return metrics


def _calibrate(args: argparse.Namespace, loaded: LoadedModel, samples: Sequence[Sample], logits: np.ndarray,
               description: str, command: str) -> LoadedModel:
    """Fit the calibration on `logits`, write it (and the views) into the checkpoint; the loaded model
    with the new config."""
    targets = task_targets(np.array([s.grade for s in samples]), loaded.config.task)
    calibration = fit_calibration(logits, targets)
    config = record_calibration(args.checkpoint, calibration, logits, targets, description, command)
    choice = config.provenance["calibration_choice"]
    print(f"calibration of {args.checkpoint} over {logits.shape[1]} view(s): temperature "
          f"{calibration['temperature']:g}, biases {calibration['logit_bias']}; NLL on these images "
          f"{choice['nll_before']:.4f} -> {choice['nll_after']:.4f}", file=sys.stderr)
    return dataclasses.replace(loaded, config=config)


def _lesions_only(root: Path) -> bool:
    """A folder with lesion masks and no grades (IDRiD's segmentation set)."""
    try:
        return detect_lesion_layout(root) != "synthetic"
    except DatasetError:
        return False


def _command(args: argparse.Namespace) -> str:
    return "python -m drdemo.evaluate " + " ".join(shlex.quote(a) for a in args.argv)


def _score_cams(args: argparse.Namespace, loaded: LoadedModel, samples: Sequence[LesionSample],
                checkpoint: dict) -> dict:
    """Score the CAM methods on `samples`; writes cam_metrics.json and cam_grid.png."""
    loaded.model.requires_grad_(False)  # a CAM needs no weight gradients: backward stops at its layer
    config = loaded.config
    cam_metrics, cases = evaluate_cams(loaded, samples, args.cam_methods, config.cam_method, limit=args.cam_limit,
                                       road_limit=args.road_limit, layers=args.cam_layers)
    cam_metrics["checkpoint"] = checkpoint
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / CAM_METRICS_NAME).write_text(json.dumps(cam_metrics, indent=2, allow_nan=False) + "\n",
                                             encoding="utf-8")
    plot_cam_grid(cases, args.out / CAM_GRID_NAME, f"{config.architecture}: where each CAM method looks")
    return cam_metrics


def _choose_cam(args: argparse.Namespace, cam_metrics: dict, description: str, command: str) -> None:
    best = cam_metrics["best"]
    choose_cam_default(args.checkpoint, cam_metrics, description, command)
    print(f"default CAM of {args.checkpoint} is now {best['method']} at {best['layer']} "
          f"(pointing game {best['pointing_game']:.3f})", file=sys.stderr)


def run_ungraded(args: argparse.Namespace) -> dict:
    """`--ungraded`: how many photos of a folder without grades the model refers, and its grades."""
    if args.cam or args.split is not None or args.choose_threshold is not None or args.choose_cam_default:
        raise EvaluateError("--ungraded photos have no grades or lesion masks: only --record goes with it")
    photos = load_photos(args.data)[:args.limit]
    loaded = load_model(args.checkpoint, revision=args.revision, device=args.device)
    config = loaded.config
    probabilities = predict_probabilities(loaded, photos, args.batch_size, args.workers)
    derived = task_probabilities(probabilities, config.task)
    if "referable" not in derived:
        raise EvaluateError(f"a {config.task} checkpoint does not answer the referral question")
    referred = derived["referable"] >= config.referable_threshold
    predicted = probabilities.argmax(axis=1)
    result = {"data": str(args.data.resolve()), "n": len(photos), "referred": int(referred.sum()),
              "share": round(float(referred.mean()), 4), "referable_threshold": config.referable_threshold,
              "predicted_grades": {name: int((predicted == i).sum()) for i, name in enumerate(config.class_names)}}
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [{"image_id": photo.image_id, **{probability_column(n): float(v) for n, v in zip(config.class_names, row)},
             "predicted_name": config.class_names[int(row.argmax())], "referable_probability": float(score),
             "referred": bool(flag)} for photo, row, score, flag in zip(photos, probabilities, derived["referable"],
                                                                         referred)]
    write_predictions(args.out / PREDICTIONS_NAME, rows)
    (args.out / METRICS_NAME).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.record:
        record_referral_share(args.checkpoint, {"data": args.data.name, "n": result["n"],
                                                "referred": result["referred"], "share": result["share"]},
                              _command(args))
    return result


def run_cams_only(args: argparse.Namespace) -> dict:
    """`--cam` on photos with lesion masks and no grades: heat map scores only (cam_metrics.json)."""
    if args.split is not None or args.choose_threshold is not None:
        raise EvaluateError(f"{args.data} has no grades: --split and --choose-threshold need a graded folder")
    samples, what = select_lesion_samples(args, None)
    samples = samples[:min(args.cam_limit, args.limit or args.cam_limit)]
    what = f"{len(samples)} of the {what}"
    loaded = load_model(args.checkpoint, revision=args.revision, device=args.device)
    checkpoint = {"source": loaded.source, "revision": loaded.revision, "commit": loaded.commit,
                  "architecture": loaded.config.architecture, "task": loaded.config.task,
                  "trained": loaded.config.trained}
    print(f"scoring heat maps of {loaded.config.architecture} on {what} of {args.data}", file=sys.stderr)
    cam_metrics = _score_cams(args, loaded, samples, checkpoint)
    part = f", {args.part} part" if args.part else ""
    description = f"{what} of {args.data.name}{part}"
    command = _command(args)
    if args.record:
        record_evaluation(args.checkpoint, None, description, command, cam_metrics)
    if args.choose_cam_default:
        _choose_cam(args, cam_metrics, description, command)
    return {"cam": cam_metrics, "n": len(samples)}


def _describe(root: Path, layout: str, n: int, part: str | None = None) -> str:
    """One line naming the evaluation images; for our generator, enough to make them again."""
    info = generator_info(root) if layout == "synthetic" else None
    if info is not None:
        return (f"{n} synthetic images (drdemo.data.synthetic version {info.get('version')}, seed {info.get('seed')}, "
                f"{info.get('size')} px, {info.get('class_balance')} grade balance), a seed not used for training")
    if layout == "idrid":
        return f"{n} photos of IDRiD's disease grading set ({part} part)"
    return f"{n} images of the {layout} data set at {root.name}"


def _summary(metrics: dict) -> str:
    parts = [f"accuracy {metrics['accuracy']:.3f}", f"QWK {metrics['qwk']:.3f}"]
    for question in QUESTION_LABELS:
        if f"{question}_auc" in metrics:
            auc = metrics[f"{question}_auc"]
            parts.append(f"{question} AUC {'undefined' if auc is None else f'{auc:.3f}'}")
    return ", ".join(parts) + f" ({metrics['n']} images, {metrics['images_per_second']} img/s)"


def _message(exc: Exception) -> str:
    """The error's own message; for one raised in a DataLoader worker, its last line (not the traceback)."""
    text = str(exc)
    if "Original Traceback" in text:
        text = [line for line in text.splitlines() if line.strip()][-1].split(": ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    try:
        metrics = run(args)
    except (CheckpointError, DatasetError, MetricsError, EvaluateError, CamEvaluationError, ExplainError,
            OSError) as exc:
        print(f"error: {_message(exc)}", file=sys.stderr)
        return 2
    if "share" in metrics:
        print(f"wrote {args.out}: referred {metrics['referred']} of {metrics['n']} photos "
              f"({100 * metrics['share']:.1f}%); grades {metrics['predicted_grades']}")
        return 0
    if "qwk" not in metrics:
        cam = metrics["cam"]
        print(f"wrote {args.out}: pointing game {cam['pointing_game']:.3f} ({cam['default_method']}), centre map "
              f"{cam['centre_baseline']['pointing_game']:.3f}, random map "
              f"{cam['random_baseline']['pointing_game']:.3f} ({cam['n_images']} photos)")
        return 0
    print(f"wrote {args.out}: {_summary(metrics)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
