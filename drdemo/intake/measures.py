"""What the fundus check measures on a picture: its field of view, its vessel-like lines, its colour, its quality.

Plain measurements (numbers and masks, no verdicts); `drdemo.intake.fundus_check` holds the thresholds they are held to
and the words. Everything runs on small copies, so a 12 MP upload costs tens of milliseconds:

* `probe(image, size)`: an RGB array at most `size` px on its longer side;
* `field_of_view(rgb)`: the largest region brighter than the black level (10% of the 99th percentile of
  brightness, kept within 6..40 of 255), holes filled, with the shape of its boundary (fitted circle, even when
  clipped by the picture's edges, or rectangle), how much of its surround is lit, and how sharp its rim is;
* `embedded_retina(rgb)`: a round bright region on a darker surround inside a brighter frame (a wall, a page);
* `vessels(crop, inner, greyscale)`: long dark lines from a Hessian line filter on the log of the green channel;
* `colour(rgb, fov)` and `quality(crop, inner)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

PROBE_SIZE = 256          # longer side of the copy the field of view is found on
DETAIL_SIZE = 512         # longer side of the copy vessels and quality are read from
VESSEL_SIZE = 384         # the field of view is resampled to this many px across for the vessel map
QUALITY_SIZE = 256        # ... and to this many for the quality measurements
VIEW_SIZE = 224           # the learned check's network sees the whole picture squashed to this square

BLACK_LEVEL_SHARE, BLACK_LEVEL_MIN, BLACK_LEVEL_MAX = 0.10, 6, 40
MIN_FIELD_SHARE = 0.02    # a bright region smaller than this share of the picture is no field of view
NO_BORDER_SHARE = 0.92    # a region covering this share of the picture has no border (a crop)
VESSEL_SCALES = (1.0, 1.6, 2.5)   # Gaussian scales of the line filter, px at VESSEL_SIZE
VESSEL_MIN_DEPTH = 0.03   # a line must be at least this deep (log contrast) ...
VESSEL_NOISE_FACTOR = 4.0  # ... and this many times the picture's fine-grain noise
VESSEL_MIN_EXTENT = 0.10  # lines shorter than this share of the field-of-view diameter are not counted
STRONG_EDGE = 0.25        # a change of 25% of the level per pixel: the edges of text and drawn lines
WARM_HUE_MAX, WARM_HUE_MIN_WRAP, WARM_MIN_SATURATION = 35, 170, 40   # OpenCV units: hue = degrees / 2, 0-255


def probe(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """An RGB uint8 array whose longer side is at most `size` (area-averaged, never enlarged). A large PIL image
    is first box-reduced by a whole factor in PIL: copying it into numpy at full size costs more than the rest
    of the check."""
    if isinstance(image, Image.Image):
        image = image if image.mode == "RGB" else image.convert("RGB")
        factor = max(image.size) // size
        rgb = np.asarray(image.reduce(factor) if factor >= 2 else image)
    else:
        rgb = image
    scale = size / max(rgb.shape[:2])
    if scale < 1:
        rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    return rgb


def square_view(detailed: np.ndarray, size: int = VIEW_SIZE) -> np.ndarray:
    """(size, size, 3) uint8: the whole of a probe squashed to a square, the learned check's network input."""
    interpolation = cv2.INTER_AREA if min(detailed.shape[:2]) >= size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(detailed, (size, size), interpolation=interpolation))


