"""`python -m drdemo.evaluate COMMAND`: one subcommand per kind of evaluation, each with its own flags,
and each writing OUT and, where asked, one record into the checkpoint (the package docstring lists them)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
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
from drdemo.data import LAYOUTS, PARTS, DatasetError, Sample, detect_layout, load_photos, load_samples, load_split
from drdemo.data.describe import describe_evaluation_data
from drdemo.data.lesions import (
    LesionSample,
    detect_lesion_layout,
    grading_copies,
    load_lesion_samples,
    split_by_copies,
)
from drdemo.errors import DrdemoError
from drdemo.evaluate import heads
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
    predict_outputs,
    predict_probabilities,
    probability_column,
    score,
    write_predictions,
)
from drdemo.inference import VIEW_COUNTS
from drdemo.metrics import task_probabilities
from drdemo.tasks import decided_classes, task_targets

# What each flag of the single-command form became, for the message that form now gets.
FLAG_FORM = {"--cam": "cams", "--ungraded": "referral-share", "--calibrate": "calibrate",
             "--choose-threshold": "threshold --sensitivity S"}
RENAMED_FLAGS = {"--cam-methods": "--methods", "--cam-layers": "--layers", "--cam-limit": "--limit",
                 "--cam-overlap": "--overlap", "--cam-photos": "--photos", "--choose-cam-default": "--choose-default"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m drdemo.evaluate",
                                     description="evaluate a checkpoint: scores, threshold, calibration, heat maps, "
                                                 "referral share, or a three-head checkpoint's report")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--checkpoint", required=True, help="checkpoint folder or Hub repo id (ORG/NAME)")
    model.add_argument("--revision", help="Hub branch, tag or commit (repo ids only)")
    model.add_argument("--data", type=Path, required=True, help="data set folder (layout detected)")
    model.add_argument("--out", type=Path, required=True, help="folder for metrics.json, predictions.csv and plots")
    model.add_argument("--batch-size", type=int, default=16)
    model.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto)")
    graded = argparse.ArgumentParser(add_help=False)
    graded.add_argument("--layout", choices=LAYOUTS, help="data set layout (default: detected)")
    graded.add_argument("--split", type=Path, help="split JSON from python -m drdemo.data.split, or a training "
                        "run's training/split.json")
    graded.add_argument("--part", help="part of --split to evaluate (default: test), or without --split the "
                        "data set's official part (IDRiD: train or test)")
    first_n = argparse.ArgumentParser(add_help=False)
    first_n.add_argument("--limit", type=int, help="evaluate only the first N images (by image id)")

    scoring = commands.add_parser("score", parents=[model, graded, first_n],
                                  help="grade a graded folder: metrics.json, predictions.csv, confusion and ROC plots")
    scoring.add_argument("--record", action="store_true",
                         help="record the numbers into the checkpoint (eval/, model card); local folders only")
    scoring.add_argument("--record-as", choices=("test", "val"), default="test",
                         help="with --record: test_* (held-out test data, default) or val_* (the validation part "
                              "the epoch and threshold were chosen on)")
    scoring.set_defaults(run=run_score)

    threshold = commands.add_parser("threshold", parents=[model, graded, first_n],
                                    help="make the referable threshold the highest that keeps a sensitivity "
                                         "(choose on a validation part, never the test part); local folders")
    threshold.add_argument("--sensitivity", type=float, required=True, help="referable sensitivity to keep, (0, 1]")
    threshold.add_argument("--record", action="store_true",
                           help="record the numbers at the new threshold as val_* (the part it was chosen on)")
    threshold.set_defaults(run=run_threshold)

    calibrate = commands.add_parser("calibrate", parents=[model, graded, first_n],
                                    help="fit a temperature and per-class biases by negative log-likelihood "
                                         "(on a validation part, never the test part); local folders")
    calibrate.add_argument("--views", type=int, choices=VIEW_COUNTS,
                           help="make the checkpoint average this many symmetric views of each photo "
                                "(default: keep its test_time_views)")
    calibrate.set_defaults(run=run_calibrate)

    cams = commands.add_parser("cams", parents=[model, graded],
                               help="score heat map methods against lesion masks: cam_metrics.json, cam_grid.png")
    cams.add_argument("--methods", nargs="+", default=list(CAM_METHODS), metavar="METHOD",
                      help=f"CAM methods to score (default: all of {', '.join(CAM_METHODS)})")
    cams.add_argument("--layers", nargs="+", metavar="LAYER",
                      help="target layers (default: the checkpoint's cam_target_layer); join layers with '+' to "
                           "average their maps, e.g. Mixed_6e+Mixed_7c")
    cams.add_argument("--limit", type=int, default=50, help="photos with lesion masks to score (default 50)")
    cams.add_argument("--road-limit", type=int, default=20,
                      help="of those, how many also get the (slow) ROAD perturbation score (default 20)")
    cams.add_argument("--overlap", type=Path, help="IDRiD's segmentation_grading_overlap.csv: with --photos, score "
                      "only the segmentation photos that are (not) copies of grading training photos")
    cams.add_argument("--photos", choices=("copies", "others"),
                      help="copies: copies of grading training photos (training data anyway: choose on them); "
                           "others: the rest (report on them)")
    cams.add_argument("--record", action="store_true", help="record the table into the checkpoint (eval/cam.json)")
    cams.add_argument("--choose-default", action="store_true",
                      help="make the best-pointing method and layer the checkpoint's default heat map (run it on "
                           "photos other than the ones --record reports); local folders only")
    cams.set_defaults(run=run_cams)

    share = commands.add_parser("referral-share", parents=[model, first_n],
                                help="the share of an ungraded folder's photos (DRIVE, CHASE_DB1) the model refers")
    share.add_argument("--record", action="store_true", help="record the share into the checkpoint")
    share.set_defaults(run=run_referral_share)

    three_heads = commands.add_parser("heads", help="a three-head checkpoint on IDRiD: grades, DME risk, lesion "
                                                    "maps and the shortcut checks")
    heads.add_arguments(three_heads)
    three_heads.set_defaults(run=run_heads)
    return parser


# ---------------------------------------------------------------------------------------------- samples

def select_samples(args: argparse.Namespace, limit: int | None = None) -> tuple[list[Sample], str]:
    """The graded samples the arguments ask for (the first `limit`), and the data set's layout."""
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
        part = _part(args)
        parts = load_split(args.split, samples)
        if part not in parts:
            raise EvaluateError(f"{args.split} has no part {part!r} (it has {', '.join(parts)}); pass --part NAME")
        samples = parts[part]
        if not samples:
            raise EvaluateError(f"part {part!r} of {args.split} is empty; pass another --part")
    return samples[:limit], layout


