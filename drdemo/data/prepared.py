"""Training photos decoded, cropped and resized once, with their lesion masks, and the three-head dataset.

Decoding a 1280 px JPEG, finding its field of view and resizing it costs more than a training step's
share of a small network on a CPU, and it is the same every epoch: `prepare_cached` runs
`drdemo.preprocess.prepare_image` once per photo and keeps the result as one uint8 array on disk
(a .npy file named by what went into it), which later runs and epochs memory-map. Augmentation,
colour balance, local contrast and normalisation still run per item, as in the app.

Lesion masks come from IDRiD's segmentation set, whose photos are mostly pixel-identical copies of
grading photos (`../shared/data/idrid/segmentation_grading_overlap.csv`); each mask is moved through
the grading photo's own crop and resize (`drdemo.preprocess.prepare_mask`), so it lines up with the
model input.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from drdemo.data.datasets import Sample, open_image
from drdemo.data.lesions import LesionSample, grading_copy_map, lesion_stack, load_lesion_samples
from drdemo.preprocess import normalise, prepare_image, prepare_mask
from drdemo.tasks import LESION_TYPES

NO_LABEL = -1  # a DME risk the data set does not give


def default_cache_dir() -> Path:
    """$DRDEMO_CACHE, else ~/.cache/drdemo: decoded inputs, never committed."""
    return Path(os.environ.get("DRDEMO_CACHE", Path.home() / ".cache" / "drdemo"))


def _key(parts: Sequence) -> str:
    return hashlib.sha256(json.dumps(list(parts), default=str).encode()).hexdigest()[:16]


def _file_facts(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, int(stat.st_mtime)


def _cached(path: Path, build: Callable[[], np.ndarray]) -> np.ndarray:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        array = build()
        temporary = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
        np.save(temporary, array)
        os.replace(temporary, path)  # two runs preparing the same cache never see half a file
    return np.load(path, mmap_mode="r")


def prepare_cached(samples: Sequence[Sample], input_size: int, interpolation: str = "bicubic", crop_fov: bool = True,
                   cache_dir: Path | None = None, progress: bool = True) -> np.ndarray:
    """(n, input_size, input_size, 3) uint8: `prepare_image` of each sample, in order, from the cache."""
    facts = [_file_facts(s.path) for s in samples]
    name = f"images_{input_size}_{_key([facts, input_size, interpolation, crop_fov])}.npy"

    def build() -> np.ndarray:
        out = np.zeros((len(samples), input_size, input_size, 3), np.uint8)
        for i, sample in enumerate(tqdm(samples, desc="preparing photos", unit="photo", disable=not progress)):
            out[i] = np.asarray(prepare_image(open_image(sample.path), input_size, interpolation, crop_fov))
        return out

    return _cached((cache_dir or default_cache_dir()) / name, build)


def prepared_masks(samples: Sequence[Sample], segmentation_root: Path | str, overlap_csv: Path | str,
                   input_size: int, crop_fov: bool = True, grading_part: str = "train",
                   cache_dir: Path | None = None) -> dict[int, np.ndarray]:
    """index into `samples` -> (lesion types, input_size, input_size) bool masks, for the samples whose
    photo has a copy with lesion masks in IDRiD's segmentation set; the others have none."""
    copy_of = {grading: segmentation for segmentation, grading in grading_copy_map(overlap_csv, grading_part).items()}
    lesion_by_id = {s.image_id: s for s in load_lesion_samples(segmentation_root)}
    chosen = [(i, lesion_by_id[copy_of[s.image_id]]) for i, s in enumerate(samples)
              if s.image_id in copy_of and copy_of[s.image_id] in lesion_by_id]
    if not chosen:
        return {}
    facts = [(_file_facts(samples[i].path), sorted((k, _file_facts(v)) for k, v in lesion.masks.items()))
             for i, lesion in chosen]
    name = f"masks_{input_size}_{_key([facts, input_size, crop_fov, list(LESION_TYPES)])}.npy"

    def build() -> np.ndarray:
        out = np.zeros((len(chosen), len(LESION_TYPES), input_size, input_size), bool)
        for row, (i, lesion) in enumerate(chosen):
            photo = open_image(samples[i].path)
            for t, layer in enumerate(lesion_stack(lesion)):
                out[row, t] = prepare_mask(layer, photo, input_size, crop_fov)
        return out

    stack = _cached((cache_dir or default_cache_dir()) / name, build)
    return {i: stack[row] for row, (i, _) in enumerate(chosen)}


