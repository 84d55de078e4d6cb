"""The image gate: every upload is decoded and checked here, before anything else sees it.

Two steps, both meant to be shown to the person who uploaded the file:

* `load_image(path)` decodes safely. The file size and the pixel count in the header are checked
  before any pixel is decoded (a decompression bomb is refused without allocating it; PIL's own bomb
  check stays on as a second line), only the formats the page offers are parsed (the content is
  sniffed, the file name is ignored), the whole image is decoded (so a truncated file fails here, not
  in a model), large camera files are decoded at a reduced scale, and every mode (CMYK, 16-bit, RGBA,
  LA, palette, greyscale) becomes upright 8-bit RGB. Every failure is an `ImageRejected` whose
  message says what is wrong.
* `assess(image)` asks whether the picture looks like a colour fundus photograph and notes its
  quality, with a transparent rule set over physically grounded measurements (see "The fundus rules"
  below) taken on a ~256 px copy, so it costs milliseconds (10-30 ms on a busy 2-core machine).
  `check_upload(path)` runs both and writes the paragraph for the page.

The fundus rules
----------------
A colour fundus photograph is the retina seen through the pupil: a red-orange, evenly lit disc with
vessels, either surrounded by the camera's black mask (a full or a top/bottom clipped circle) or
cropped so that it fills the frame. Each rule below is a score in [0, 1] that ramps linearly between
a "fails" and a "passes" value (the `_RULES` table holds them; a rule with several measurements takes
the lowest). `fundus_score` is the lowest of the four rule scores and `is_fundus` is
`fundus_score >= FUNDUS_THRESHOLD` (0.5): every rule must be at least half-way met, so the threshold of
each measurement is the midpoint of its ramp, and the score says how close the weakest rule came.

1. colour    the field of view is red-orange: mean blue / mean red (the retina absorbs blue),
             mean green / mean red (casts may be yellow or greenish, but red stays on top),
             and most of the region is warm-coloured.
2. shape     the field of view is a large round disc (intersection over union with its circle),
             a rectangle (a crop), or the whole frame; and it covers a fair share of the frame.
3. surround  where there is a border, the band just outside the field of view is dark compared with
             the retina (the camera's black mask, or a dark screen in a photo of a screen).
4. texture   there is fine structure (vessels) inside the field of view, but not the many strong
             sharp edges of text, charts and screenshots.

The field of view is found as the largest connected region of warm-coloured pixels (hue in the
red-orange-yellow band, some saturation, not black), with holes (optic disc, exudates) filled. It is
found by colour rather than by brightness, so a grey frame or wall around a photographed screen is not
taken for retina.

Quality notes (blurred, too dark, over-exposed, low contrast, very small) are measured inside the field
of view scaled to QUALITY_SIZE px across, so they do not depend on the file's size; each note states the
measured value and its threshold (the constants below). They never refuse an image; the page shows them.
"""

from __future__ import annotations

import math
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageChops, UnidentifiedImageError

from drdemo.preprocess import to_rgb

MAX_PIXELS = 50_000_000   # a 6000 x 8000 camera file still fits
MAX_BYTES = 60 * 1024 * 1024
MIN_SIDE = 64
# Formats the page accepts; Pillow sniffs the content, so a PNG named .jpg opens as a PNG. Restricting
# the list keeps rarely used parsers (and EPS, which runs Ghostscript) away from uploads. Phone JPEGs
# with a second picture (depth map, preview) open through "JPEG" as MPO.
FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP", "GIF")
# Large images are decoded at a reduced scale: the models see 224-299 px and the gate 256 px, so a
# longer side of at least DECODE_TARGET keeps every detail that matters and saves most of the decode.
DECODE_ABOVE = 2048
DECODE_TARGET = 1024

FUNDUS_THRESHOLD = 0.5
PROBE_SIZE = 256          # longer side of the copy the fundus rules look at

