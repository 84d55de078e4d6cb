"""`python -m drdemo.evaluate`: its arguments, choosing the samples, and the runs (graded, ungraded,
heat maps only) that write OUT and record results into the checkpoint (drdemo.evaluate's package
docstring lists the flags and files)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from drdemo.calibration import fit_calibration
from drdemo.cam.evaluation import evaluate_cams, plot_cam_grid
from drdemo.cam.explain import CAM_METHODS
from drdemo.checkpoint import (
    LoadedModel,
    choose_cam_default,
    choose_referable_threshold,
    load_model,
    record_calibration,
    record_cam_test,
    record_grading,
    record_referral_share,
)
from drdemo.data import (
    LAYOUTS,
    PARTS,
    DatasetError,
    Sample,
    detect_layout,
    load_photos,
    load_samples,
    load_split,
)
from drdemo.data.describe import describe_evaluation_data
from drdemo.data.lesions import (
    LesionSample,
    detect_lesion_layout,
    grading_copies,
    load_lesion_samples,
    split_by_copies,
)
from drdemo.errors import DrdemoError
from drdemo.evaluate.predictions import (
    CAM_GRID_NAME,
    CAM_METRICS_NAME,
    CONFUSION_NAME,
    METRICS_NAME,
    PREDICTIONS_NAME,
    QUESTION_LABELS,
    ROC_NAME,
    EvaluateError,
    plot_confusion_matrix,
    plot_roc,
    predict_logits,
    predict_probabilities,
    probability_column,
    score,
    write_predictions,
)
from drdemo.inference import VIEW_COUNTS
from drdemo.metrics import grading_metrics, task_probabilities
from drdemo.tasks import task_targets


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
    description = describe_evaluation_data(args.data, layout, len(samples), (args.part or "test") if args.split else args.part)
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
        "checkpoint": checkpoint_summary(loaded),
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
        record_grading(args.checkpoint, metrics, description, command, part=args.record_as)
        if args.cam:
            record_cam_test(args.checkpoint, cam_metrics, description, command)
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
    choice = config.provenance["calibration_choice"]  # eval/calibration.json, as the config's records show it
    print(f"calibration of {args.checkpoint} over {logits.shape[1]} view(s): temperature "
          f"{calibration['temperature']:g}, biases {calibration['logit_bias']}; NLL on these images "
          f"{choice['nll_before']:.4f} -> {choice['nll_after']:.4f}", file=sys.stderr)
    return dataclasses.replace(loaded, config=config)


def checkpoint_summary(loaded: LoadedModel) -> dict:
    """Which checkpoint an evaluation ran, as its metrics.json and cam_metrics.json record it."""
    config = loaded.config
    return {"source": loaded.source, "revision": loaded.revision, "commit": loaded.commit,
            "architecture": config.architecture, "task": config.task, "trained": config.trained}


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
    checkpoint = checkpoint_summary(loaded)
    print(f"scoring heat maps of {loaded.config.architecture} on {what} of {args.data}", file=sys.stderr)
    cam_metrics = _score_cams(args, loaded, samples, checkpoint)
    part = f", {args.part} part" if args.part else ""
    description = f"{what} of {args.data.name}{part}"
    command = _command(args)
    if args.record:
        record_cam_test(args.checkpoint, cam_metrics, description, command)
    if args.choose_cam_default:
        _choose_cam(args, cam_metrics, description, command)
    return {"cam": cam_metrics, "n": len(samples)}


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
    except (DrdemoError, OSError) as exc:
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
