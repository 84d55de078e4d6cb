"""Lesion maps of a three-head model: upsampled over the model view, drawn one colour per lesion type, and
scored against pixel masks (AUPR and the pointing game, beside a blank and a centre-peaked map).

The lesion head predicts, for each cell of a grid about 1/8 of the input, the probability that a lesion
of each type lies in it; `upsample_lesion_maps` brings that to the model view's pixels and blanks the
black surround, so what the app draws and what evaluation scores are the same map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from PIL import Image
from sklearn.metrics import average_precision_score

from drdemo.cam.metrics import centre_map, pointing_hit

# One colour per lesion type (RGB), chosen to stand out from the retina's reds and from one another.
LESION_COLOURS: dict[str, tuple[int, int, int]] = {
    "microaneurysm": (255, 230, 0),     # yellow
    "haemorrhage": (0, 190, 255),       # sky blue
    "hard_exudate": (0, 255, 110),      # green
    "soft_exudate": (255, 60, 255),     # magenta
}
# A cell is drawn where its probability reaches this (the head's own decision boundary); fainter below.
DRAW_FROM = 0.5
FAINT_FROM = 0.25


def upsample_lesion_maps(probabilities: np.ndarray, lesion_types: Sequence[str],
                         inside: np.ndarray) -> dict[str, np.ndarray]:
    """(types, h, w) lesion probabilities -> lesion type -> (H, W) float32 probabilities at the size of the
    field-of-view mask `inside`, zero outside it."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 3 or probabilities.shape[0] != len(lesion_types):
        raise ValueError(f"expected ({len(lesion_types)}, h, w) lesion probabilities, got {probabilities.shape}")
    height, width = inside.shape
    return {name: np.where(inside, cv2.resize(layer, (width, height), interpolation=cv2.INTER_LINEAR), 0.0
                           ).astype(np.float32) for name, layer in zip(lesion_types, probabilities)}


def lesion_overlay(view: Image.Image, maps: Mapping[str, np.ndarray], opacity: float = 0.65) -> Image.Image:
    """The model view with each pixel tinted by its most probable lesion type: full `opacity` where the
    probability reaches DRAW_FROM, half of it from FAINT_FROM, untouched elsewhere."""
    base = np.asarray(view.convert("RGB"), dtype=np.float32)
    if not maps:
        return view.convert("RGB")
    names = list(maps)
    stack = np.stack([maps[name] for name in names])
    if stack.shape[1:] != base.shape[:2]:
        raise ValueError(f"lesion maps {stack.shape[1:]} and view {base.shape[:2]} differ in size")
    best = stack.argmax(axis=0)
    peak = stack.max(axis=0)
    colours = np.asarray([LESION_COLOURS.get(name, (255, 255, 255)) for name in names], dtype=np.float32)[best]
    alpha = np.where(peak >= DRAW_FROM, opacity, np.where(peak >= FAINT_FROM, opacity / 2, 0.0))[..., None]
    return Image.fromarray(np.round((1 - alpha) * base + alpha * colours).astype(np.uint8))


def score_lesion_maps(cases: Sequence[tuple[Mapping[str, np.ndarray], np.ndarray, np.ndarray]],
                      lesion_types: Sequence[str], tolerance: int = 0) -> dict:
    """Per lesion type, over `cases` of (maps, masks (types, H, W) bool, field of view (H, W) bool): AUPR of the
    map's pixels inside the field of view against the mask, beside a blank map's (the pixel prevalence,
    what a map that knows nothing scores) and a centre-peaked map's; and the pointing game of the
    summed map against the union of all lesions, beside the centre map's. Types absent from every
    photo are left out."""
    result: dict = {"n": len(cases), "per_type": {}}
    centres = [centre_map(inside.shape, inside) for _, _, inside in cases]
    for t, name in enumerate(lesion_types):
        scores, centre, truth = [], [], []
        for (maps, masks, inside), centred in zip(cases, centres):
            scores.append(maps[name][inside])
            centre.append(centred[inside])
            truth.append(masks[t][inside])
        truth_all = np.concatenate(truth)
        if not truth_all.any():
            continue
        prevalence = float(truth_all.mean())
        aupr = float(average_precision_score(truth_all, np.concatenate(scores)))
        result["per_type"][name] = {
            "photos_with_lesion": int(sum(bool(m.any()) for m in truth)), "aupr": aupr, "blank_aupr": prevalence,
            "centre_aupr": float(average_precision_score(truth_all, np.concatenate(centre))),
            "aupr_over_blank": aupr / prevalence}
    hits, centre_hits = [], []
    for (maps, masks, _), centred in zip(cases, centres):
        union = masks.any(axis=0)
        if not union.any():
            continue
        summed = np.sum([maps[name] for name in lesion_types], axis=0)
        hits.append(pointing_hit(summed, union, tolerance))
        centre_hits.append(pointing_hit(centred, union, tolerance))
    result["pointing_game"] = float(np.mean(hits)) if hits else None
    result["centre_pointing_game"] = float(np.mean(centre_hits)) if centre_hits else None
    return result
