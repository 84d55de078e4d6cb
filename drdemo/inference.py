"""The one batched inference path: model inputs -> logits of each symmetric view -> probabilities.

The predictor (the app), evaluation, training's validation and the CAM evaluation all call
`view_logits` and then `drdemo.calibration.class_probabilities`, so a checkpoint's
`test_time_views` and `calibration` mean the same everywhere; evaluation and training's
validation run their data loaders through one loop, `loader_logits`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

# The eight symmetries of the square (a fundus photo has no canonical orientation), as
# (transpose, horizontal flip, vertical flip). A checkpoint uses the first `test_time_views`.
SYMMETRIES = [(t, h, v) for t in (False, True) for h in (False, True) for v in (False, True)]
VIEW_COUNTS = (1, 8)


def main_logits(output) -> torch.Tensor:
    """The classifier's logits from a model's output (InceptionV3 in training mode also returns
    its auxiliary head's)."""
    return output.logits if hasattr(output, "logits") else output


def symmetric_view(batch: torch.Tensor, transpose: bool, flip_horizontal: bool, flip_vertical: bool) -> torch.Tensor:
    if transpose:
        batch = batch.transpose(2, 3)
    if flip_horizontal:
        batch = batch.flip(3)
    if flip_vertical:
        batch = batch.flip(2)
    return batch


def view_logits(model: nn.Module, batch: torch.Tensor, views: int = 1) -> np.ndarray:
    """(n, views, C) float64 logits of `batch` (n, 3, H, W) and its first `views` symmetries, in one
    forward pass of n x views images, under inference mode and in the model's current mode."""
    if views not in VIEW_COUNTS:
        raise ValueError(f"test_time_views must be one of {VIEW_COUNTS}, got {views!r}")
    with torch.inference_mode():
        stacked = torch.cat([symmetric_view(batch, *symmetry) for symmetry in SYMMETRIES[:views]])
        logits = main_logits(model(stacked)).float()
    n = batch.shape[0]
    # torch.cat puts view v of image i at row v * n + i
    return logits.cpu().double().numpy().reshape(views, n, -1).transpose(1, 0, 2)


def loader_logits(model: nn.Module, loader: Iterable, views: int = 1, *,
                  memory_format: torch.memory_format = torch.preserve_format,
                  progress: str | None = None) -> tuple[np.ndarray, list]:
    """(n, views, C) float64 logits of every image batch `loader` yields as (images, labels), in order,
    and the labels batch by batch (so a caller can score each batch as it was loaded).

    The model runs in eval mode; every module's train/eval mode is restored afterwards (training
    may freeze some). Images go to the model's device in `memory_format`. `progress` is the label
    of a progress bar over the images on stderr; None shows none.
    """
    device = next(model.parameters()).device
    chunks, labels = [], []
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(loader.dataset), unit="img", desc=progress,
                                          disable=progress is None, file=sys.stderr) as bar:
            for images, batch_labels in loader:
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                chunks.append(view_logits(model, images, views))
                labels.append(batch_labels)
                bar.update(len(images))
    finally:
        for module, training in modes.items():
            module.training = training
    return np.concatenate(chunks), labels
