"""`python -m drdemo.evaluate heads` (or `python -m drdemo.evaluate.heads`): a three-head checkpoint judged on IDRiD,
and the shortcut checks.

    python -m drdemo.evaluate heads --checkpoint DIR --data "IDRiD/B. Disease Grading" --part val --choose-thresholds
    python -m drdemo.evaluate heads --checkpoint DIR --data "IDRiD/B. Disease Grading" --part test \
        --other-cameras ../shared/data/drive ../shared/data/chase_db1

`--part val` scores the validation photos the run held out (its training/split.json) and, with
`--choose-thresholds`, makes the highest thresholds that keep sensitivity >= 0.9 for referable
retinopathy (P(grade >= 2)) and for referable macular oedema (P(DME risk 2)) the checkpoint's.
`--part test` is IDRiD's official test split: the final report, once per finished checkpoint.

Every run writes OUT/metrics.json (and the same under the checkpoint's eval/) with, at its top level:
the grading metrics, `dme_accuracy`, `referable_dme_auc`, `joint_accuracy` (the IDRiD challenge's metric:
grade and DME risk both right), the combined referral, the colour-shift test, the mean-colour probe on
the raw photos and on the model input, and (with the segmentation folder) the lesion maps' AUPR per type,
beside a blank and a centre-peaked map: for `--part test` on the segmentation photos that copy no photo of
IDRiD's training part, for `--part val` on the copies of the validation photos (held out of training too),
so choices made on validation never read the test report's photos.

The colour-shift test re-balances each photo's colour inside the field of view to the mean colour of the
healthy training photos and, separately, of the diseased ones (per-channel gains, nothing else), and
reports the mean |change in P(referable)| and the share of referral decisions that flip: a model that
reads the retina, not the camera's colour balance, changes by nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from torch.utils.data import DataLoader

from drdemo.calibration import class_probabilities
from drdemo.cam.lesion_maps import score_lesion_maps, upsample_lesion_maps
from drdemo.cam.metrics import pointing_tolerance
from drdemo.checkpoint import CheckpointError, LoadedModel, code_commit, load_model
from drdemo.checkpoint.io import read_config, write_config
from drdemo.data import load_photos, load_samples
from drdemo.data.datasets import Sample
from drdemo.data.lesions import LesionSample, grading_copies, grading_copy_map, load_lesion_samples
from drdemo.data.prepared import LesionGradingDataset, prepare_cached, prepare_lesion_photos
from drdemo.errors import DrdemoError
from drdemo.inference import VIEW_COUNTS, loader_outputs
from drdemo.metrics import combined_referral_metrics, dme_metrics, grading_metrics, joint_accuracy
from drdemo.models import model_defaults
from drdemo.preprocess import balance_colour, field_of_view, fundus_mask, normalise, normalise_kwargs
from drdemo.tasks import REFERABLE_DME_RISK

MIN_SENSITIVITY = 0.9


def _outputs(loaded, images: np.ndarray, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
    config = loaded.config
    dataset = LesionGradingDataset(samples, images, {}, normalise_kwargs(config))
    loader = DataLoader(dataset, batch_size=16, shuffle=False)
    arrays, _ = loader_outputs(loaded.model, loader, config.test_time_views, progress="photos",
                               memory_format=model_defaults(config.architecture).memory_format)
    return {"grade": class_probabilities(arrays["logits"], config.calibration),
            "dme": class_probabilities(arrays["dme_logits"], None)}


def _with_views(loaded: LoadedModel, views: int) -> LoadedModel:
    """`loaded`, grading the mean of `views` symmetric views of each photo (drdemo.calibration)."""
    return replace(loaded, config=replace(loaded.config, test_time_views=views))


def fov_mean_colours(images: np.ndarray) -> np.ndarray:
    """(n, 3) mean RGB inside each prepared photo's field of view."""
    return np.stack([image[fundus_mask(image)].mean(axis=0) for image in np.asarray(images)])


def _rebalanced(images: np.ndarray, target_rgb: Sequence[float]) -> np.ndarray:
    return np.stack([np.asarray(balance_colour(Image.fromarray(np.asarray(image)), target_rgb)) for image in images])


