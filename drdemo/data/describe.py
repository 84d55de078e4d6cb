"""One line naming a data set's images, for a checkpoint's records and card: what training learned
from (with its split) and what an evaluation measured on. For our generator the line is enough to make
the images again; for IDRiD it says which official part, camera and clinic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from drdemo.data.datasets import IDRID_CAMERA, IDRID_CITATION, Sample, generator_info


def describe_training_data(root: Path, layout: str, parts: Mapping[str, Sequence[Sample]],
                           part: str | None = None) -> str:
    """The training data of a run: the data set, its official `part` where it has parts, and the split."""
    sizes = ", ".join(f"{len(v)} {k}" for k, v in parts.items())
    if layout == "idrid":
        return (f"IDRiD disease grading ({root.name}), its official {part} part ({sum(map(len, parts.values()))} "
                f"photos from {IDRID_CAMERA}; ICDR grades by retina specialists), split grade-stratified into "
                f"{sizes}. {IDRID_CITATION}.")
    info = generator_info(root) if layout == "synthetic" else None
    if info is not None:
        return (f"Synthetic fundus images made by drdemo.data.synthetic (version {info.get('version')}, seed "
                f"{info.get('seed')}, {info.get('n')} images at {info.get('size')} px, {info.get('class_balance')} "
                f"grade balance), split by patient into {sizes}. No real patient images.")
    return f"{layout} dataset at {root.name}, split by patient into {sizes}."


def describe_evaluation_data(root: Path, layout: str, n: int, part: str | None = None) -> str:
    """The `n` images an evaluation measured on."""
    info = generator_info(root) if layout == "synthetic" else None
    if info is not None:
        return (f"{n} synthetic images (drdemo.data.synthetic version {info.get('version')}, seed {info.get('seed')}, "
                f"{info.get('size')} px, {info.get('class_balance')} grade balance), a seed not used for training")
    if layout == "idrid":
        return f"{n} photos of IDRiD's disease grading set ({part} part)"
    return f"{n} images of the {layout} data set at {root.name}"