def brightest_channel(rgb: np.ndarray) -> np.ndarray:
    """Per pixel, the largest of R, G, B. Element-wise, ~10x faster than `rgb.max(axis=2)`."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def _filled(region: np.ndarray) -> np.ndarray:
    """`region` with its holes filled: whatever the background cannot reach from the border."""
    padded = np.pad(1 - region.astype(np.uint8), 1, constant_values=1)
    reach = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(padded, reach, (0, 0), 2)
    return padded[1:-1, 1:-1] != 2


def _circle_fit(region: np.ndarray) -> float:
    """Overlap (IoU) of `region` with the circle fitted to its boundary away from the picture's edges, so a
    circle clipped by the frame fits as well as a whole one."""
    h, w = region.shape
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = max(contours, key=len)[:, 0, :].astype(np.float64)
    free = points[(points[:, 0] > 1) & (points[:, 0] < w - 2) & (points[:, 1] > 1) & (points[:, 1] < h - 2)]
    if len(free) < 10:
        return 0.0
    x, y = free[:, 0], free[:, 1]   # algebraic circle fit: x^2 + y^2 = 2 a x + 2 b y + c
    (a, b, c), *_ = np.linalg.lstsq(np.c_[2 * x, 2 * y, np.ones_like(x)], x * x + y * y, rcond=None)
    if c + a * a + b * b <= 0:
        return 0.0
    yy, xx = np.ogrid[0:h, 0:w]
    circle = (xx - a) ** 2 + (yy - b) ** 2 <= c + a * a + b * b
    return float((circle & region).sum() / max((circle | region).sum(), 1))


@dataclass
class FieldOfView:
    """The lit region of a picture: its mask (on the probe), its shape and the measurements behind it."""

    mask: np.ndarray
    shape: str      # circular, clipped circle, rectangular, no border or none
    measured: dict[str, float]


def field_of_view(rgb: np.ndarray) -> FieldOfView:
    """The largest region above the black level, its shape and its surround."""
    value = brightest_channel(rgb)
    level = float(np.clip(BLACK_LEVEL_SHARE * np.percentile(value, 99), BLACK_LEVEL_MIN, BLACK_LEVEL_MAX))
    lit = cv2.morphologyEx((cv2.medianBlur(value, 3) > level).astype(np.uint8), cv2.MORPH_OPEN,
                           np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(lit, connectivity=8)
    if count < 2:
        return FieldOfView(np.zeros(value.shape, bool), "none", {"field_share": 0.0})
    fov = _filled(labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))
    measured = {"field_share": float(fov.mean())}
    if measured["field_share"] < MIN_FIELD_SHARE:
        return FieldOfView(fov, "none", measured)
    if measured["field_share"] >= NO_BORDER_SHARE:
        return FieldOfView(fov, "no border", measured)
    h, w = fov.shape
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    rect_fit = float(fov.sum() / ((rows[-1] + 1 - rows[0]) * (cols[-1] + 1 - cols[0])))
    circle_fit = _circle_fit(fov)
    step = np.ones((3, 3), np.uint8)
    grown = cv2.dilate(fov.astype(np.uint8), step, iterations=3).astype(bool)
    away_from_edges = np.zeros_like(fov)
    away_from_edges[1:-1, 1:-1] = True
    rim_in = fov & ~cv2.erode(fov.astype(np.uint8), step, iterations=3).astype(bool) & away_from_edges
    rim_out = grown & ~fov & away_from_edges
    outside = ~cv2.dilate(fov.astype(np.uint8), step, iterations=2).astype(bool)
    retina = max(float(np.median(value[fov])), 1.0)
    measured.update(
        frame_fit=max(circle_fit, rect_fit), circle_fit=circle_fit,
        surround_lit=float((value[outside] > level).mean()) if outside.any() else 0.0,
        rim_step=float((np.median(value[rim_in]) - np.median(value[rim_out])) / retina)
        if rim_in.any() and rim_out.any() else 0.0)
    if circle_fit < rect_fit:
        return FieldOfView(fov, "rectangular", measured)
    clipped = (rows[0] == 0 and rows[-1] == h - 1) or (cols[0] == 0 and cols[-1] == w - 1)
    return FieldOfView(fov, "clipped circle" if clipped else "circular", measured)


def embedded_retina(rgb: np.ndarray, min_fit: float) -> np.ndarray | None:
    """The roundest bright region (circle fit >= `min_fit`) on a darker surround inside a brighter frame (a
    wall, a page): a retina on a screen or a slide. Tried at 15, 30 and 45% of the bright level; thin links
    to the frame are opened away."""
    value = cv2.GaussianBlur(brightest_channel(rgb), (0, 0), 1.0)
    top = float(np.percentile(value, 99))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    best, best_fit = None, min_fit
    for share in (0.15, 0.30, 0.45):
        bright = cv2.morphologyEx((value > share * top).astype(np.uint8), cv2.MORPH_OPEN, kernel)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=4)
        for label in 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:3]:
            if stats[label, cv2.CC_STAT_AREA] < 0.05 * value.size:
                break
            region = _filled(labels == label)
            if region.mean() > 0.85:
                continue
            near = cv2.dilate(region.astype(np.uint8), np.ones((7, 7), np.uint8))
            far = ~cv2.dilate(near, np.ones((15, 15), np.uint8)).astype(bool)
            retina = max(float(np.median(value[region])), 1.0)
            ring = near.astype(bool) & ~region
            darker_ring = ring.any() and np.median(value[ring]) < 0.4 * retina
            brighter_frame = far.any() and (value[far] > 0.5 * retina).mean() >= 0.2
            fit = _circle_fit(region)
            if darker_ring and brighter_frame and fit >= best_fit:
                best, best_fit = region, fit
    return best


def crop(detailed: np.ndarray, fov: np.ndarray, across: int) -> tuple[np.ndarray, np.ndarray]:
    """(the bounding box of `fov` (a probe mask) cut from `detailed` and resampled to `across` px on its longer
    side, and the part of it inside the field of view, ~4% away from the rim)."""
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    sy, sx = detailed.shape[0] / fov.shape[0], detailed.shape[1] / fov.shape[1]
    box = detailed[int(rows[0] * sy):math.ceil((rows[-1] + 1) * sy), int(cols[0] * sx):math.ceil((cols[-1] + 1) * sx)]
    scale = across / max(box.shape[:2])
    size = (max(8, round(box.shape[1] * scale)), max(8, round(box.shape[0] * scale)))
    box = cv2.resize(box, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    mask = cv2.resize(fov[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.uint8), size,
                      interpolation=cv2.INTER_NEAREST)
    rim = 2 * round(0.02 * across) + 1
    inner = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (rim, rim))).astype(bool)
    if inner.sum() < 0.05 * inner.size:
        inner = mask.astype(bool) if mask.any() else np.ones(mask.shape, bool)
    return box, inner


def _line_filter(log_green: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, ...]], np.ndarray]:
    """(dark-line strength, each scale's (line strength, 2 dxy, dxx - dyy), gradient magnitude at the finest scale).
    The strength is the largest scale-normalised Hessian eigenvalue across a line, less the one along it, over
    VESSEL_SCALES; damped where the gradient is large, so the dark side of a step edge (a blob's border) is not
    taken for a line. Each scale's terms are kept so that `_orientation` reads the angle only where it is used."""
    strength = finest = None
    scales = []
    for sigma in VESSEL_SCALES:
        smooth = cv2.GaussianBlur(log_green, (0, 0), sigma)
        dxx = cv2.Sobel(smooth, cv2.CV_32F, 2, 0, ksize=3)
        dyy = cv2.Sobel(smooth, cv2.CV_32F, 0, 2, ksize=3)
        twice_dxy = cv2.Sobel(smooth, cv2.CV_32F, 1, 1, ksize=3, scale=0.5)
        magnitude = cv2.magnitude(cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3),
                                  cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3))
        finest = magnitude if finest is None else finest
        difference, trace = dxx - dyy, dxx + dyy
        spread = np.sqrt(difference * difference + twice_dxy * twice_dxy)
        across, along = (trace + spread) * (sigma * sigma / 2), (trace - spread) * (sigma * sigma / 2)
        edge_damping = np.exp(-(magnitude * (sigma / 8) / np.maximum(0.5 * across, 1e-6)) ** 2)
        line = (across - np.abs(along)) * (across > 0) * edge_damping   # a product, not np.where: no branches
        strength = line if strength is None else np.maximum(strength, line)
        scales.append((line, twice_dxy, difference))
    return strength, scales, finest


