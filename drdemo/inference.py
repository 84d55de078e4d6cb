"""The one batched inference path: model inputs -> logits of each symmetric view -> probabilities.

The predictor (the app), evaluation, training's validation and the CAM evaluation all call
`view_logits` and then `drdemo.calibration.class_probabilities`, so a checkpoint's
`test_time_views` and `calibration` mean the same everywhere.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

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
