"""The image gate: every upload is decoded and checked here, before anything else sees it.

* `load_image(path)` decodes safely. The file size and the pixel count in the header are checked
  before any pixel is decoded (a decompression bomb is refused without allocating it; PIL's own bomb
  check stays on as a second line), only the formats the page offers are parsed (the content is
  sniffed, the file name is ignored), the whole image is decoded (so a truncated file fails here, not
  in a model), and drdemo.intake.decode turns it into upright 8-bit RGB exactly as training's data loaders
  do (large camera files at a reduced scale; CMYK, 16-bit, RGBA, LA, palette, greyscale). Every
  failure is an `ImageRejected` whose message says what is wrong.
* `assess(image)` (drdemo.intake.fundus_check) asks whether the picture is a colour fundus photograph and notes
  its quality: accepted, warned (graded with a visible warning) or refused.
* `check_upload(path)` runs both and returns a `GateResult` with the outcome, its reason, the measured
  values and the notes to show beside the grade; a refusal raises `ImageRejected`, whose `reason` and
  `details` carry the same for a batch's CSV.
* `reassessed(checked, assessment)` is the same for a further check of an admitted upload: the learned
  fundus-versus-everyday check (drdemo.intake.learned_check), which the serving layer runs before any grading.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from drdemo.errors import DrdemoError
from drdemo.intake.decode import decode_opened
from drdemo.intake.fundus_check import Assessment, assess

__all__ = ["MAX_BYTES", "MAX_PIXELS", "OUTCOME_WORDS", "Assessment", "GateResult", "ImageRejected", "admitted",
           "assess", "check_upload", "load_image", "reassessed"]

MAX_PIXELS = 50_000_000   # a 6000 x 8000 camera file still fits
MAX_BYTES = 60 * 1024 * 1024
MIN_SIDE = 64
# Formats the page accepts; Pillow sniffs the content, so a PNG named .jpg opens as a PNG. Restricting
# the list keeps rarely used parsers (and EPS, which runs Ghostscript) away from uploads. Phone JPEGs
# with a second picture (depth map, preview) open through "JPEG" as MPO.
FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP", "GIF")


class ImageRejected(DrdemoError, ValueError):
    """An upload that cannot be graded; the message is meant for the person who uploaded it.

    `reason` is the message without the file name, `details` the measured values behind a refusal of the
    fundus check (empty for a file that could not be decoded)."""

    def __init__(self, message: str, reason: str | None = None, details: str = ""):
        super().__init__(message)
        self.reason = reason if reason is not None else message.split(": ", 1)[-1]
        self.details = details


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


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode `path` into an upright RGB image, or raise ImageRejected saying why not.

    Pixels are decoded by drdemo.intake.decode, as the data loaders decode them (large files at a reduced
    scale, every mode and bit depth to 8-bit RGB). `image.info["original_size"]` keeps the upright
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
            rgb = decode_opened(image, path)
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


# --------------------------------------------------------------------------------------------- the outcome

OUTCOME_WORDS = {"accepted": "accepted", "warned": "accepted with a warning", "refused": "refused"}   # for people


@dataclass(frozen=True)
class GateResult:
    """What `check_upload` hands the page: the image to grade and what the check found."""

    image: Image.Image
    assessment: Assessment
    message: str             # one paragraph for logs and the page: size, outcome, reason, notes
    notes: tuple[str, ...]   # warnings to show beside the grade (empty for a good colour fundus photo)
    name: str = ""           # the upload's file name

    @property
    def outcome(self) -> str:
        return self.assessment.outcome

    @property
    def reason(self) -> str:
        return self.assessment.reason

    @property
    def details(self) -> str:
        return self.assessment.details


def check_upload(path: str | os.PathLike) -> GateResult:
    """Decode and assess an upload; a refused picture raises ImageRejected saying why."""
    image = load_image(path)
    return admitted(Path(path).name, image, assess(image))


def admitted(name: str, image: Image.Image, assessment: Assessment) -> GateResult:
    """The GateResult of `image` (the upload `name`) as `assessment` found it; ImageRejected when it is refused."""
    if assessment.outcome == "refused":
        raise ImageRejected(f"{name}: {assessment.reason} Upload a colour photograph of the retina. "
                            f"(Measured: {assessment.details})", reason=assessment.reason, details=assessment.details)
    width, height = assessment.original_size
    quality = " ".join(assessment.quality) if assessment.quality else "No quality problems found."
    message = (f"{name}: {width} x {height} pixels, {OUTCOME_WORDS[assessment.outcome]}. {assessment.reason} "
               f"{quality}")
    return GateResult(image=image, assessment=assessment, message=message, notes=assessment.warnings, name=name)


def reassessed(checked: GateResult, assessment: Assessment) -> GateResult:
    """`checked` with a further check's `assessment` (drdemo.intake.learned_check.judge); ImageRejected when that
    refuses it."""
    return admitted(checked.name or "the upload", checked.image, assessment)
