"""Photos with pixel masks of their lesions, for scoring heat maps: no grades needed.

Layouts, detected from the folder:

    idrid-segmentation  IDRiD's "A. Segmentation" folder: 1. Original Images/<split>/IDRiD_NN.jpg and
                        2. All Segmentation Groundtruths/<split>/<n. Lesion type>/IDRiD_NN_<XX>.tif
    synthetic           drdemo.data.synthetic's output: masks/<lesion type>/<id>.png beside images/

A photo without a mask file for a lesion type has none of that lesion; a lesion type's folder, or a
whole split of the ground truths, may be absent (other data sets published in IDRiD's layout leave
some out). The optic disc is anatomy, not a lesion, so its masks are not read.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from drdemo.data.datasets import (
    IDRID_IMAGES,
    IDRID_SEGMENTATION_LABELS,
    IMAGE_EXTENSIONS,
    PARTS,
    DatasetError,
    detect_layout,
    is_idrid_segmentation,
    load_samples,
    named_entry,
)
from drdemo.tasks import LESION_TYPES

LESION_LAYOUTS = ("idrid-segmentation", "synthetic")
# IDRiD's lesion folders (by the words after their number) and file suffixes; the optic disc is left out.
IDRID_LESIONS = {"microaneurysm": ("microaneurysms", "MA"), "haemorrhage": ("haemorrhages", "HE"),
                 "hard_exudate": ("hard exudates", "EX"), "soft_exudate": ("soft exudates", "SE")}


@dataclass(frozen=True)
class LesionSample:
    """One photo and the mask file of each lesion type it has (a type with no file: none of it)."""

    image_id: str
    path: Path
    masks: Mapping[str, Path] = field(default_factory=dict)
    grade: int | None = None     # where the data set grades its photos too (synthetic)
    part: str | None = None      # the official split the photo is in (IDRiD: train or test)


def detect_lesion_layout(root: Path | str) -> str:
    """Which of `LESION_LAYOUTS` a folder follows."""
    root = Path(root)
    if is_idrid_segmentation(root):
        return "idrid-segmentation"
    if (root / "masks").is_dir() and detect_layout(root) == "synthetic":
        return "synthetic"
    raise DatasetError(f"{root}: no lesion masks found; scoring heat maps needs lesion masks: IDRiD's segmentation "
                       f"folder ('A. Segmentation': {IDRID_IMAGES}/ and {IDRID_SEGMENTATION_LABELS}/) or a "
                       "synthetic set (python -m drdemo.data.synthetic writes masks/)")


def _idrid_part(root: Path, part: str) -> list[LesionSample]:
    word = PARTS["idrid"][part]
    images = named_entry(root / IDRID_IMAGES, word)
    if images is None:
        return []
    truths = named_entry(root / IDRID_SEGMENTATION_LABELS, word)  # None: this split has no ground truth
    lesion_folders = {name: named_entry(truths, folder_word) if truths else None
                      for name, (folder_word, _) in IDRID_LESIONS.items()}
    samples = []
    for path in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        masks = {}
        for name, folder in lesion_folders.items():
            if folder is None:
                continue
            suffix = IDRID_LESIONS[name][1]
            candidates = (folder / f"{path.stem}_{suffix}{ext}" for ext in (".tif", ".tiff", ".png"))
            found = next((candidate for candidate in candidates if candidate.is_file()), None)
            if found is not None:
                masks[name] = found
        samples.append(LesionSample(path.stem, path, masks, part=part))
    return samples


def _synthetic(root: Path) -> list[LesionSample]:
    masks_root = root / "masks"
    lesion_types = sorted(p.name for p in masks_root.iterdir() if p.is_dir())
    samples = []
    for sample in load_samples(root, "synthetic"):
        masks = {name: masks_root / name / f"{sample.image_id}.png" for name in lesion_types}
        samples.append(LesionSample(sample.image_id, sample.path, {k: v for k, v in masks.items() if v.is_file()},
                                    grade=sample.grade))
    return samples


def load_lesion_samples(root: Path | str, part: str | None = None) -> list[LesionSample]:
    """The photos of a lesion-mask folder that have at least one lesion, sorted by id; `part` picks one
    official split (IDRiD: train or test), None takes all."""
    root = Path(root)
    layout = detect_lesion_layout(root)
    if layout == "synthetic":
        if part is not None:
            raise DatasetError("a synthetic set has no official parts; make a split with python -m drdemo.data.split")
        samples = _synthetic(root)
    else:
        if part is not None and part not in PARTS["idrid"]:
            raise DatasetError(f"IDRiD's segmentation set has parts {' and '.join(PARTS['idrid'])}, not {part!r}")
        samples = [s for name in ([part] if part else PARTS["idrid"]) for s in _idrid_part(root, name)]
        ids = [s.image_id for s in samples]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"{root}: the same photo name in both splits; pass one part")
    with_lesions = [s for s in samples if s.masks]
    if not with_lesions:
        raise DatasetError(f"{root}: no photo{f' of the {part} part' if part else ''} has a lesion mask")
    return sorted(with_lesions, key=lambda s: s.image_id)


def read_mask(path: Path) -> np.ndarray:
    """A mask file as a boolean (H, W) array: set where the file is brighter than mid-grey (or set, in a 1-bit file)."""
    with Image.open(path) as mask:
        return np.asarray(mask, dtype=bool) if mask.mode == "1" else np.asarray(mask.convert("L")) > 127


def lesion_stack(sample: LesionSample, types: Sequence[str] = LESION_TYPES) -> np.ndarray:
    """(types, H, W) bool masks of a lesion sample, all False for a type it has no file for."""
    layers = {name: read_mask(sample.masks[name]) for name in types if name in sample.masks}
    if not layers:
        raise DatasetError(f"{sample.path}: no lesion mask")
    shapes = {pixels.shape for pixels in layers.values()}
    if len(shapes) > 1:
        raise DatasetError(f"{sample.path}: its lesion masks differ in size ({sorted(shapes)})")
    (shape,) = shapes
    return np.stack([layers[name] if name in layers else np.zeros(shape, bool) for name in types])


def lesion_union(sample: LesionSample, size: tuple[int, int] | None = None,
                 stored_size: tuple[int, int] | None = None) -> np.ndarray:
    """All lesion masks of a photo as one boolean (H, W) mask. `size` = (W, H) of the decoded photo
    checks it; masks drawn at the file's `stored_size` of a photo decoded smaller (drdemo.intake.decode
    reduces large files) are reduced with it, a pixel set wherever any lesion pixel falls in it."""
    union = lesion_stack(sample, tuple(sample.masks)).any(axis=0)
    if size is not None and union.shape != (size[1], size[0]):
        if stored_size is None or union.shape != (stored_size[1], stored_size[0]):
            photo = stored_size or size
            raise DatasetError(f"{sample.path}: its lesion mask is {union.shape[1]} x {union.shape[0]} "
                               f"but its photo is {photo[0]} x {photo[1]}")
        layer = Image.fromarray(union.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)
        union = np.asarray(layer) > 0
    return union


def grading_copy_map(overlap_csv: Path | str, grading_part: str = "train") -> dict[str, str]:
    """segmentation photo id -> the id of the grading photo of `grading_part` it is a copy of, from IDRiD's
    overlap table (segmentation_split,segmentation_image,grading_split,grading_image,correlation)."""
    word = PARTS["idrid"][grading_part]
    try:
        with open(overlap_csv, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DatasetError(f"{overlap_csv}: cannot read the overlap table ({exc})") from exc
    if rows and not {"segmentation_image", "grading_split", "grading_image"} <= set(rows[0]):
        raise DatasetError(f"{overlap_csv}: needs columns segmentation_image, grading_split and grading_image")
    return {Path(row["segmentation_image"]).stem: Path(row["grading_image"]).stem
            for row in rows if word in (row["grading_split"] or "").lower() and row["grading_image"]}


def grading_copies(overlap_csv: Path | str, grading_part: str = "train") -> set[str]:
    """Segmentation photo ids that are copies of grading photos of `grading_part`."""
    return set(grading_copy_map(overlap_csv, grading_part))


def split_by_copies(samples: Sequence[LesionSample], copies: set[str]) -> tuple[list[LesionSample], list[LesionSample]]:
    """(samples that are copies, the others): choose on the first, report on the second."""
    return [s for s in samples if s.image_id in copies], [s for s in samples if s.image_id not in copies]