def select_lesion_samples(args: argparse.Namespace,
                          graded: Sequence[Sample] | None) -> tuple[list[LesionSample], str]:
    """The photos with lesion masks to score heat maps on (those of `graded`, where the data is graded
    too), and a phrase saying which they are."""
    samples = load_lesion_samples(args.data, part=args.part if graded is None else None)
    if graded is not None:
        wanted = {s.image_id for s in graded}
        samples = [s for s in samples if s.image_id in wanted]
    if args.photos is None:
        return samples, "photos with lesion masks"
    copies, others = split_by_copies(samples, grading_copies(args.overlap))
    if args.photos == "copies":
        return copies, "photos with lesion masks that are copies of grading training photos"
    return others, "photos with lesion masks that are not copies of grading training photos (not training data)"


def _part(args: argparse.Namespace) -> str | None:
    """The part evaluated: of the split file (default test), or the data set's official part."""
    return (args.part or "test") if args.split is not None else args.part


@dataclasses.dataclass
class GradedRun:
    """One forward pass over graded samples, what every graded subcommand starts from."""

    loaded: LoadedModel
    samples: list[Sample]
    layout: str
    logits: np.ndarray          # (n, views, C), uncalibrated
    seconds: float
    description: str            # the data, as a record in the checkpoint states it
    dme_logits: np.ndarray | None = None   # (n, views, DME risks) of a three-head checkpoint


