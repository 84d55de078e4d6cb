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


def _stacked_views(batch: torch.Tensor, views: int) -> torch.Tensor:
    """`batch` and its first `views` symmetries in one batch: view v of image i at row v * n + i."""
    if views not in VIEW_COUNTS:
        raise ValueError(f"test_time_views must be one of {VIEW_COUNTS}, got {views!r}")
    return torch.cat([symmetric_view(batch, *symmetry) for symmetry in SYMMETRIES[:views]])


def _by_view(values: torch.Tensor, views: int) -> np.ndarray:
    """(n x views, ...) rows of a stacked forward pass -> (n, views, C) float64."""
    return values.float().cpu().double().numpy().reshape(views, len(values) // views, -1).transpose(1, 0, 2)


def view_logits(model: nn.Module, batch: torch.Tensor, views: int = 1) -> np.ndarray:
    """(n, views, C) float64 logits of `batch` (n, 3, H, W) and its first `views` symmetries, in one
    forward pass of n x views images, under inference mode and in the model's current mode."""
    with torch.inference_mode():
        return _by_view(main_logits(model(_stacked_views(batch, views))), views)


def loader_logits(model: nn.Module, loader: Iterable, views: int = 1, *,
                  memory_format: torch.memory_format = torch.preserve_format,
                  progress: str | None = None) -> tuple[np.ndarray, list]:
    """(n, views, C) float64 logits of every image batch `loader` yields as (images, labels), in order,
    and the labels batch by batch (so a caller can score each batch as it was loaded).

    The model runs in eval mode; every module's train/eval mode is restored afterwards (training
    may freeze some). Images go to the model's device in `memory_format`. `progress` is the label
    of a progress bar over the images on stderr; None shows none.
    """
    outputs, labels = loader_outputs(model, loader, views, memory_format=memory_format, progress=progress)
    return outputs["logits"], labels


def inverse_view(maps: torch.Tensor, transpose: bool, flip_horizontal: bool, flip_vertical: bool) -> torch.Tensor:
    """Undo `symmetric_view` on (n, C, H, W) maps computed from a view, so they lie over the original image."""
    if flip_vertical:
        maps = maps.flip(2)
    if flip_horizontal:
        maps = maps.flip(3)
    if transpose:
        maps = maps.transpose(2, 3)
    return maps


def view_outputs(model: nn.Module, batch: torch.Tensor, views: int = 1, classifier: str | None = None
                 ) -> dict[str, np.ndarray]:
    """Every output of `model` on `batch` and its first `views` symmetries, in one forward pass of n x views
    images: "logits" (n, views, C) and "features" (n, F), the pooled features of the first view (the input
    of the `classifier` layer; omitted when None for a single-head model). A three-head model
    (drdemo.models.heads.MultiHeadNet) adds "softmax_logits" and "ordinal_log_probabilities" (n, views, 5),
    "dme_logits" (n, views, 3) and "lesion_probabilities" (n, types, h, w), averaged over the views after
    each is turned back over the original image."""
    from drdemo.models.heads import MultiHeadNet, corn_log_probabilities, pooled_features

    n = batch.shape[0]
    with torch.inference_mode():
        stacked = _stacked_views(batch, views)
        if not isinstance(model, MultiHeadNet):
            if classifier is None:
                return {"logits": _by_view(main_logits(model(stacked)), views)}
            output, features = pooled_features(model, classifier, stacked)
            return {"logits": _by_view(main_logits(output), views), "features": features[:n].float().cpu().numpy()}
        output = model(stacked)
        lesions = torch.sigmoid(output.lesion_logits.float())
        lesions = torch.stack([inverse_view(lesions[v * n:(v + 1) * n], *SYMMETRIES[v]) for v in range(views)]).mean(0)
        return {"logits": _by_view(output.logits, views), "softmax_logits": _by_view(output.softmax_logits, views),
                "ordinal_log_probabilities": _by_view(corn_log_probabilities(output.ordinal_logits), views),
                "dme_logits": _by_view(output.dme_logits, views), "lesion_probabilities": lesions.cpu().numpy(),
                "features": output.features[:n].float().cpu().numpy()}


def loader_outputs(model: nn.Module, loader: Iterable, views: int = 1, *, classifier: str | None = None,
                   memory_format: torch.memory_format = torch.preserve_format,
                   progress: str | None = None, keep_lesions: bool = False) -> tuple[dict[str, np.ndarray], list]:
    """`view_outputs` over every batch `loader` yields as (images, labels), concatenated, and the labels batch by
    batch; in eval mode, every module's mode restored afterwards (as `loader_logits`). Lesion maps are kept
    only when `keep_lesions` (they are large)."""
    device = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {}
    labels = []
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(loader.dataset), unit="img", desc=progress,
                                          disable=progress is None, file=sys.stderr) as bar:
            for images, batch_labels in loader:
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                for key, value in view_outputs(model, images, views, classifier).items():
                    if key != "lesion_probabilities" or keep_lesions:
                        parts.setdefault(key, []).append(value)
                labels.append(batch_labels)
                bar.update(len(images))
    finally:
        for module, training in modes.items():
            module.training = training
    return {key: np.concatenate(values) for key, values in parts.items()}, labels