def _orientation(scales: list[tuple[np.ndarray, ...]], where: np.ndarray) -> np.ndarray:
    """Angle (radians, -pi/2..pi/2) of the line at the flat pixel indices `where`, 0.5 * arctan2(2 dxy, dxx - dyy)
    at the scale where the line is strongest (the finest of equals)."""
    line, twice_dxy, difference = (np.stack([terms[i].ravel()[where] for terms in scales]) for i in range(3))
    best = np.argmax(line, axis=0)[None]
    return 0.5 * np.arctan2(np.take_along_axis(twice_dxy, best, 0)[0], np.take_along_axis(difference, best, 0)[0])


def vessels(box: np.ndarray, inner: np.ndarray, greyscale: bool) -> dict[str, float]:
    """Length (in field-of-view diameters), share of the retina, orientation spread (normalised entropy over 12
    directions) and green/red contrast of the long dark lines, and the share of text-like edges."""
    green = box.mean(axis=2, dtype=np.float32) if greyscale else box[..., 1].astype(np.float32)
    log_green = np.log(green + 8)
    fine = (log_green - cv2.GaussianBlur(log_green, (0, 0), 1.0))[inner]
    noise = 1.4826 * float(np.median(np.abs(fine - np.median(fine))))   # robust std of the fine grain
    strength, scales, finest = _line_filter(log_green)
    lines = (strength > max(VESSEL_MIN_DEPTH, VESSEL_NOISE_FACTOR * noise)) & inner
    _, labels, stats, _ = cv2.connectedComponentsWithStats(lines.astype(np.uint8), connectivity=8)
    extent = np.hypot(stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT]) / max(box.shape[:2])
    long = extent >= VESSEL_MIN_EXTENT
    vessel = np.concatenate([[False], long])[labels]
    measured = {"noise": noise, "vessel_length": float(extent[long].sum()),
                "vessel_share": float(vessel.sum() / max(inner.sum(), 1)),
                "vessel_orientation": float("nan"), "vessel_red_contrast": float("nan")}
    if vessel.sum() >= 20:
        counts = np.histogram(_orientation(scales, np.flatnonzero(vessel)), bins=12, range=(-np.pi / 2, np.pi / 2))[0]
        p = counts[counts > 0] / counts.sum()
        measured["vessel_orientation"] = float(-(p * np.log(p)).sum() / np.log(12))
        if not greyscale:   # depth below the local background, in green and in red
            green_red = [box[..., c].astype(np.float32) for c in (1, 0)]
            local = [np.maximum(cv2.GaussianBlur(channel, (0, 0), 6)[vessel], 1) for channel in green_red]
            depth = [np.median(1 - channel[vessel] / level) for channel, level in zip(green_red, local)]
            measured["vessel_red_contrast"] = float(depth[0] / max(depth[1], 0.01))
    measured["strong_edges"] = float((finest[inner] / 8 > STRONG_EDGE).mean())   # read at VESSEL_SCALES[0], 1 px
    return measured