def colour_shift_test(loaded, images: np.ndarray, samples: Sequence[Sample], healthy_rgb, diseased_rgb) -> dict:
    """Mean |P(referable) at the diseased colour - at the healthy colour| and the share of referrals that flip."""
    threshold = loaded.config.referable_threshold
    referable = []
    for target in (healthy_rgb, diseased_rgb):
        probabilities = _outputs(loaded, _rebalanced(images, target), samples)["grade"]
        referable.append(probabilities[:, 2:].sum(axis=1))
    delta = np.abs(referable[1] - referable[0])
    flipped = (referable[0] >= threshold) != (referable[1] >= threshold)
    return {"n": len(samples), "healthy_train_rgb": [round(float(v), 1) for v in healthy_rgb],
            "diseased_train_rgb": [round(float(v), 1) for v in diseased_rgb],
            "mean_abs_delta_p_referable": float(delta.mean()), "max_abs_delta_p_referable": float(delta.max()),
            "flipped_referrals": int(flipped.sum()), "flipped_share": float(flipped.mean())}


def _model_input_colours(config, images: np.ndarray) -> np.ndarray:
    kwargs = normalise_kwargs(config)
    colours = []
    for image in np.asarray(images):
        tensor = normalise(Image.fromarray(image), **kwargs).numpy()
        colours.append(tensor[:, fundus_mask(image)].mean(axis=1))
    return np.stack(colours)


def mean_colour_probe(train_colours: np.ndarray, train_grades: np.ndarray, test_colours: np.ndarray,
                      test_grades: np.ndarray) -> dict:
    """Any-DR from nothing but the mean colour inside the field of view: a logistic regression's AUC in 5-fold
    cross-validation on the training photos and, fitted on all of them, on the evaluated photos (None where
    too few photos of a class leave nothing to fit or score: fewer folds down to 2, then none)."""
    probe = LogisticRegression(max_iter=2000)
    y_train, y_test = (np.asarray(train_grades) >= 1).astype(int), (np.asarray(test_grades) >= 1).astype(int)
    smallest = min(int(y_train.sum()), int(len(y_train) - y_train.sum()))
    if smallest < 2:
        return {"train_cv_auc": None, "evaluated_auc": None}
    folds = StratifiedKFold(min(5, smallest), shuffle=True, random_state=0)
    cv = cross_val_predict(probe, train_colours, y_train, cv=folds, method="predict_proba")[:, 1]
    probe.fit(train_colours, y_train)
    test = probe.predict_proba(test_colours)[:, 1]
    return {"train_cv_auc": float(roc_auc_score(y_train, cv)),
            "evaluated_auc": float(roc_auc_score(y_test, test)) if 0 < y_test.sum() < len(y_test) else None}


def _highest_threshold(truth: np.ndarray, scores: np.ndarray, min_sensitivity: float, what: str) -> float:
    """The highest threshold (to 0.001) whose sensitivity for `truth` reaches `min_sensitivity`."""
    if truth.all() or not truth.any():
        raise CheckpointError(f"cannot choose the {what} threshold: the validation photos hold "
                              f"{'only' if truth.all() else 'no'} {what} cases")
    _, tpr, thresholds = roc_curve(truth, scores)
    reachable = thresholds[(tpr >= min_sensitivity) & np.isfinite(thresholds)]
    return float(np.floor(min(max(reachable.max(), 0.001), 0.999) * 1000) / 1000)


def lesion_map_photos(segmentation: Path, overlap: Path, copies_of: Sequence[str] | None = None
                      ) -> list[LesionSample]:
    """Segmentation photos, in IDRiD's order: those that are not copies of grading-training photos (the photos the
    test report gives), or with `copies_of` the copies of those grading-training photos (e.g. the validation
    part's: held out of training too, and free to choose on, which the test report's photos are not)."""
    if copies_of is None:
        copies = grading_copies(overlap, "train")
        return [s for s in load_lesion_samples(segmentation) if s.image_id not in copies]
    copy_of, wanted = grading_copy_map(overlap, "train"), set(copies_of)
    return [s for s in load_lesion_samples(segmentation) if copy_of.get(s.image_id) in wanted]


