"""Does each CAM method point at the lesions? Scores over a data set with lesion masks.

For every photo with a lesion mask (up to a limit; drdemo.data.lesions), each method explains the
model's predicted class (what the app shows by default) and is scored with `drdemo.cam.metrics` against the union of the
image's lesion masks, moved through the model's preprocessing. The pointing game is also reported
on the images the model itself grades as diseased (predicted class other than 0): where it answers
"No DR", its map shows evidence for health, which has no reason to sit on a lesion. A smooth random
map is scored the same way as the baseline every method must beat, and so is a map peaked at the
centre of the field of view: on real photos of diabetic retinopathy lesions crowd around the macula,
near the centre, so a method that does not beat this map has not shown it looks at lesions.
`python -m drdemo.evaluate cams` writes the result as cam_metrics.json and a grid of examples.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from tqdm import tqdm

from drdemo.calibration import class_probabilities
from drdemo.cam.explain import CAM_METHODS, Explainer, ExplainError, on_field_of_view, overlay
from drdemo.cam.methods import CAM_METHOD_NAMES
from drdemo.cam.metrics import centre_map, energy_share, is_flat, pointing_hit, pointing_tolerance, random_map
from drdemo.data import open_image
from drdemo.data.lesions import LesionSample, lesion_union
from drdemo.errors import DrdemoError
from drdemo.inference import view_logits
from drdemo.preprocess import field_of_view, fundus_mask, normalise, prepare_image, prepare_mask, preprocess_kwargs
from drdemo.tasks import named_class

DEFAULT_ROAD_PERCENTILES = (20, 40, 60, 80)
RANDOM_BASELINE = "random"
CENTRE_BASELINE = "centre"
BASELINES = (RANDOM_BASELINE, CENTRE_BASELINE)
# A method is said to beat the centre map when its pointing game is at least this much higher and its
# energy share on lesions at least this many times the centre map's: a margin a plain prior cannot reach.
BEATS_CENTRE_POINTING = 0.05
BEATS_CENTRE_ENERGY = 1.5


class CamEvaluationError(DrdemoError, ValueError):
    """The data cannot be used to score CAMs (no lesion masks, no images with lesions)."""


def evaluate_cams(loaded, samples: Sequence[LesionSample], methods: Sequence[str], default_method: str,
                  limit: int | None = 50, road_limit: int | None = 20,
                  road_percentiles: Sequence[int] = DEFAULT_ROAD_PERCENTILES, seed: int = 0,
                  grid_cases: int = 4, progress: bool = True,
                  layers: Sequence[str] | None = None) -> tuple[dict, list[dict]]:
    """Scores per method (at each of `layers`, default the checkpoint's CAM layer) and for the random and
    centre baselines, and the first `grid_cases` cases for a figure.

    ROAD needs a sparse linear solve per image and percentile, so it runs on the first `road_limit`
    images only; the pointing games use all `limit` images.
    """
    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown:
        raise CamEvaluationError(f"unknown CAM method(s) {', '.join(unknown)}; choose from {', '.join(CAM_METHODS)}")
    config = loaded.config
    layers = list(dict.fromkeys(layers or [config.cam_target_layer]))
    explainers = {}
    for layer in layers:
        try:
            explainers[layer] = Explainer(loaded.model, layer, config.cam_reshape, config.num_classes,
                                          config.calibration)
        except ExplainError as exc:
            raise CamEvaluationError(f"--layers: {exc}") from exc
    with_lesions = [s for s in samples if s.masks][:limit]
    if not with_lesions:
        raise CamEvaluationError("no photo with a lesion mask to score CAMs on")
    with torch.random.fork_rng():  # ROAD's imputation noise: seeded, without touching the caller's RNG
        torch.manual_seed(seed)
        return _score(loaded, with_lesions, methods, default_method, explainers, road_limit, road_percentiles,
                      np.random.default_rng(seed), grid_cases, progress)


def _score(loaded, with_lesions: Sequence[LesionSample], methods: Sequence[str], default_method: str,
           explainers: dict[str, Explainer], road_limit: int | None, road_percentiles: Sequence[int],
           rng: np.random.Generator, grid_cases: int, progress: bool) -> tuple[dict, list[dict]]:
    config, model = loaded.config, loaded.model
    grade_model = next(iter(explainers.values())).cam_model  # the served grade logits, for ROAD's targets
    kwargs = preprocess_kwargs(config)
    tolerance = pointing_tolerance(config.input_size)
    road = ROADCombined(percentiles=list(road_percentiles))
    default_layer = config.cam_target_layer if config.cam_target_layer in explainers else next(iter(explainers))
    keys = [(layer, method) for layer in explainers for method in methods] + [(None, b) for b in BASELINES]
    scores: dict[tuple, dict[str, list]] = {k: {"pointing": [], "energy": [], "road": [], "flat": []} for k in keys}
    area_shares, graded_dr, cases = [], [], []
    started = time.perf_counter()
    for index, sample in enumerate(tqdm(with_lesions, desc="CAM faithfulness", disable=not progress)):
        image = open_image(sample.path)
        view = prepare_image(image, config.input_size, kwargs["interpolation"], kwargs["crop_fov"])
        batch = normalise(view, config.mean, config.std, kwargs["local_contrast_sigma"],
                          kwargs["colour_balance"]).unsqueeze(0)
        mask = prepare_mask(lesion_union(sample, image.size, image.info.get("stored_size")), image,
                            config.input_size, kwargs["crop_fov"])
        area_shares.append(float(mask.mean()))
        maps = {}
        # every method explains the class the app would show: over the checkpoint's views, calibrated, named at
        # the checkpoint's referral threshold
        predicted = named_class(class_probabilities(view_logits(model, batch, config.test_time_views),
                                                    config.calibration)[0], config.task, config.referable_threshold)
        inside = field_of_view(view)
        for layer, explainer in explainers.items():
            for method in methods:  # on the retina only, as the app shows it
                heatmap = explainer.explain(batch, method=method, target=predicted).heatmap
                maps[layer, method] = on_field_of_view(heatmap, inside)
        graded_dr.append(predicted != 0)
        maps[None, RANDOM_BASELINE] = random_map(mask.shape, rng)
        maps[None, CENTRE_BASELINE] = centre_map(mask.shape, fundus_mask(np.asarray(view, dtype=np.uint8)))
        for key in keys:
            heatmap = maps[key]
            scores[key]["pointing"].append(pointing_hit(heatmap, mask, tolerance))
            scores[key]["energy"].append(energy_share(heatmap, mask))
            scores[key]["flat"].append(is_flat(heatmap))
            if road_limit is None or index < road_limit:
                with torch.no_grad():
                    scores[key]["road"].append(float(road(batch, heatmap[None], [ClassifierOutputTarget(predicted)],
                                                          grade_model)[0]))
        if len(cases) < grid_cases:
            cases.append({"image_id": sample.image_id, "grade": sample.grade, "predicted": predicted,
                          "image": view,
                          "mask": mask, "maps": {m: maps[default_layer, m] for m in methods}})

    def summary(key: tuple) -> dict:
        values = scores[key]
        hits_when_graded_dr = np.asarray(values["pointing"], dtype=float)[np.asarray(graded_dr, dtype=bool)]
        return {"pointing_game": float(np.mean(values["pointing"])),
                "pointing_game_graded_dr": float(hits_when_graded_dr.mean()) if len(hits_when_graded_dr) else None,
                "energy_pointing_game": float(np.mean(values["energy"])),
                "road_combined": float(np.mean(values["road"])) if values["road"] else None,
                "flat_maps": int(np.sum(values["flat"]))}

    by_layer = {layer: {m: summary((layer, m)) for m in methods} for layer in explainers}
    per_method = by_layer[default_layer]
    baseline = summary((None, RANDOM_BASELINE))
    centre = summary((None, CENTRE_BASELINE))
    notes = [f"{m} at {layer}: ROAD {row['road_combined']:.4f} is not better than the random map's "
             f"{baseline['road_combined']:.4f}" for layer, table in by_layer.items() for m, row in table.items()
             if row["road_combined"] is not None and baseline["road_combined"] is not None
             and row["road_combined"] <= baseline["road_combined"]]
    notes += [f"{m} at {layer}: does not beat the centre-peaked map (pointing game {row['pointing_game']:.3f} vs "
              f"{centre['pointing_game']:.3f}, energy share {row['energy_pointing_game']:.4f} vs "
              f"{centre['energy_pointing_game']:.4f})" for layer, table in by_layer.items()
              for m, row in table.items() if not beats_centre(row, centre)]

    def rank(pair: tuple[str, str]) -> tuple[float, float]:
        """Pointing game, then energy share. A pointing game no better than a centre-peaked blob's says nothing
        about the lesions (on IDRiD most lesions lie near the centre), so below it the energy share decides."""
        layer, method = pair
        row = by_layer[layer][method]
        return max(row["pointing_game"], centre["pointing_game"]), row["energy_pointing_game"]

    best_layer, best_method = max(((layer, m) for layer in by_layer for m in methods), key=rank)
    result = {
        "default_method": default_method,
        "default_layer": default_layer,
        "pointing_game": per_method[default_method]["pointing_game"] if default_method in per_method else None,
        "target": "the model's predicted class",
        "n_images": len(with_lesions),
        "n_images_graded_dr": int(np.sum(graded_dr)),
        "n_images_road": min(len(with_lesions), road_limit) if road_limit is not None else len(with_lesions),
        "pointing_tolerance_px": tolerance,
        "input_size": config.input_size,
        "road_percentiles": list(road_percentiles),
        "mask_area_share": float(np.mean(area_shares)),
        "methods": per_method,
        "layers": by_layer,
        "random_baseline": baseline,
        "centre_baseline": centre,
        "beats_centre": {m: beats_centre(row, centre) for m, row in per_method.items()},
        "best_pointing_method": max(methods, key=lambda m: rank((default_layer, m))),
        "best": {"layer": best_layer, "method": best_method, **by_layer[best_layer][best_method]},
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return result, cases


def beats_centre(scores: dict, centre: dict) -> bool:
    """Whether a method's scores clear the centre-peaked map by the bar of BEATS_CENTRE_*."""
    return (scores["pointing_game"] >= centre["pointing_game"] + BEATS_CENTRE_POINTING
            and scores["energy_pointing_game"] >= BEATS_CENTRE_ENERGY * centre["energy_pointing_game"])


def plot_cam_grid(cases: Sequence[dict], path: Path, title: str) -> Path:
    """Rows of: the model input, its lesion mask, and each method's overlay."""
    from matplotlib.figure import Figure

    methods = list(cases[0]["maps"]) if cases else []
    columns = 2 + len(methods)
    figure = Figure(figsize=(2.2 * columns, 2.3 * max(1, len(cases)) + 0.4))
    axes = figure.subplots(max(1, len(cases)), columns, squeeze=False)
    for row, case in enumerate(cases):
        image: Image.Image = case["image"]
        tinted = np.asarray(image, dtype=np.float32).copy()
        tinted[case["mask"]] = 0.4 * tinted[case["mask"]] + 0.6 * np.array([0, 255, 255])
        grade = "" if case["grade"] is None else f" (grade {case['grade']})"
        panels = [(image, f"{case['image_id']}{grade}"),
                  (Image.fromarray(tinted.astype(np.uint8)), "lesion mask"),
                  *[(overlay(image, case["maps"][m], 0.5), CAM_METHOD_NAMES[m]) for m in methods]]
        for column, (panel, label) in enumerate(panels):
            axis = axes[row][column]
            axis.imshow(panel)
            axis.set_title(label, fontsize=8)
            axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    return path