def colour(rgb: np.ndarray, fov: np.ndarray) -> dict[str, float]:
    """Mean blue/red and green/red, mean saturation, and the share of warm pixels (hue within 70 degrees of red,
    saturation at least 0.16) inside `fov`."""
    mean = np.array([rgb[..., c][fov].mean(dtype=np.float32) for c in range(3)])   # exact sums: < 2**24 on a probe
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hue, saturation = hsv[..., 0][fov], hsv[..., 1][fov]
    warm = ((hue <= WARM_HUE_MAX) | (hue >= WARM_HUE_MIN_WRAP)) & (saturation >= WARM_MIN_SATURATION)
    return {"blue_over_red": float(mean[2] / max(mean[0], 1.0)), "green_over_red": float(mean[1] / max(mean[0], 1.0)),
            "saturation": float(saturation.mean()) / 255, "warm_share": float(warm.mean())}


def quality(box: np.ndarray, inner: np.ndarray) -> dict[str, float]:
    """Sharpness, exposure, contrast and evenness of the illumination inside `inner`."""
    bright = brightest_channel(box).astype(np.float32)
    gray = cv2.cvtColor(box, cv2.COLOR_RGB2GRAY).astype(np.float32)
    retina, retina_gray = bright[inner], gray[inner]
    median = float(np.median(retina))
    return {
        "sharpness": float(cv2.Laplacian(gray / max(median, 1.0), cv2.CV_32F)[inner].var() * 1000),
        "median_brightness": median, "p95_brightness": float(np.percentile(retina, 95)),
        # green, not the brightest channel: many cameras (DRIVE's, CHASE_DB1's) clip red on a well-exposed retina
        "clipped_share": float((box[..., 1][inner] >= 250).mean()),
        "contrast": float(retina_gray.std() / max(float(np.median(retina_gray)), 1.0)),
        "evenness": _evenness(bright, inner),
    }


def _evenness(bright: np.ndarray, inner: np.ndarray) -> float:
    """Median brightness of the darker half of the retina over that of the brighter half, the lower of the
    top/bottom and left/right splits (halves at the retina's centroid)."""
    rows, cols = np.nonzero(inner)
    values = bright[rows, cols]
    ratios = []
    for position in (rows, cols):
        first, second = position < position.mean(), position >= position.mean()
        if first.any() and second.any():
            halves = sorted((float(np.median(values[first])), float(np.median(values[second]))))
            ratios.append(halves[0] / max(halves[1], 1.0))
    return min(ratios, default=1.0)