# Warm pixels (the candidate retina) in OpenCV HSV units: hue 0-179 (degrees / 2), saturation and value 0-255.
WARM_HUE_MAX = 35         # up to 70 degrees: red, orange, yellow
WARM_HUE_MIN_WRAP = 170   # from 340 degrees: the red that wraps round
WARM_MIN_SATURATION = 40  # 0.16: washed-out photos keep their tint, neutral greys and whites do not
WARM_MIN_VALUE = 20       # above JPEG noise in a black surround; a dark periphery still counts ...
WARM_MIN_VALUE_DARK = 8   # ... lowered to 12% of the 99th percentile of brightness (not below 8) in a dark photo

# Rule ramps: (fails at, passes at); the score moves linearly between the two.
_RULES = {
    "blue_over_red": (0.80, 0.55),    # mean B / mean R in the field of view
    "green_over_red": (1.20, 0.95),   # mean G / mean R
    "warm_share": (0.50, 0.80),       # share of warm pixels in the field of view (holes filled)
    "circle_or_rect_iou": (0.72, 0.88),   # overlap of the field of view with its circle or rectangle
    "area_share": (0.015, 0.05),      # share of the frame the field of view covers
    "ring_over_retina": (0.70, 0.35),   # brightness of the band outside / median retina brightness
    "ring_spread": (0.30, 0.12),      # std of that band / median retina brightness
    "detail": (0.004, 0.010),         # std of fine detail / median brightness (vessels present)
    "strong_edges": (0.10, 0.04),     # share of pixels with text-like edges
}
# Texture is measured on the field of view at QUALITY_SIZE px across: fine detail is brightness minus its
# Gaussian blur (sigma DETAIL_SIGMA px); an edge is text-like when brightness changes by more than
# STRONG_EDGE of the median per pixel (a vessel's soft edge changes by a few percent).
DETAIL_SIGMA = 2.0
STRONG_EDGE = 0.25
UNIFORM_SPREAD = 4.0      # std of brightness (0-255) below which a frame is "nearly uniform"
NO_BORDER_SHARE = 0.90    # a field of view covering this share of the frame has no border
SATURATED_HINT = 0.10     # mean saturation below this: a greyscale picture (red-free, angiogram, document)

# Quality thresholds, measured on the field of view scaled to QUALITY_SIZE px across.
QUALITY_SIZE = 256
BLUR_MIN = 0.5            # variance of the Laplacian of brightness / median brightness (x 1000)
DARK_MEDIAN_MIN = 35      # median brightness (0-255, max channel) of the retina
DARK_P95_MIN = 70         # and its 95th percentile: a dark but usable photo still has bright parts
BRIGHT_CLIPPED_MAX = 0.10  # share of retina pixels at 250 or more in some channel
CONTRAST_MIN = 0.07       # std / median of brightness inside the field of view
SMALL_FOV_MIN = 224       # field of view across in original pixels; the smaller model input is 224 px


class ImageRejected(ValueError):
    """An upload that cannot be graded; the message is meant for the person who uploaded it."""


# --------------------------------------------------------------------------------------------- decoding


