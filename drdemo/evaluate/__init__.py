"""Evaluate a checkpoint: one subcommand per kind of evaluation, each with its own flags.

    python -m drdemo.evaluate score --checkpoint C --data DIR --out OUT [--split S --part P] [--limit N]
        [--record [--record-as test|val]]
    python -m drdemo.evaluate threshold ... --split S --part val --sensitivity 0.9 [--record]
    python -m drdemo.evaluate calibrate ... --split S --part val [--views 8]
    python -m drdemo.evaluate cams --checkpoint C --data DIR --out OUT [--methods M ...] [--layers L ...]
        [--overlap CSV --photos copies|others] [--record] [--choose-default]
    python -m drdemo.evaluate referral-share --checkpoint C --data DIR --out OUT [--record]
    python -m drdemo.evaluate heads --checkpoint C --data DIR --part val|test [--choose-thresholds]

`score`, `threshold` and `calibrate` write OUT/metrics.json (drdemo.metrics.grading_metrics, plus
where the checkpoint and the data came from and how fast it ran), OUT/predictions.csv (one row per
image), OUT/confusion_matrix.png and OUT/roc.png; `threshold` and `calibrate` also write their choice
into the checkpoint (choose on a validation part, never the test part). `cams` writes
OUT/cam_metrics.json and OUT/cam_grid.png, `referral-share` the share of an ungraded folder the model
refers, and `heads` the three-head checkpoint's report (drdemo.evaluate.heads). `--record` writes one
file under the checkpoint's eval/ and regenerates its model card. Images are preprocessed exactly as
the checkpoint's config.json says (drdemo.preprocess.preprocess_kwargs), the same path the app and
training use.

`evaluate(loaded, samples)` is the reusable part (its loop, drdemo.inference.loader_logits, is
training's validation loop too). `--part` names an official part of the data set (IDRiD's train or
test) or, with `--split`, a part of that split file (a training run's training/split.json has train
and val).

The package: predictions.py (the library: logits, metrics, rows, files and plots), heads.py (the
three-head report), cli.py (the command line); `python -m drdemo.evaluate` runs cli.main.
"""

from drdemo.evaluate.cli import main
from drdemo.evaluate.predictions import EvaluateError, evaluate, predict_logits, predict_probabilities, score

# The library's entry points; the files' names, the plots and the CLI's pieces are imported from
# drdemo.evaluate.predictions and drdemo.evaluate.cli themselves.
__all__ = ["EvaluateError", "evaluate", "main", "predict_logits", "predict_probabilities", "score"]
