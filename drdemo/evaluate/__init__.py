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

The package: predictions.py (the library: logits, metrics, rows, files and plots), cli.py (the
command line); `python -m drdemo.evaluate` runs cli.main.
"""

from drdemo.evaluate.cli import main
from drdemo.evaluate.predictions import EvaluateError, evaluate, predict_logits, predict_probabilities, score

# The library's entry points; the files' names, the plots and the CLI's pieces are imported from
# drdemo.evaluate.predictions and drdemo.evaluate.cli themselves.
__all__ = ["EvaluateError", "evaluate", "main", "predict_logits", "predict_probabilities", "score"]
