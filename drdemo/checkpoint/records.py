"""What evaluation writes into a checkpoint folder: one eval/<name>.json per evaluation (the data, the
command, the code commit, the date and the results; drdemo.checkpoint.layout), and the model card
regenerated from the files. `record_evaluation(folder, name, data=..., command=..., results=...)` records
any kind; the choosers below also change config.json (the default heat map, the referable threshold, the
calibration) and record how they chose.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from drdemo.calibration import SHRINKAGE, class_probabilities, negative_log_likelihood
from drdemo.checkpoint import layout
from drdemo.checkpoint.config import CheckpointConfig, CheckpointError
from drdemo.checkpoint.io import code_commit, read_config, write_card, write_config
from drdemo.checkpoint.layout import OTHER_CAMERA_PREFIX, evaluation_record, remove_evaluation, write_evaluation

TEST_METRICS = ("qwk", "accuracy", "referable_auc", "referable_sensitivity", "referable_specificity", "any_dr_auc",
                "any_dr_sensitivity", "any_dr_specificity")


def record_evaluation(folder: str | Path, name: str, *, data, command: str | None, results: dict,
                      dataset: dict | None = None) -> Path:
    """Write eval/<name>.json (replacing an earlier one of that name) with this code's commit and today's
    date, and regenerate the model card; returns the file. `data` says what was measured on (a
    description), `results` are the numbers (any JSON object), `dataset` ({"type", "name", "split"}) names
    the data set in the card's model-index (default: read from `data`). Names the card shows in its own
    sections: validation and test (grading metrics, as val_* / test_*), cam, cam_selection, calibration,
    referable_threshold, other_cameras_<data>; any other name gets a table of its numbers."""
    folder = Path(folder)
    read_config(folder)  # only into a checkpoint folder that loads
    record = evaluation_record(name, data=data, command=command, results=results, code_commit=code_commit(),
                               date=datetime.now(UTC).isoformat(timespec="seconds"), dataset=dataset)
    path = write_evaluation(folder, record)
    write_card(folder)
    return path


def read_evaluations(folder: str | Path) -> dict[str, dict]:
    """Every recorded evaluation of a checkpoint folder (eval/<name>.json) by name."""
    return layout.read_evaluations(Path(folder))


def grading_results(metrics: dict) -> dict:
    """An evaluation's headline grading numbers (rounded), per-class recalls, n and confusion matrix,
    as eval/validation.json and eval/test.json hold them."""
    results = {name: round(float(metrics[name]), 4) for name in TEST_METRICS if metrics.get(name) is not None}
    for index, (name, recall) in enumerate(metrics.get("per_class_recall", {}).items()):
        if recall is not None:
            results[f"recall_{index}_{name.lower().replace(' ', '_')}"] = round(float(recall), 4)
    results["n"] = int(metrics["n"])
    results["confusion_matrix"] = metrics["confusion_matrix"]
    return results


def record_grading(folder: str | Path, metrics: dict, data_description: str, command: str,
                   part: str = "test") -> Path:
    """Record a graded evaluation's numbers: `part` "test" (held-out test data: eval/test.json) or "val"
    (the validation part the epoch and threshold were chosen on: eval/validation.json, replacing the
    numbers training wrote)."""
    name = {"test": "test", "val": "validation"}[part]
    return record_evaluation(folder, name, data=data_description, command=command, results=grading_results(metrics))


def record_cam_test(folder: str | Path, cam_metrics: dict, data_description: str, command: str) -> Path:
    """Record how well each CAM method (at the checkpoint's layer) points at lesions (eval/cam.json),
    the table the app's About tab and the card show."""
    return record_evaluation(folder, "cam", data=data_description, command=command,
                             results=_cam_test_record(cam_metrics))


def _rounded(scores: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()}


def _cam_test_record(cam_metrics: dict) -> dict:
    copied = ("target", "n_images", "n_images_graded_dr", "n_images_road", "pointing_tolerance_px", "input_size")
    return {"layer": cam_metrics["default_layer"],
            **{key: cam_metrics[key] for key in copied}, "mask_area_share": round(cam_metrics["mask_area_share"], 4),
            "methods": {m: _rounded(v) for m, v in cam_metrics["methods"].items()},
            "random_baseline": _rounded(cam_metrics["random_baseline"]),
            **({"centre_baseline": _rounded(cam_metrics["centre_baseline"])}
               if "centre_baseline" in cam_metrics else {}),
            "notes": cam_metrics["notes"]}


def choose_cam_default(folder: str | Path, cam_metrics: dict, data_description: str, command: str) -> CheckpointConfig:
    """Make the best (layer, method) of `cam_metrics` (drdemo.cam.evaluation's rank) the checkpoint's default CAM
    and record what it was chosen on (eval/cam_selection.json); a heat map test of the old default (eval/cam.json)
    no longer applies and is removed. Choose on images other than those the card reports."""
    folder = Path(folder)
    config = read_config(folder)
    best = cam_metrics["best"]
    results = {"layer": best["layer"], "method": best["method"],
               "rule": "highest pointing game above a centre-peaked map's, then energy share",
               "pointing_game": {layer: {m: round(v["pointing_game"], 4) for m, v in table.items()}
                                 for layer, table in cam_metrics["layers"].items()},
               "energy_share": {layer: {m: round(v["energy_pointing_game"], 4) for m, v in table.items()}
                                for layer, table in cam_metrics["layers"].items()}}
    if "centre_baseline" in cam_metrics:
        centre = cam_metrics["centre_baseline"]
        results["centre_map"] = {"pointing_game": round(centre["pointing_game"], 4),
                                 "energy_share": round(centre["energy_pointing_game"], 4)}
    remove_evaluation(folder, "cam")
    config = write_config(folder, replace(config, cam_method=best["method"], cam_target_layer=best["layer"],
                                          cam_evaluation={}))
    record_evaluation(folder, "cam_selection", data=data_description, command=command, results=results)
    return read_config(folder)


def record_referral_share(folder: str | Path, row: dict, command: str) -> Path:
    """Record how many photos of a camera the model never saw it refers ({data, n, referred, share}) as
    eval/other_cameras_<data>.json, replacing an earlier one for the same data."""
    name = OTHER_CAMERA_PREFIX + "".join(c if c.isalnum() or c in "_-" else "_" for c in str(row["data"]))
    return record_evaluation(folder, name, data=row["data"], command=command,
                             results={k: v for k, v in row.items() if k != "data"})


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
    write_config(folder, replace(config, referable_threshold=threshold))
    record_evaluation(folder, "referable_threshold", data=data_description, command=command,
                      results={"rule": f"the highest threshold with referable sensitivity >= {min_sensitivity:g}",
                               "threshold": threshold, "sensitivity": round(sensitivity, 4),
                               "specificity": round(specificity, 4)})
    return threshold


def record_calibration(folder: str | Path, calibration: dict, logits, targets, data_description: str,
                       command: str) -> CheckpointConfig:
    """Make `calibration`, fitted on `logits` (n, views, C), and their number of views the checkpoint's,
    with the negative log-likelihood before and after on those images; returns the new config."""
    views = logits.shape[1]
    folder = Path(folder)
    config = read_config(folder)
    write_config(folder, replace(config, test_time_views=views, calibration=calibration))
    record_evaluation(folder, "calibration", data=data_description, command=command, results={
        "rule": f"temperature and per-class logit biases minimising the negative log-likelihood over {views} "
                f"view(s), biases shrunk by {SHRINKAGE:g} x their squares", "views": views,
        "nll_before": round(negative_log_likelihood(class_probabilities(logits), targets), 4),
        "nll_after": round(negative_log_likelihood(class_probabilities(logits, calibration), targets), 4)})
    return read_config(folder)