def predict_graded(args: argparse.Namespace, views: int | None = None) -> GradedRun:
    samples, layout = select_samples(args, args.limit)
    loaded = load_model(args.checkpoint, revision=args.revision, device=args.device)
    print(f"evaluating {loaded.config.architecture} ({loaded.config.task}) from {loaded.origin} on {len(samples)} "
          f"images of {args.data}", file=sys.stderr)
    start = time.perf_counter()
    outputs = predict_outputs(loaded, samples, args.batch_size, args.workers, views=views)
    seconds = time.perf_counter() - start
    description = describe_evaluation_data(args.data, layout, len(samples), _part(args))
    return GradedRun(loaded, samples, layout, outputs["logits"], seconds, description, outputs.get("dme_logits"))


# ---------------------------------------------------------------------------------------------- subcommands

def run_score(args: argparse.Namespace) -> str:
    """`score`: metrics.json, predictions.csv and the two plots; with --record, eval/test.json or validation.json."""
    graded = predict_graded(args)
    metrics = write_scores(args, graded, graded.loaded)
    if args.record:
        record_grading(args.checkpoint, metrics, graded.description, _command(args), part=args.record_as)
    return f"wrote {args.out}: {_summary(metrics)}"


def run_threshold(args: argparse.Namespace) -> str:
    """`threshold`: the checkpoint's referable threshold becomes the highest that keeps --sensitivity on these
    photos; OUT's metrics are those at the new threshold."""
    graded = predict_graded(args)
    config = graded.loaded.config
    _, rows = score(config, graded.samples, graded.logits, graded.seconds)
    threshold = choose_referable_threshold(args.checkpoint, np.array([row["grade"] for row in rows]),
                                           np.array([row["referable_probability"] for row in rows]),
                                           args.sensitivity, graded.description, _command(args))
    loaded = dataclasses.replace(graded.loaded, config=dataclasses.replace(config, referable_threshold=threshold))
    metrics = write_scores(args, graded, loaded)
    if args.record:
        record_grading(args.checkpoint, metrics, graded.description, _command(args), part="val")
    return f"referable threshold of {args.checkpoint} is now {threshold:g}; wrote {args.out}: {_summary(metrics)}"


def run_calibrate(args: argparse.Namespace) -> str:
    """`calibrate`: fit the calibration over --views views and write it (and the views) into the checkpoint;
    OUT's metrics are the calibrated ones on these photos."""
    graded = predict_graded(args, views=args.views)
    config = graded.loaded.config
    targets = task_targets(np.array([s.grade for s in graded.samples]), config.task)
    calibration = fit_calibration(graded.logits, targets)
    config = record_calibration(args.checkpoint, calibration, graded.logits, targets, graded.description,
                                _command(args))
    choice = config.provenance["calibration_choice"]
    metrics = write_scores(args, graded, dataclasses.replace(graded.loaded, config=config))
    return (f"calibration of {args.checkpoint} over {graded.logits.shape[1]} view(s): temperature "
            f"{calibration['temperature']:g}, biases {calibration['logit_bias']}; NLL on these images "
            f"{choice['nll_before']:.4f} -> {choice['nll_after']:.4f}; wrote {args.out}: {_summary(metrics)}")


