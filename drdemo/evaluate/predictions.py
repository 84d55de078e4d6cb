"""Evaluation as a library: a checkpoint's logits and probabilities over samples (through
drdemo.inference.loader_logits, the loop training's validation also runs), the metrics and
per-image rows scored from them, and the files and plots the CLI writes from those."""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from drdemo.calibration import class_probabilities
from drdemo.checkpoint import (
    CheckpointConfig,
    LoadedModel,
)
from drdemo.data import (
    FundusDataset,
    Sample,
)
from drdemo.errors import DrdemoError
from drdemo.inference import loader_logits, loader_outputs
from drdemo.metrics import dme_metrics, grading_metrics, joint_accuracy, task_probabilities
from drdemo.preprocess import preprocess_kwargs, to_model_input
from drdemo.tasks import DERIVED_MIN_GRADE, decided_classes, task_targets

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
    return predict_outputs(loaded, samples, batch_size, workers, progress, views)["logits"]


def predict_outputs(loaded: LoadedModel, samples: Sequence[Sample], batch_size: int = 16, workers: int = 0,
                    progress: bool = True, views: int | None = None) -> dict[str, np.ndarray]:
    """{"logits": (n, views, C)} of `samples` as `predict_logits`, and for a three-head checkpoint
    "dme_logits" (n, views, DME risks) from the same forward pass."""
    views = loaded.config.test_time_views if views is None else views
    if not samples:
        raise EvaluateError("no samples to evaluate")
    if batch_size < 1 or workers < 0:
        raise EvaluateError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    pin = next(loaded.model.parameters()).device.type == "cuda"
    loader = DataLoader(FundusDataset(samples, partial(_image_tensor, **preprocess_kwargs(loaded.config))),
                        batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    if not loaded.config.heads:
        return {"logits": loader_logits(loaded.model, loader, views, progress="evaluate" if progress else None)[0]}
    outputs, _ = loader_outputs(loaded.model, loader, views, progress="evaluate" if progress else None)
    return {"logits": outputs["logits"], "dme_logits": outputs["dme_logits"]}


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
    outputs = predict_outputs(loaded, samples, batch_size, workers, progress)
    return score(loaded.config, samples, outputs["logits"], time.perf_counter() - start, outputs.get("dme_logits"))


def score(config: CheckpointConfig, samples: Sequence[Sample], logits: np.ndarray,
          seconds: float, dme_logits: np.ndarray | None = None) -> tuple[dict, list[dict]]:
    """`evaluate`'s metrics and rows from the logits of `samples` (n, views, C), calibrated as `config` says;
    with a three-head model's `dme_logits` and samples that carry a DME risk (IDRiD), the DME metrics and the
    joint accuracy too, from drdemo.metrics as `evaluate heads` reports them."""
    probabilities = class_probabilities(logits, config.calibration)
    grades = np.array([sample.grade for sample in samples])
    metrics = grading_metrics(grades, probabilities, config.task, config.class_names,
                              referable_threshold=config.referable_threshold)
    risks = np.array([-1 if sample.dme is None else sample.dme for sample in samples])
    if dme_logits is not None and (risks >= 0).any():
        dme_probabilities = class_probabilities(dme_logits, {})
        metrics.update(dme_metrics(risks, dme_probabilities, threshold=config.dme_threshold))
        known = risks >= 0
        metrics["joint_accuracy"] = joint_accuracy(grades[known], probabilities[known], risks[known],
                                                   dme_probabilities[known], config.referable_threshold,
                                                   config.dme_threshold)
        metrics["joint_most_probable_accuracy"] = joint_accuracy(grades[known], probabilities[known], risks[known],
                                                                 dme_probabilities[known])
    metrics["seconds"] = round(seconds, 3)
    metrics["images_per_second"] = round(len(samples) / seconds, 3) if seconds > 0 else None

    targets = task_targets(grades, config.task)
    derived = task_probabilities(probabilities, config.task)
    columns = [probability_column(name) for name in config.class_names]
    named = decided_classes(probabilities, config.task, config.referable_threshold)
    rows = []
    for i, sample in enumerate(samples):
        predicted = int(named[i])
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
