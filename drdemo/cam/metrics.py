"""How well a class activation map points at the lesions: scores for one map against one mask.

- pointing game (Zhang et al., 2018): is the map's maximum within `tolerance` pixels of a lesion?
- energy pointing game (Wang et al., Score-CAM 2020): the share of the map's mass inside the lesions;
  a map that knows nothing (uniform) scores the lesions' area share, so compare against that.
- perturbation faithfulness: ROAD (Rong et al., 2022) from pytorch-grad-cam, against a random map.

Maps are (H, W) arrays at the model input's resolution; masks are boolean arrays of the same shape
(see `drdemo.preprocess.prepare_mask`).
"""

from __future__ import annotations

import cv2
import numpy as np

# Zhang et al. use 15 px at 224 px input; scaled to other input sizes.
POINTING_TOLERANCE_AT_224 = 15


def pointing_tolerance(input_size: int) -> int:
    return max(1, round(POINTING_TOLERANCE_AT_224 * input_size / 224))


def is_flat(heatmap: np.ndarray) -> bool:
    """A map with no maximum to point with (all values equal, e.g. an all-zero Grad-CAM)."""
    return bool(np.ptp(heatmap) <= 1e-12)


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """True when the map's maximum lies on the mask or within `tolerance` pixels of it.

    A flat map points nowhere and misses. With several equal maxima, the first (row-major) counts.
    """
    _check(heatmap, mask)
    if is_flat(heatmap) or not mask.any():
        return False
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    if tolerance:
        # distance from every pixel to the nearest lesion pixel
        distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
        return bool(distance[row, col] <= tolerance)
    return bool(mask[row, col])


def energy_share(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (non-negative) map's mass that falls on the mask; a zero map counts as uniform."""
    _check(heatmap, mask)
    weights = np.clip(heatmap.astype(np.float64), 0, None)
    total = weights.sum()
    if total <= 0:
        return float(mask.mean())
    return float(weights[mask].sum() / total)


def random_map(shape: tuple[int, int], rng: np.random.Generator, grid: int = 7) -> np.ndarray:
    """A smooth random map at CAM-like resolution (grid x grid, upsampled): the baseline a CAM must beat."""
    coarse = rng.random((grid, grid)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def centre_map(shape: tuple[int, int], inside: np.ndarray | None = None, sigma_share: float = 0.25) -> np.ndarray:
    """A Gaussian peaked at the centre of the field of view (the centroid of `inside`, else the frame's
    centre), sigma = `sigma_share` x the side: the baseline that knows only that lesions of diabetic
    retinopathy crowd around the macula, near the centre of a fundus photo."""
    height, width = shape
    if inside is not None and inside.any():
        rows, cols = np.nonzero(inside)
        centre_y, centre_x = rows.mean(), cols.mean()
    else:
        centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    sigma = sigma_share * max(height, width)
    return np.exp(-((ys - centre_y) ** 2 + (xs - centre_x) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def _check(heatmap: np.ndarray, mask: np.ndarray) -> None:
    if heatmap.shape != mask.shape or heatmap.ndim != 2:
        raise ValueError(f"heatmap and mask must be 2-D arrays of one shape, got {heatmap.shape} and {mask.shape}")
    if mask.dtype != bool:
        raise ValueError(f"mask must be boolean, got {mask.dtype}")