def run_cams(args: argparse.Namespace) -> str:
    """`cams`: every method scored against the lesion masks (cam_metrics.json, cam_grid.png), on a folder of
    lesion masks without grades (IDRiD's segmentation set) or on a graded synthetic folder's samples."""
    if args.limit < 1 or args.road_limit < 0:
        raise EvaluateError(f"--limit must be >= 1 and --road-limit >= 0, got {args.limit} and {args.road_limit}")
    if (args.overlap is None) != (args.photos is None):
        raise EvaluateError("--overlap and --photos go together: the overlap table, and which photos of it")
    lesions_only = _lesions_only(args.data)
    if lesions_only and args.split is not None:
        raise EvaluateError(f"{args.data} has no grades: --split needs a graded folder")
    graded = None if lesions_only else select_samples(args)[0]
    samples, what = select_lesion_samples(args, graded)
    samples = samples[:args.limit]
    if not samples:
        raise EvaluateError(f"{args.data} has no photos with lesion masks to score heat maps on")
    loaded = load_model(args.checkpoint, revision=args.revision, device=args.device)
    print(f"scoring heat maps of {loaded.config.architecture} on {len(samples)} {what} of {args.data}",
          file=sys.stderr)
    loaded.model.requires_grad_(False)  # a CAM needs no weight gradients: backward stops at its layer
    cam_metrics, cases = evaluate_cams(loaded, samples, args.methods, loaded.config.cam_method, limit=args.limit,
                                       road_limit=args.road_limit, layers=args.layers)
    cam_metrics["checkpoint"] = checkpoint_summary(loaded)
    args.out.mkdir(parents=True, exist_ok=True)
    _write_json(args.out / CAM_METRICS_NAME, cam_metrics)
    plot_cam_grid(cases, args.out / CAM_GRID_NAME, f"{loaded.config.architecture}: where each CAM method looks")
    part = f", {args.part} part" if args.part else ""
    description = f"{len(samples)} of the {what} of {args.data.name}{part}"
    if args.record:
        record_cam_test(args.checkpoint, cam_metrics, description, _command(args))
    best, default = cam_metrics["best"], cam_metrics["pointing_game"]
    headline = (f"pointing game {default:.3f} ({cam_metrics['default_method']})" if default is not None else
                f"best pointing game {best['pointing_game']:.3f} ({best['method']} at {best['layer']})")
    lines = [f"wrote {args.out}: {headline}, centre map {cam_metrics['centre_baseline']['pointing_game']:.3f}, "
             f"random map {cam_metrics['random_baseline']['pointing_game']:.3f} ({cam_metrics['n_images']} photos)"]
    if args.choose_default:
        choose_cam_default(args.checkpoint, cam_metrics, description, _command(args))
        lines.append(f"default heat map of {args.checkpoint} is now {best['method']} at {best['layer']} "
                     f"(pointing game {best['pointing_game']:.3f})")
    return "\n".join(lines)


def run_referral_share(args: argparse.Namespace) -> str:
    """`referral-share`: how many photos of a folder without grades the model refers, and its grades."""
    photos = load_photos(args.data)[:args.limit]
    loaded = load_model(args.checkpoint, revision=args.revision, device=args.device)
    config = loaded.config
    probabilities = predict_probabilities(loaded, photos, args.batch_size, args.workers)
    derived = task_probabilities(probabilities, config.task)
    if "referable" not in derived:
        raise EvaluateError(f"a {config.task} checkpoint does not answer the referral question")
    referred = derived["referable"] >= config.referable_threshold
    predicted = decided_classes(probabilities, config.task, config.referable_threshold)
    result = {"data": str(args.data.resolve()), "n": len(photos), "referred": int(referred.sum()),
              "share": round(float(referred.mean()), 4), "referable_threshold": config.referable_threshold,
              "predicted_grades": {name: int((predicted == i).sum()) for i, name in enumerate(config.class_names)}}
    rows = [{"image_id": photo.image_id, **{probability_column(n): float(v) for n, v in zip(config.class_names, row)},
             "predicted_name": config.class_names[int(named)], "referable_probability": float(p),
             "referred": bool(flag)}
            for photo, row, named, p, flag in zip(photos, probabilities, predicted, derived["referable"], referred)]
    args.out.mkdir(parents=True, exist_ok=True)
    write_predictions(args.out / PREDICTIONS_NAME, rows)
    _write_json(args.out / METRICS_NAME, result)
    if args.record:
        record_referral_share(args.checkpoint, {"data": args.data.name, "n": result["n"],
                                                "referred": result["referred"], "share": result["share"]},
                              _command(args))
    return (f"wrote {args.out}: referred {result['referred']} of {result['n']} photos "
            f"({100 * result['share']:.1f}%); grades {result['predicted_grades']}")


def run_heads(args: argparse.Namespace) -> str:
    """`heads`: drdemo.evaluate.heads' report on a three-head checkpoint."""
    return heads.run(args, _command(args))


# ---------------------------------------------------------------------------------------------- files