def score_prepared_lesion_maps(loaded, samples: Sequence[LesionSample], images: np.ndarray, masks: np.ndarray) -> dict:
    """Lesion-map AUPR and pointing game of `loaded` on `samples`, prepared as its inputs (`prepare_lesion_photos`)."""
    config = loaded.config
    dataset = LesionGradingDataset([Sample(s.image_id, s.path, 0, s.image_id) for s in samples], images, {},
                                   normalise_kwargs(config))
    arrays, _ = loader_outputs(loaded.model, DataLoader(dataset, batch_size=8), config.test_time_views,
                               keep_lesions=True, memory_format=model_defaults(config.architecture).memory_format)
    types = config.heads["lesion_types"]
    cases = []
    for image, mask, probabilities in zip(images, masks, arrays["lesion_probabilities"]):
        inside = field_of_view(Image.fromarray(image))
        cases.append((upsample_lesion_maps(probabilities, types, inside), mask, inside))
    result = score_lesion_maps(cases, types, tolerance=pointing_tolerance(config.input_size))
    result["photos"] = [s.image_id for s in samples]
    return result


def lesion_map_scores(loaded, segmentation: Path, overlap: Path, validation_ids: Sequence[str] | None = None) -> dict:
    """`score_prepared_lesion_maps` on the test report's photos, or on the copies of `validation_ids`
    (`lesion_map_photos`); {} where there are none."""
    samples = lesion_map_photos(segmentation, overlap, validation_ids)
    if not samples:
        return {}
    preprocessing = loaded.config.preprocessing
    images, masks = prepare_lesion_photos(samples, loaded.config.input_size, preprocessing["interpolation"],
                                          preprocessing["crop_fov"])
    return score_prepared_lesion_maps(loaded, samples, images, masks)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the three-head report, on its own command and on `python -m drdemo.evaluate heads`."""
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help="IDRiD's 'B. Disease Grading' folder")
    parser.add_argument("--part", required=True, choices=("val", "test"))
    parser.add_argument("--segmentation", type=Path,
                        help="IDRiD's 'A. Segmentation' folder (default: beside --data)")
    parser.add_argument("--overlap", type=Path,
                        help="segmentation_grading_overlap.csv (default: beside --data's parent)")
    parser.add_argument("--other-cameras", type=Path, nargs="*", default=[], help="ungraded photo folders whose "
                        "referral rate is reported (DRIVE, CHASE_DB1)")
    parser.add_argument("--choose-thresholds", action="store_true", help="with --part val: set both referral "
                        "thresholds for sensitivity >= 0.9")
    parser.add_argument("--views", type=int, choices=VIEW_COUNTS, help="grade the mean of this many symmetric views "
                        "of each photo, as the page's test-time augmentation does (default: the checkpoint's "
                        "test_time_views); the report's name then ends in _<N>views")
    parser.add_argument("--out", type=Path, help="folder for metrics.json (default: the checkpoint's eval/)")


def run(args: argparse.Namespace, command: str) -> str:
    """The report, written; its top-level numbers as JSON text."""
    if args.choose_thresholds and args.part != "val":
        raise CheckpointError("--choose-thresholds chooses on the validation part: use --part val")
    result = evaluate(args, command)
    return json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}, indent=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drdemo.evaluate.heads", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        print(run(args, "python -m drdemo.evaluate.heads " + " ".join(shlex.quote(a) for a in argv)))
    except DrdemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def evaluate(args: argparse.Namespace, command: str) -> dict:
    folder = args.checkpoint
    config = read_config(folder)
    if not config.heads:
        raise CheckpointError(f"{folder} is a single-head checkpoint; use python -m drdemo.evaluate score")
    if args.choose_thresholds and args.views is not None and args.views != config.test_time_views:
        raise CheckpointError("--choose-thresholds with --views: the thresholds would be chosen on other "
                              "probabilities than the checkpoint serves; set its views first (evaluate calibrate "
                              "--views N)")
    split = json.loads((folder / "training" / "split.json").read_text())["parts"]
    train_all = {s.image_id: s for s in load_samples(args.data, "idrid", part="train")}
    train = [train_all[i] for i in split["train"]]
    samples = ([train_all[i] for i in split["val"]] if args.part == "val"
               else load_samples(args.data, "idrid", part="test"))
    size = config.input_size
    interpolation, crop = config.preprocessing["interpolation"], config.preprocessing["crop_fov"]
    train_images = prepare_cached(train, size, interpolation, crop)
    images = prepare_cached(samples, size, interpolation, crop)
    views = config.test_time_views if args.views is None else args.views
    loaded = _with_views(load_model(folder, device="cpu"), views)
    outputs = _outputs(loaded, images, samples)
    grades = np.asarray([s.grade for s in samples])
    risks = np.asarray([s.dme for s in samples])
    p_referable, p_dme = outputs["grade"][:, 2:].sum(axis=1), outputs["dme"][:, REFERABLE_DME_RISK]
    if args.choose_thresholds:
        config = replace(config, referable_threshold=_highest_threshold(grades >= 2, p_referable, MIN_SENSITIVITY,
                                                                        "referable DR"),
                         dme_threshold=_highest_threshold(risks == REFERABLE_DME_RISK, p_dme, MIN_SENSITIVITY,
                                                          "referable DME"))
        write_config(folder, config)
        loaded = _with_views(load_model(folder, device="cpu"), views)
    photos = "the validation photos held out of training" if args.part == "val" else "the official test split"
    result = {"data": f"IDRiD disease grading, {photos} ({len(samples)} photos)", "part": args.part,
              "n": len(samples), "views": views, "command": command, "code_commit": code_commit()}
    result.update(grading_metrics(grades, outputs["grade"], "icdr5", config.class_names,
                                  referable_threshold=config.referable_threshold))
    result.update(dme_metrics(risks, outputs["dme"], threshold=config.dme_threshold))
    result["joint_accuracy"] = joint_accuracy(grades, outputs["grade"], risks, outputs["dme"],
                                              config.referable_threshold, config.dme_threshold)
    result["joint_most_probable_accuracy"] = joint_accuracy(grades, outputs["grade"], risks, outputs["dme"])
    result.update(combined_referral_metrics(grades, risks, p_referable, p_dme, config.referable_threshold,
                                            config.dme_threshold))
    train_grades = np.asarray([s.grade for s in train])
    train_colours = fov_mean_colours(train_images)
    healthy, diseased = train_colours[train_grades == 0].mean(axis=0), train_colours[train_grades >= 1].mean(axis=0)
    result["colour_shift"] = colour_shift_test(loaded, images, samples, healthy, diseased)
    result["mean_colour_probe"] = {
        "raw_photo": mean_colour_probe(train_colours, train_grades, fov_mean_colours(images), grades),
        "model_input": mean_colour_probe(_model_input_colours(config, train_images), train_grades,
                                         _model_input_colours(config, images), grades)}
    segmentation = args.segmentation or args.data.parent / "A. Segmentation"
    overlap = args.overlap or args.data.parent / "segmentation_grading_overlap.csv"
    if segmentation.is_dir() and overlap.is_file():
        # validation: the copies of the validation photos, so a choice never reads the test report's photos
        scores = lesion_map_scores(loaded, segmentation, overlap, split["val"] if args.part == "val" else None)
        if scores:
            result["lesion_maps"] = scores
    for other in args.other_cameras:
        photos = load_photos(other)
        other_images = prepare_cached(photos, size, interpolation, crop)
        other_outputs = _outputs(loaded, other_images, photos)
        referred = ((other_outputs["grade"][:, 2:].sum(axis=1) >= config.referable_threshold)
                    | (other_outputs["dme"][:, REFERABLE_DME_RISK] >= config.dme_threshold))
        result.setdefault("other_cameras", {})[other.name] = {"n": len(photos), "referred": int(referred.sum()),
                                                              "referred_share": float(referred.mean())}
    out = args.out or folder / "eval"
    out.mkdir(parents=True, exist_ok=True)
    name = f"lesion_aware_{args.part}" + (f"_{views}views" if views != config.test_time_views else "")
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.out is not None:
        (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
