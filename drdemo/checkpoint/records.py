"""What evaluation writes into a checkpoint: its held-out numbers, the default heat map, the
referral share on other cameras, the referable threshold and the calibration, each in config.json
with the command and data it came from, and the model card rewritten to match.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from drdemo.calibration import SHRINKAGE, class_probabilities, negative_log_likelihood
from drdemo.checkpoint.config import CheckpointConfig, CheckpointError
from drdemo.checkpoint.io import read_config, write_config

TEST_METRICS = ("qwk", "accuracy", "referable_auc", "referable_sensitivity", "referable_specificity", "any_dr_auc",
                "any_dr_sensitivity", "any_dr_specificity")


def record_evaluation(folder: str | Path, metrics: dict | None, data_description: str, command: str,
                      cam_metrics: dict | None = None, prefix: str = "test") -> CheckpointConfig:
    """Write an evaluation's headline numbers (as test_*) and how they were measured into the
    checkpoint's config.json, and rewrite its model card: the card then reports held-out results,
    not only the validation numbers training chose the epoch by. With `cam_metrics`, also how well
    each CAM method (at the checkpoint's layer) points at lesions, which the app's About tab shows.
    One write of config.json and the card for both. `prefix` "val" records a validation part's numbers
    (val_*, replacing those training wrote) instead; `metrics` None records the CAM table only."""
    folder = Path(folder)
    config = read_config(folder)
    if metrics is not None:
        recorded = {key: value for key, value in config.metrics.items() if not key.startswith(f"{prefix}_")}
        recorded.update({f"{prefix}_{name}": round(float(metrics[name]), 4) for name in TEST_METRICS
                         if metrics.get(name) is not None})
        for index, (name, recall) in enumerate(metrics.get("per_class_recall", {}).items()):
            if recall is not None:
                recorded[f"{prefix}_recall_{index}_{name.lower().replace(' ', '_')}"] = round(float(recall), 4)
        recorded[f"{prefix}_n"] = int(metrics["n"])
        key = "evaluation" if prefix == "test" else "validation"
        matrices = dict(config.provenance.get("confusion_matrices") or {}, **{prefix: metrics["confusion_matrix"]})
        provenance = dict(config.provenance, **{f"{key}_data": data_description, f"{key}_command": command},
                          confusion_matrices=matrices)
        config = replace(config, metrics=recorded, provenance=provenance)
    if cam_metrics is not None:
        config = replace(config, provenance=dict(config.provenance, cam_test_command=command))
        config = replace(config, cam_evaluation={**config.cam_evaluation,
                                                 "test": _cam_test_record(cam_metrics, data_description, command)})
    return write_config(folder, config)


def _rounded(scores: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()}


def _cam_test_record(cam_metrics: dict, data_description: str, command: str) -> dict:
    copied = ("target", "n_images", "n_images_graded_dr", "n_images_road", "pointing_tolerance_px", "input_size")
    return {"data": data_description, "command": command, "layer": cam_metrics["default_layer"],
            **{key: cam_metrics[key] for key in copied}, "mask_area_share": round(cam_metrics["mask_area_share"], 4),
            "methods": {m: _rounded(v) for m, v in cam_metrics["methods"].items()},
            "random_baseline": _rounded(cam_metrics["random_baseline"]),
            **({"centre_baseline": _rounded(cam_metrics["centre_baseline"])}
               if "centre_baseline" in cam_metrics else {}),
            "notes": cam_metrics["notes"]}


def choose_cam_default(folder: str | Path, cam_metrics: dict, data_description: str, command: str) -> CheckpointConfig:
    """Make the best-pointing (layer, method) of `cam_metrics` the checkpoint's default CAM, and say
    in config.json what it was chosen on. Choose on images other than those the card reports."""
    folder = Path(folder)
    config = read_config(folder)
    best = cam_metrics["best"]
    selection = {"data": data_description, "command": command, "layer": best["layer"], "method": best["method"],
                 "rule": "highest pointing game, then energy share",
                 "pointing_game": {layer: {m: round(v["pointing_game"], 4) for m, v in table.items()}
                                   for layer, table in cam_metrics["layers"].items()}}
    evaluation = {key: value for key, value in config.cam_evaluation.items() if key != "test"}
    return write_config(folder, replace(config, cam_method=best["method"], cam_target_layer=best["layer"],
                                        cam_evaluation={**evaluation, "selection": selection},
                                        provenance=dict(config.provenance, cam_selection_command=command)))


def record_referral_share(folder: str | Path, row: dict, command: str) -> CheckpointConfig:
    """Record how many photos of a camera the model never saw it refers ({data, n, referred, share}),
    replacing an earlier row for the same data."""
    folder = Path(folder)
    config = read_config(folder)
    rows = [r for r in config.provenance.get("other_cameras") or [] if r["data"] != row["data"]]
    commands = dict(config.provenance.get("other_camera_commands") or {}, **{row["data"]: command})
    return write_config(folder, replace(config, provenance=dict(config.provenance, other_cameras=[*rows, row],
                                                                other_camera_commands=commands)))


def choose_referable_threshold(folder: str | Path, grades, referable_probability, min_sensitivity: float,
                               data_description: str, command: str) -> float:
    """Make the highest threshold that keeps referable sensitivity >= `min_sensitivity` on these photos the
    checkpoint's referable threshold (screening misses cost more than extra referrals); returns it.
    Choose on a validation part: the test part then reports what the threshold does."""
    import numpy as np
    from sklearn.metrics import roc_curve

    truth = np.asarray(grades) >= 2
    if truth.all() or not truth.any():
        raise CheckpointError("choosing a referable threshold needs referable and non-referable photos")
    _, tpr, thresholds = roc_curve(truth, np.asarray(referable_probability, dtype=np.float64))
    reachable = thresholds[(tpr >= min_sensitivity) & np.isfinite(thresholds)]
    threshold = float(np.floor(min(max(reachable.max(), 0.001), 0.999) * 1000) / 1000)
    predicted = np.asarray(referable_probability) >= threshold
    sensitivity = float(predicted[truth].mean())
    specificity = float((~predicted[~truth]).mean())
    folder = Path(folder)
    config = read_config(folder)
    choice = {"rule": f"the highest threshold with referable sensitivity >= {min_sensitivity:g}",
              "data": data_description, "sensitivity": round(sensitivity, 4), "specificity": round(specificity, 4)}
    write_config(folder, replace(config, referable_threshold=threshold,
                                 provenance=dict(config.provenance, referable_threshold_choice=choice,
                                                 threshold_command=command)))
    return threshold


def record_calibration(folder: str | Path, calibration: dict, logits, targets, data_description: str,
                       command: str) -> CheckpointConfig:
    """Make `calibration`, fitted on `logits` (n, views, C), and their number of views the checkpoint's,
    with the negative log-likelihood before and after on those images; returns the new config."""
    views = logits.shape[1]
    folder = Path(folder)
    config = read_config(folder)
    choice = {"rule": f"temperature and per-class logit biases minimising the negative log-likelihood over "
                      f"{views} view(s), biases shrunk by {SHRINKAGE:g} x their squares",
              "data": data_description, "views": views,
              "nll_before": round(negative_log_likelihood(class_probabilities(logits), targets), 4),
              "nll_after": round(negative_log_likelihood(class_probabilities(logits, calibration), targets), 4)}
    return write_config(folder, replace(config, test_time_views=views, calibration=calibration,
                                        provenance=dict(config.provenance, calibration_choice=choice,
                                                        calibration_command=command)))