def write_scores(args: argparse.Namespace, graded: GradedRun, loaded: LoadedModel) -> dict:
    """metrics.json, predictions.csv and the plots of `graded`'s logits, scored as `loaded`'s config says."""
    config = loaded.config
    grading, rows = score(config, graded.samples, graded.logits, graded.seconds, graded.dme_logits)
    metrics = {
        "checkpoint": checkpoint_summary(loaded),
        "data": {"root": str(args.data.resolve()), "layout": graded.layout, "n": len(graded.samples),
                 "split": str(args.split.resolve()) if args.split else None, "part": _part(args),
                 "limit": args.limit},
        "device": str(next(loaded.model.parameters()).device),
        **grading,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_predictions(args.out / PREDICTIONS_NAME, rows)
    title = f"{config.architecture} ({config.task}) on {args.data.name}"
    plot_confusion_matrix(metrics, args.out / CONFUSION_NAME, title)
    plot_roc(metrics, rows, args.out / ROC_NAME, title)
    _write_json(args.out / METRICS_NAME, metrics)
    return metrics


def checkpoint_summary(loaded: LoadedModel) -> dict:
    """Which checkpoint an evaluation ran, as its metrics.json and cam_metrics.json record it."""
    config = loaded.config
    return {"source": loaded.source, "revision": loaded.revision, "commit": loaded.commit,
            "architecture": config.architecture, "task": config.task, "trained": config.trained}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _lesions_only(root: Path) -> bool:
    """A folder with lesion masks and no grades (IDRiD's segmentation set)."""
    try:
        return detect_lesion_layout(root) != "synthetic"
    except DatasetError:
        return False


def _command(args: argparse.Namespace) -> str:
    return "python -m drdemo.evaluate " + " ".join(shlex.quote(a) for a in args.argv)


def _summary(metrics: dict) -> str:
    parts = [f"accuracy {metrics['accuracy']:.3f}", f"QWK {metrics['qwk']:.3f}"]
    for question in QUESTION_LABELS:
        if f"{question}_auc" in metrics:
            auc = metrics[f"{question}_auc"]
            parts.append(f"{question} AUC {'undefined' if auc is None else f'{auc:.3f}'}")
    if "joint_accuracy" in metrics:
        parts.append(f"DME accuracy {metrics['dme_accuracy']:.3f}, joint accuracy {metrics['joint_accuracy']:.3f}")
    return ", ".join(parts) + f" ({metrics['n']} images, {metrics['images_per_second']} img/s)"


def _check(args: argparse.Namespace) -> None:
    """The argument errors argparse cannot see, before anything is loaded."""
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise EvaluateError(f"--out {args.out} is a file; give a folder (it is created if needed)")
    if getattr(args, "batch_size", 1) < 1 or getattr(args, "workers", 0) < 0:
        raise EvaluateError(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    if args.command != "cams" and getattr(args, "limit", None) is not None and args.limit < 1:
        raise EvaluateError(f"--limit must be at least 1, got {args.limit}")
    if args.command == "threshold" and not 0 < args.sensitivity <= 1:
        raise EvaluateError(f"--sensitivity is a referable sensitivity in (0, 1], got {args.sensitivity}")
    writes = {"threshold": True, "calibrate": True, "heads": True,
              "cams": getattr(args, "record", False) or getattr(args, "choose_default", False)}
    if writes.get(args.command, getattr(args, "record", False)) and not Path(args.checkpoint).is_dir():
        raise EvaluateError(f"{args.command} writes into a local checkpoint folder; {args.checkpoint} is not one")


def flag_form_message(argv: Sequence[str]) -> str:
    """What to type instead of the single-command form (flags first, no subcommand)."""
    given = [flag for flag in FLAG_FORM if flag in argv]
    steps = [FLAG_FORM[flag] for flag in given] or ["score"]
    renamed = [f"{old} is {new}" for old, new in RENAMED_FLAGS.items() if old in argv]
    return ("python -m drdemo.evaluate takes a subcommand first (score, threshold, calibrate, cams, "
            f"referral-share, heads): for these flags run {' then '.join(steps)}"
            + (f"; under cams {', '.join(renamed)}" if renamed else "")
            + "; python -m drdemo.evaluate COMMAND --help lists each one's flags")


def _message(exc: Exception) -> str:
    """The error's own message; for one raised in a DataLoader worker, its last line (not the traceback)."""
    text = str(exc)
    if "Original Traceback" in text:
        text = [line for line in text.splitlines() if line.strip()][-1].split(": ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0].startswith("--") and argv[0] != "--help":
        print(f"error: {flag_form_message(argv)}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    args.argv = argv
    run: Callable[[argparse.Namespace], str] = args.run
    try:
        _check(args)
        print(run(args))
    except (DrdemoError, OSError) as exc:
        print(f"error: {_message(exc)}", file=sys.stderr)
        return 2
    return 0