def _sniff_unsupported(path: Path) -> str | None:
    """A plain-words name for well-known files Pillow cannot (or should not) read."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(32)
    except OSError:
        return None
    if head.startswith(b"%PDF"):
        return "this is a PDF document, not an image; export the photo as JPEG or PNG"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif"):
        return "HEIC/AVIF photos (as iPhones save them) are not supported; export the photo as JPEG or PNG"
    if head.lstrip().startswith((b"<svg", b"<?xml", b"<!DOCTYPE", b"<html")):
        return "this is a text (SVG/HTML) file, not a photo"
    return None


def _bomb_message(name: str, exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    declared = f" {int(found.group(1)) / 1e6:.0f} megapixels," if found else ""
    return (f"{name}: the image declares{declared} far more than this app accepts ({MAX_PIXELS / 1e6:.0f} "
            f"megapixels), and was refused as a possible decompression bomb.")


def _to_rgb(image: Image.Image, fmt: str | None) -> Image.Image:
    """Upright 8-bit RGB with the colours as stored; `fmt` is the file's format (see `load_image`)."""
    if image.mode == "CMYK" and fmt in ("JPEG", "MPO") and "adobe" not in image.info:
        # Pillow reads every CMYK JPEG with Adobe's inverted convention; without an Adobe APP14 marker
        # the values are stored plainly, so undo the inversion.
        image = ImageChops.invert(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: full scale is 65535, so a dark photo stays dark (no stretch to its own peak).
        values = np.asarray(image, dtype=np.float32)
        peak = float(values.max()) if values.size else 0.0
        full = 255.0 if image.mode == "I" and peak <= 255 else max(65535.0, peak)
        eight = Image.fromarray(np.round(np.clip(values, 0, None) * (255.0 / full)).astype(np.uint8))
        return to_rgb(_copy_exif(image, eight))
    if image.mode == "PA":
        image = image.convert("RGBA")
    return to_rgb(image)


def _copy_exif(source: Image.Image, target: Image.Image) -> Image.Image:
    exif = source.getexif()
    if exif:
        target.info["exif"] = exif.tobytes()
    return target


def _reduce(image: Image.Image) -> Image.Image:
    """A copy at least DECODE_TARGET px on the longer side, by whole-factor box reduction."""
    factor = max(image.size) // DECODE_TARGET
    if max(image.size) <= DECODE_ABOVE or factor < 2:
        return image
    if image.mode in ("P", "1", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    reduced = image.reduce(factor)
    reduced.info = dict(image.info)
    return reduced


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode `path` into an upright RGB image, or raise ImageRejected saying why not.

    A JPEG larger than DECODE_ABOVE px is decoded at 1/2, 1/4 or 1/8 scale (never below DECODE_TARGET);
    other formats are box-reduced before conversion. `image.info["original_size"]` keeps the upright
    size of the file (after EXIF rotation), `image.info["format"]` the sniffed format.
    """
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageRejected(f"{name}: the file could not be read ({exc.strerror}).") from exc
    if size == 0:
        raise ImageRejected(f"{name}: the file is empty.")
    if size > MAX_BYTES:
        raise ImageRejected(f"{name}: the file is {size / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB.")
    unsupported = _sniff_unsupported(path)
    if unsupported:
        raise ImageRejected(f"{name}: {unsupported}.")
    try:
        Image.init()  # registers every plugin, so `formats` can name them (cheap after the first call)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower
            image = Image.open(path, formats=FORMATS)
        with image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageRejected(f"{name}: {width} x {height} pixels ({width * height / 1e6:.0f} megapixels) is "
                                    f"more than this app accepts ({MAX_PIXELS / 1e6:.0f} megapixels). "
                                    f"Downscale it and upload again.")
            if min(width, height) < MIN_SIDE:
                raise ImageRejected(f"{name}: {width} x {height} pixels is too small to grade "
                                    f"(at least {MIN_SIDE} pixels a side).")
            orientation = image.getexif().get(0x0112, 1)
            original = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
            fmt = image.format
            if fmt in ("JPEG", "MPO") and max(width, height) > DECODE_ABOVE:
                scale = DECODE_TARGET / max(width, height)
                image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
            image.load()
            rgb = _to_rgb(_reduce(image), fmt)
    except ImageRejected:
        raise
    except UnidentifiedImageError as exc:
        raise ImageRejected(f"{name}: this is not an image file this app can read "
                            f"(JPEG, PNG, TIFF, BMP, WebP).") from exc
    except Image.DecompressionBombError as exc:
        raise ImageRejected(_bomb_message(name, exc)) from exc
    except MemoryError as exc:
        raise ImageRejected(f"{name}: the image is too large to decode here.") from exc
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, struct.error,
            zlib.error) as exc:
        # Pillow reports damaged data with many exception types (zlib.error and struct.error are among them).
        raise ImageRejected(f"{name}: the image data is damaged or truncated ({exc}).") from exc
    rgb.info["original_size"] = original
    rgb.info["format"] = fmt
    return rgb


# --------------------------------------------------------------------------------------------- assessment


@dataclass(frozen=True)
class Assessment:
    """Does the picture look like a colour fundus photograph, and how good is it? All text is for the page."""

    is_fundus: bool
    fundus_score: float                  # the lowest rule score, in [0, 1]
    reasons: tuple[str, ...]             # why it does (or does not) look like a fundus photo
    quality: tuple[str, ...]             # quality notes, each with the measured value and the threshold
    field_of_view: str                   # "circular", "clipped circle", "no border" or "none" (no region
                                         # that is shaped and surrounded like a field of view)
    original_size: tuple[int, int]       # (width, height) of the file, upright
    rules: tuple[tuple[str, float], ...] = ()      # (rule, score in [0, 1]) behind fundus_score
    measurements: tuple[tuple[str, float], ...] = ()  # the raw values the rules ramp over


@dataclass(frozen=True)
class GateResult:
    """What `check_upload` hands the page: the image to grade, the assessment and a paragraph about it."""

    image: Image.Image
    assessment: Assessment
    message: str
    notes: tuple[str, ...]   # what the page shows beside the grade (empty for a good fundus photo)


def _ramp(value: float, rule: str) -> float:
    """0 at the rule's "fails" value, 1 at its "passes" value, linear between (either direction)."""
    fail, good = _RULES[rule]
    return float(np.clip((value - fail) / (good - fail), 0.0, 1.0))


def _probe(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """An RGB uint8 array whose longer side is at most `size` (area-averaged, never enlarged)."""
    rgb = image if isinstance(image, np.ndarray) else np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    scale = size / max(rgb.shape[:2])
    if scale < 1:
        rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    return rgb


def _brightest_channel(rgb: np.ndarray) -> np.ndarray:
    """Per pixel, the largest of R, G, B (HSV's value). Element-wise, ~10x faster than `rgb.max(axis=2)`,
    which numpy reduces three values at a time."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def _field_of_view(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(warm pixels, field of view): the largest warm region with its holes filled, as boolean masks."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    floor = float(np.clip(0.12 * np.percentile(val, 99), WARM_MIN_VALUE_DARK, WARM_MIN_VALUE))
    warm = ((hue <= WARM_HUE_MAX) | (hue >= WARM_HUE_MIN_WRAP)) & (sat >= WARM_MIN_SATURATION) & (val >= floor)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    closed = cv2.morphologyEx(warm.astype(np.uint8), cv2.MORPH_CLOSE, disc)  # bridge thin vessels and specks
    count, labels, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    if count < 2:
        return warm, np.zeros_like(warm)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = (labels == largest).astype(np.uint8)
    # Fill holes: whatever the background cannot reach from the border belongs to the region.
    padded = np.pad(1 - region, 1, constant_values=1)
    reach = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(padded, reach, (0, 0), 2)
    filled = (padded[1:-1, 1:-1] != 2)
    return warm, filled


def _shape(fov: np.ndarray) -> tuple[float, float, str]:
    """(overlap with the best circle or rectangle, area share, field-of-view kind)."""
    h, w = fov.shape
    area = float(fov.sum())
    share = area / (h * w)
    if area == 0:
        return 0.0, 0.0, "none"
    if share >= NO_BORDER_SHARE:
        return 1.0, share, "no border"
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    rect_iou = area / ((bottom - top) * (right - left))
    # The circle: its diameter is the larger extent; a side that touches the frame may be clipped,
    # so the centre sits half a diameter from the side that does not.
    radius = max(bottom - top, right - left) / 2
    touches_top, touches_bottom = top == 0, bottom == h
    touches_left, touches_right = left == 0, right == w
    cy = (top + bottom) / 2
    if touches_top != touches_bottom:
        cy = bottom - radius if touches_top else top + radius
    cx = (left + right) / 2
    if touches_left != touches_right:
        cx = right - radius if touches_left else left + radius
    yy, xx = np.ogrid[0:h, 0:w]
    circle = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= radius ** 2
    circle_iou = float((circle & fov).sum() / (circle | fov).sum())
    clipped = (touches_top and touches_bottom) or (touches_left and touches_right)
    if circle_iou >= rect_iou:
        kind = "clipped circle" if clipped else "circular"
    else:
        kind = "no border" if share >= 0.5 else "circular"   # a crop shown inside a frame (a screen)
    return max(circle_iou, rect_iou), share, kind


def _texture(gray: np.ndarray, inner: np.ndarray) -> tuple[float, float]:
    """(fine detail, share of strong edges) inside `inner`, both relative to the median brightness."""
    level = max(float(np.median(gray[inner])), 1.0)
    g = gray / level
    detail = g - cv2.GaussianBlur(g, (0, 0), DETAIL_SIGMA)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8, cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8
    strong = np.hypot(gx, gy) > STRONG_EDGE
    return float(detail[inner].std()), float(strong[inner].mean())


def _fov_crop(detailed: np.ndarray, fov: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(field of view at QUALITY_SIZE px across, its inner part away from the edge, its extent in probe pixels).

    Texture and quality are measured on this crop, so their values do not depend on the size of the file
    or on how much black surrounds the retina.
    """
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    h, w = fov.shape
    sx, sy = detailed.shape[1] / w, detailed.shape[0] / h
    crop = detailed[int(rows[0] * sy):math.ceil((rows[-1] + 1) * sy), int(cols[0] * sx):math.ceil((cols[-1] + 1) * sx)]
    scale = QUALITY_SIZE / max(crop.shape[:2])
    size = (max(8, round(crop.shape[1] * scale)), max(8, round(crop.shape[0] * scale)))
    crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    mask = cv2.resize(fov[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.uint8), size,
                      interpolation=cv2.INTER_NEAREST)
    inner = cv2.erode(mask, np.ones((11, 11), np.uint8)).astype(bool)  # ~4% of the field of view
    if inner.sum() < 0.05 * inner.size:
        inner = mask.astype(bool) if mask.any() else np.ones_like(inner)
    return crop, inner, (int(cols[-1] + 1 - cols[0]), int(rows[-1] + 1 - rows[0]))


def _quality(crop: np.ndarray, inside: np.ndarray, fov_across: float) -> tuple[tuple[str, ...], dict]:
    """Plain-language quality notes, measured inside the field of view at QUALITY_SIZE px across."""
    brightest = _brightest_channel(crop)
    bright = brightest.astype(np.float32)
    median = float(np.median(bright[inside]))
    p95 = float(np.percentile(bright[inside], 95))
    clipped = float((brightest[inside] >= 250).mean())
    contrast = float(bright[inside].std() / max(median, 1.0))
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32) / max(median, 1.0)
    blur = float(cv2.Laplacian(gray, cv2.CV_32F)[inside].var() * 1000)
    notes = []
    if blur < BLUR_MIN:
        notes.append(f"The photo looks blurred (sharpness {blur:.2f}; below {BLUR_MIN} counts as blurred).")
    if median < DARK_MEDIAN_MIN and p95 < DARK_P95_MIN:
        notes.append(f"The photo is too dark (median brightness {median:.0f} of 255, brightest parts {p95:.0f}; "
                     f"below {DARK_MEDIAN_MIN} and {DARK_P95_MIN} counts as too dark).")
    if clipped > BRIGHT_CLIPPED_MAX:
        notes.append(f"The photo is over-exposed ({clipped:.0%} of the retina is at full brightness; "
                     f"more than {BRIGHT_CLIPPED_MAX:.0%} counts as over-exposed).")
    if contrast < CONTRAST_MIN:
        notes.append(f"The photo has low contrast, as if washed out (contrast {contrast:.2f}; "
                     f"below {CONTRAST_MIN} counts as low).")
    if fov_across < SMALL_FOV_MIN:
        notes.append(f"The image is very small (the retina is {fov_across:.0f} pixels across; "
                     f"at least {SMALL_FOV_MIN} are needed for the models' full detail).")
    return tuple(notes), dict(sharpness=blur, median_brightness=median, p95_brightness=p95,
                              clipped_share=clipped, contrast=contrast)


def assess(image: Image.Image) -> Assessment:
    """Does `image` (as `load_image` returns it) look like a colour fundus photo, and how good is it?"""
    original_size = tuple(image.info.get("original_size", image.size))
    detailed = _probe(image, 2 * QUALITY_SIZE)   # one resize of the full image serves both steps
    rgb = _probe(detailed, PROBE_SIZE) if max(detailed.shape[:2]) > PROBE_SIZE else detailed
    h, w = rgb.shape[:2]
    warm, fov = _field_of_view(rgb)
    fit, share, kind = _shape(fov)
    rgbf = rgb.astype(np.float32)
    value = _brightest_channel(rgbf)
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32) / 255

    m: dict[str, float] = {"area_share": share, "circle_or_rect_iou": fit,
                           "mean_saturation": float(saturation.mean()), "frame_spread": float(value.std())}
    scores: dict[str, float] = {}
    reasons: list[str] = []
    if kind == "none" or share < _RULES["area_share"][0]:
        kind = "none"
        if m["frame_spread"] < UNIFORM_SPREAD:
            reasons.append(f"The picture is a nearly uniform frame (brightness varies by {m['frame_spread']:.1f} "
                           f"of 255), not a photo of a retina.")
        elif m["mean_saturation"] < SATURATED_HINT:
            reasons.append("The picture has almost no colour (greyscale, a document or a red-free/angiogram "
                           "image); this app grades colour fundus photos.")
        else:
            reasons.append(f"No red-orange retina found: warm-coloured pixels cover {share:.0%} of the picture "
                           f"(a fundus photo's field of view covers at least {_limit('area_share'):.1%}).")
        scores = {"colour": 0.0, "shape": 0.0, "surround": 0.0, "texture": 0.0}
    else:
        mean = rgbf[fov].mean(axis=0)
        m["blue_over_red"] = float(mean[2] / max(mean[0], 1.0))
        m["green_over_red"] = float(mean[1] / max(mean[0], 1.0))
        m["warm_share"] = float(warm[fov].mean())
        scores["colour"] = min(_ramp(m["blue_over_red"], "blue_over_red"),
                               _ramp(m["green_over_red"], "green_over_red"),
                               _ramp(m["warm_share"], "warm_share"))
        scores["shape"] = min(_ramp(fit, "circle_or_rect_iou"), _ramp(share, "area_share"))

        retina_level = max(float(np.median(value[fov])), 1.0)
        scores["surround"] = 1.0
        if kind != "no border":
            size = max(3, round(0.06 * math.sqrt(fov.sum())))
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * size + 1, 2 * size + 1))
            near = cv2.dilate(fov.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            ring = cv2.dilate(fov.astype(np.uint8), kernel).astype(bool) & ~near
            if ring.sum() >= 0.005 * h * w:
                m["ring_over_retina"] = float(np.percentile(value[ring], 75) / retina_level)
                m["ring_spread"] = float(value[ring].std() / retina_level)
                scores["surround"] = min(_ramp(m["ring_over_retina"], "ring_over_retina"),
                                         _ramp(m["ring_spread"], "ring_spread"))
        # Texture on the brightness inside the field of view, away from its edge, at a fixed scale.
        crop, inner, extent = _fov_crop(detailed, fov)
        gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
        m["detail"], m["strong_edges"] = _texture(gray, inner)
        scores["texture"] = min(_ramp(m["detail"], "detail"), _ramp(m["strong_edges"], "strong_edges"))
        reasons += _explain(scores, m, kind)
        if min(scores["shape"], scores["surround"]) < FUNDUS_THRESHOLD or m["warm_share"] < _limit("warm_share"):
            kind = "none"   # a warm region, but not a field of view (a chart's bars, a face on a wall, noise)

    score = min(scores.values())
    is_fundus = score >= FUNDUS_THRESHOLD
    if is_fundus:
        reasons.insert(0, f"Looks like a colour fundus photo ({kind.replace('no border', 'cropped, no border')} "
                          f"field of view; score {score:.2f}, at least {FUNDUS_THRESHOLD} needed).")
    else:
        reasons.insert(0, f"Does not look like a colour fundus photo (score {score:.2f}; at least "
                          f"{FUNDUS_THRESHOLD} needed).")

    quality: tuple[str, ...] = ()
    if kind != "none":  # quality notes describe a retina; there is none to describe otherwise
        across = max(extent) * max(original_size) / max(w, h)
        quality, measured = _quality(crop, inner, across)
        m.update(measured, fov_across=float(across))
    return Assessment(is_fundus=is_fundus, fundus_score=round(score, 4), reasons=tuple(reasons), quality=quality,
                      field_of_view=kind, original_size=(int(original_size[0]), int(original_size[1])),
                      rules=tuple((k, round(v, 4)) for k, v in scores.items()),
                      measurements=tuple((k, round(float(v), 4)) for k, v in m.items()))


def _limit(rule: str) -> float:
    """The decision threshold of a measurement: the midpoint of its ramp (rule score 0.5)."""
    return sum(_RULES[rule]) / 2


def _explain(scores: dict[str, float], m: dict[str, float], kind: str) -> list[str]:
    """One plain sentence per rule that fails (score < 0.5) or is only borderline (below 1), with the
    measured values and the limits; a one-line summary when every rule is clearly met."""
    def say(rule: str, failed: str, borderline: str, values: str) -> None:
        if scores[rule] < 1:
            out.append(f"{failed if scores[rule] < FUNDUS_THRESHOLD else borderline} ({values}).")

    out: list[str] = []
    say("colour", "The colour is not the red-orange of a retina", "The colour is less red-orange than usual",
        f"blue/red {m['blue_over_red']:.2f}, at most {_limit('blue_over_red'):.2f}; green/red "
        f"{m['green_over_red']:.2f}, at most {_limit('green_over_red'):.2f}; warm pixels {m['warm_share']:.0%}, "
        f"at least {_limit('warm_share'):.0%}")
    say("shape", "The coloured region is not a round or rectangular field of view of a fair size",
        "The field of view is less round or smaller than usual",
        f"fit to a circle or rectangle {m['circle_or_rect_iou']:.2f}, at least {_limit('circle_or_rect_iou'):.2f}; "
        f"covers {m['area_share']:.1%} of the picture, at least {_limit('area_share'):.1%}")
    if "ring_over_retina" in m:
        say("surround", "The surround is not the dark mask of a fundus camera",
            "The surround is lighter or less even than a fundus camera's black mask",
            f"its brightness is {m['ring_over_retina']:.0%} of the retina's, at most "
            f"{_limit('ring_over_retina'):.0%}; spread {m['ring_spread']:.2f}, at most {_limit('ring_spread'):.2f}")
    if m["strong_edges"] > _RULES["strong_edges"][1]:
        say("texture", "It has many sharp edges like text, a chart or a screenshot",
            "It has more sharp edges than a retina usually has",
            f"{m['strong_edges']:.1%} of the pixels, at most {_limit('strong_edges'):.1%}")
    else:
        say("texture", "There is too little fine structure (vessels) inside it",
            "There is less fine structure (vessels) than usual",
            f"detail {m['detail']:.4f}, at least {_limit('detail'):.4f}")
    if not out:
        out.append("Red-orange field of view, round or filling the frame, dark surround, vessel-like detail.")
    return out


def check_upload(path: str | os.PathLike, strict: bool = True) -> GateResult:
    """Decode and assess an upload. With `strict`, a picture that does not look like a fundus photo is
    refused (ImageRejected); otherwise it passes with a warning among the notes."""
    image = load_image(path)
    assessment = assess(image)
    name = Path(path).name
    if not assessment.is_fundus:
        why = " ".join(assessment.reasons[1:])
        if strict:
            seen = (" " + " ".join(assessment.quality)) if assessment.quality else ""
            raise ImageRejected(f"{name}: this does not look like a fundus photo (score "
                                f"{assessment.fundus_score:.2f}, at least {FUNDUS_THRESHOLD} needed). {why}{seen} "
                                f"Upload a colour photograph of the retina.")
        notes = (f"Warning: this does not look like a fundus photo (score {assessment.fundus_score:.2f}); "
                 f"the grade below is not meaningful. {why}",) + assessment.quality
    else:
        notes = assessment.quality
    width, height = assessment.original_size
    found = " ".join(assessment.quality) if assessment.quality else "No quality problems found."
    message = f"{name}: {width} x {height} pixels. {assessment.reasons[0]} {found}"
    if not assessment.is_fundus:
        message += " " + " ".join(assessment.reasons[1:])
    return GateResult(image=image, assessment=assessment, message=message, notes=notes)
