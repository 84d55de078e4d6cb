"""Knowledge distillation: a student (MedMamba, which has no pretrained weights) taught by a fine-tuned teacher
checkpoint's grade and DME probabilities (Hinton et al. 2015; DeiT's soft distillation, Touvron et al. 2021), and
optionally its lesion maps, learned as soft masks wherever a photo has no drawn ones.

The teacher runs once per photo, on the one evaluation path (its own preprocessing, config and views), and its
log-probabilities are kept beside the run (`training/teacher_targets.npz`), so a resumed run and every epoch read
the same targets; the student learns them on augmented views of the photos. Besides the labelled training
photos, the teacher labels photos nobody graded: IDRiD's segmentation photos that are not copies of any grading
photo (so no grading-test or validation photo slips in), and other cameras' photos (DRIVE, CHASE_DB1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from drdemo.checkpoint import CheckpointError, load_model
from drdemo.data import Sample, load_photos
from drdemo.data.lesions import detect_lesion_layout, grading_copy_map, load_lesion_samples
from drdemo.data.prepared import LesionGradingDataset, prepare_cached
from drdemo.errors import DrdemoError
from drdemo.inference import loader_outputs
from drdemo.models import model_defaults
from drdemo.preprocess import normalise_kwargs
from drdemo.tasks import LESION_TYPES

TEACHER_TARGETS_NAME = "teacher_targets.npz"
UNGRADED = -1  # the grade of a photo only the teacher labels


class DistillationError(DrdemoError, ValueError):
    """A teacher or unlabelled folder that cannot be used; the message says what to change."""


def unlabelled_photos(folders: Sequence[Path], overlap_csv: Path | None) -> list[Sample]:
    """The photos of `folders` for the teacher to label. IDRiD's segmentation folder gives only its photos that
    are copies of no grading photo (`overlap_csv` says which are), so neither grading-test photos nor the
    validation part's reach the student; any other folder gives all its photos (masks left out)."""
    photos: list[Sample] = []
    for folder in folders:
        folder = Path(folder)
        try:
            is_idrid = detect_lesion_layout(folder) == "idrid-segmentation"
        except DrdemoError:
            is_idrid = False
        if is_idrid:
            if overlap_csv is None or not Path(overlap_csv).is_file():
                raise DistillationError(f"--unlabelled {folder} is IDRiD's segmentation set: its photos are mostly "
                                        "copies of grading photos, so pass --lesion-overlap "
                                        "(segmentation_grading_overlap.csv) to leave those out")
            copies = set(grading_copy_map(overlap_csv, "train")) | set(grading_copy_map(overlap_csv, "test"))
            photos += [Sample(f"{folder.name}/{s.image_id}", s.path, UNGRADED, f"{folder.name}/{s.image_id}")
                       for s in load_lesion_samples(folder) if s.image_id not in copies]
        else:
            photos += [Sample(f"{folder.name}/{s.image_id}", s.path, UNGRADED, f"{folder.name}/{s.image_id}")
                       for s in load_photos(folder)]
    return photos


def teacher_map_indices(samples: Sequence[Sample], unlabelled_folders: Sequence[Path]) -> list[int]:
    """Indices of `samples` whose teacher lesion maps the student may learn: all but the photos of a lesion
    segmentation folder (IDRiD's), on which `evaluate heads` scores lesion maps against the drawn masks;
    learning the teacher's maps of those photos would make that score the teacher's, not the student's."""
    held = []
    for folder in unlabelled_folders:
        try:
            if detect_lesion_layout(Path(folder)) == "idrid-segmentation":
                held.append(f"{Path(folder).name}/")
        except DrdemoError:
            pass
    return [i for i, sample in enumerate(samples) if not sample.image_id.startswith(tuple(held))]


def teacher_targets(teacher: Path, samples: Sequence[Sample], device: torch.device, cache_dir: Path | None = None,
                    batch_size: int = 16, lesions: bool = False) -> dict[str, np.ndarray]:
    """The teacher's log-probabilities for each sample, in order: "grade" (n, grades) from its served grade head
    and "dme" (n, DME risks), through its own preprocessing and calibration-free heads; with `lesions`, also
    "lesions" (n, types, h, w), its lesion probabilities (float16) over its prepared photo, which covers the same
    field of view as the student's at another size."""
    try:
        loaded = load_model(teacher, device=device)
    except CheckpointError as exc:
        raise DistillationError(f"--teacher: {exc}") from exc
    config = loaded.config
    if not config.heads:
        raise DistillationError(f"--teacher {teacher} has one head; distillation needs a three-head checkpoint "
                                "(grade and DME risk)")
    preprocessing = config.preprocessing
    images = prepare_cached(samples, config.input_size, preprocessing["interpolation"], preprocessing["crop_fov"],
                            cache_dir=cache_dir, progress=True)
    dataset = LesionGradingDataset(samples, images, {}, normalise_kwargs(config))
    outputs, _ = loader_outputs(loaded.model, DataLoader(dataset, batch_size=batch_size), config.test_time_views,
                                memory_format=model_defaults(config.architecture).memory_format,
                                progress="teacher", keep_lesions=lesions)
    grade = torch.from_numpy(outputs["logits"]).float().log_softmax(-1).exp().mean(1).clamp_min(1e-8).log()
    dme = torch.from_numpy(outputs["dme_logits"]).float().log_softmax(-1).exp().mean(1).clamp_min(1e-8).log()
    targets = {"grade": grade.numpy(), "dme": dme.numpy()}
    if lesions:
        if list(config.heads.get("lesion_types", [])) != list(LESION_TYPES):
            raise DistillationError(f"--teacher {teacher} maps {config.heads.get('lesion_types')}, not the "
                                    f"student's {list(LESION_TYPES)}")
        targets["lesions"] = outputs["lesion_probabilities"].astype(np.float16)
    return targets


def load_or_compute_teacher_targets(path: Path, teacher: Path, samples: Sequence[Sample], device: torch.device,
                                    cache_dir: Path | None = None, lesions: bool = False) -> dict[str, np.ndarray]:
    """`teacher_targets`, kept in `path` with the photos they belong to, so a resumed run reads the same ones."""
    ids = np.asarray([s.image_id for s in samples])
    wanted = ("grade", "dme", "lesions") if lesions else ("grade", "dme")
    if path.is_file():
        with np.load(path) as saved:
            if saved["ids"].tolist() == ids.tolist() and all(key in saved for key in wanted):
                return {key: saved[key] for key in wanted}
    targets = teacher_targets(teacher, samples, device, cache_dir, lesions=lesions)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(temporary, ids=ids, **targets)
    os.replace(temporary, path)  # a reader never sees half a file
    return targets


def distillation_loss(student_logits: torch.Tensor, teacher_log_probabilities: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) with both softened by `temperature`, times temperature squared (Hinton's scaling,
    so the gradient's size does not depend on it), averaged over the batch."""
    teacher = F.log_softmax(teacher_log_probabilities.float() / temperature, dim=-1)
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature ** 2