def prepare_lesion_photos(samples: Sequence[LesionSample], input_size: int, interpolation: str = "bicubic",
                          crop_fov: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(n, input_size, input_size, 3) uint8 photos and (n, lesion types, input_size, input_size) bool masks of
    segmentation photos, each mask moved through its own photo's crop and resize."""
    images, masks = [], []
    for sample in samples:
        photo = open_image(sample.path)
        images.append(np.asarray(prepare_image(photo, input_size, interpolation, crop_fov)))
        masks.append(np.stack([prepare_mask(layer, photo, input_size, crop_fov) for layer in lesion_stack(sample)]))
    return np.stack(images), np.stack(masks)


class LesionGradingDataset(Dataset):
    """Items for a three-head model: (image tensor, {"grade", "dme", "masks", "has_masks"}).

    `images` are the prepared photos (`prepare_cached`); `masks` maps an index to its lesion masks at the
    input size (`prepared_masks`); a photo without masks gets zeros and has_masks False, so the lesion
    loss skips it, unless `teacher_maps` maps its index to a teacher's lesion probabilities (types, h, w): then
    those, resized to the input, are its soft masks. "masks" are float32 in [0, 1].
    `augment` (a JointAugment, training only) moves masks with the image; `normalise_kwargs`
    are the checkpoint's mean, std, local_contrast_sigma and colour_balance.
    """

    def __init__(self, samples: Sequence[Sample], images: np.ndarray, masks: Mapping[int, np.ndarray],
                 normalise_kwargs: Mapping, augment: Callable | None = None,
                 soft_targets: Mapping[str, np.ndarray] | None = None,
                 teacher_maps: Mapping[int, np.ndarray] | None = None):
        if len(images) != len(samples):
            raise ValueError(f"{len(images)} prepared images for {len(samples)} samples")
        # a teacher's log-probabilities per sample ({"grade": (n, 5), "dme": (n, 3)}), returned as
        # "teacher_grade" and "teacher_dme" (drdemo.train.distill)
        self.soft_targets = dict(soft_targets or {})
        if any(len(values) != len(samples) for values in self.soft_targets.values()):
            raise ValueError(f"soft targets for {len(samples)} samples needed")
        self.teacher_maps = dict(teacher_maps or {})
        if set(self.teacher_maps) & set(masks):
            raise ValueError("a photo has drawn lesion masks and a teacher's maps: give it one of them")
        self.samples, self.images, self.masks = list(samples), images, dict(masks)
        self.normalise_kwargs, self.augment = dict(normalise_kwargs), augment
        self.size = images.shape[1]
        self.targets = [s.grade for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image = Image.fromarray(np.asarray(self.images[index]))
        masks = self.masks.get(index)
        has_masks = masks is not None
        if has_masks:
            masks = np.asarray(masks)
        elif index in self.teacher_maps:
            masks, has_masks = soft_masks(self.teacher_maps[index], self.size), True
        else:
            masks = np.zeros((len(LESION_TYPES), self.size, self.size), bool)
        if self.augment is not None:
            image, masks = self.augment(image, masks)
        sample = self.samples[index]
        tensor = normalise(image, **self.normalise_kwargs)
        masks = masks.astype(np.float32) / 255 if masks.dtype == np.uint8 else masks.astype(np.float32)
        targets = {"grade": sample.grade, "dme": NO_LABEL if sample.dme is None else sample.dme,
                   "masks": torch.from_numpy(np.ascontiguousarray(masks)), "has_masks": has_masks}
        for name, values in self.soft_targets.items():
            targets[f"teacher_{name}"] = torch.from_numpy(np.asarray(values[index], dtype=np.float32))
        return tensor, targets


def soft_masks(probabilities: np.ndarray, size: int) -> np.ndarray:
    """(types, h, w) lesion probabilities -> (types, size, size) uint8 soft masks (probability x 255), resized
    bilinearly, the form JointAugment moves with the image."""
    return np.stack([np.clip(cv2.resize(np.asarray(layer, np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
                             * 255 + 0.5, 0, 255).astype(np.uint8) for layer in probabilities])
