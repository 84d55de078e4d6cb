"""Where a model looked: class activation maps through pytorch-grad-cam, and their overlays.

The network stays a plain nn.Module: the CAM hooks are attached for one call and removed again,
the target layer and its reshape come from the checkpoint's config.json, and drawing the overlay
happens here, outside the network. One forward and one backward pass give both the class
probabilities and the map (`Explanation.probabilities` comes from the same forward pass, calibrated
as the checkpoint says: drdemo.calibration).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from drdemo.calibration import class_probabilities
from drdemo.cam.methods import CAM_METHOD_NAMES
from drdemo.errors import DrdemoError
from drdemo.inference import main_logits
from drdemo.models import CAM_RESHAPES, model_defaults, target_layers
from drdemo.models.heads import HeadsOutput, MultiHeadNet
from drdemo.tasks import named_class

if TYPE_CHECKING:
    from drdemo.checkpoint import CheckpointConfig

def eigen_projection(activation_batch: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's `get_2d_projection` (the activations, centred, projected on their first principal
    direction) from the economy SVD: the same first right-singular vector without the full C x C matrix of the
    others, which on MedMamba-T's last stage (768 channels) took 20 of its 21 ms (tests/test_explain.py checks
    that both give the same maps)."""
    activation_batch = np.nan_to_num(np.asarray(activation_batch, dtype=np.float32), nan=0.0)
    projections = []
    for activations in activation_batch:
        reshaped = activations.reshape(activations.shape[0], -1).transpose()
        reshaped = reshaped - reshaped.mean(axis=0)
        _, _, vt = np.linalg.svd(reshaped, full_matrices=False)
        projections.append((reshaped @ vt[0, :]).reshape(activations.shape[1:]))
    return np.float32(projections)


class EconomyEigenCAM(EigenCAM):
    """EigenCAM with `eigen_projection`: the same maps, faster."""

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        return eigen_projection(activations)


# Method name -> pytorch-grad-cam class, in drdemo.cam.methods' order (its names are the keys).
# EigenCAM needs no gradients (and no target class).
_CAM_CLASSES = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
    "eigencam": EconomyEigenCAM,
}
CAM_METHODS = {name: _CAM_CLASSES[name] for name in CAM_METHOD_NAMES}


class ExplainError(DrdemoError, ValueError):
    """A CAM request that cannot be served (unknown method, layer or class)."""


@dataclass(frozen=True)
class Explanation:
    logits: np.ndarray          # (classes,) float64, of the same forward pass that made the map
    probabilities: np.ndarray   # (classes,) those logits through the explainer's calibration
    heatmap: np.ndarray         # (H, W) float32 in [0, 1], at the model input's resolution
    target: int                 # the class whose score the map explains
    method: str
    features: np.ndarray | None = None   # (F,) pooled features of the same forward pass, the classifier's input
    heads: dict | None = None            # a three-head model's other outputs of that pass, as
                                         # drdemo.inference.view_outputs returns them (one view)


class _GradeLogits(nn.Module):
    """A three-head model seen by pytorch-grad-cam: its served grade logits, the other heads of the same
    forward pass kept in `last` for the caller."""

    def __init__(self, model: MultiHeadNet):
        super().__init__()
        self.model = model
        self.last: HeadsOutput | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = self.model(x)
        return self.last.logits


class _NamedClass:
    """pytorch-grad-cam target: the score of the class the page names for these logits, after calibration
    (whose biases may make another class than the largest raw logit most probable) and, with a task and
    threshold, by drdemo.tasks.decided_classes, so the map explains the grade the page shows."""

    def __init__(self, calibration: dict | None, task: str | None = None, referable_threshold: float | None = None):
        self.calibration, self.task, self.referable_threshold = calibration, task, referable_threshold

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        logits = output.detach().double().cpu().numpy()[None]
        return output[named_class(class_probabilities(logits, self.calibration)[0], self.task,
                                  self.referable_threshold)]


class Explainer:
    """CAMs of one model at one target layer, or at several joined by "+" (e.g. "Mixed_6e+Mixed_7c":
    pytorch-grad-cam scales each layer's map to [0, 1] and averages them, so a coarse late layer
    chooses the region and a finer earlier one sharpens it). Thread-unsafe like the model itself:
    one call at a time."""

    @classmethod
    def for_checkpoint(cls, model: nn.Module, config: CheckpointConfig) -> Explainer:
        """Target layer, reshape and classes as the checkpoint's config.json states them."""
        return cls(model, config.cam_target_layer, config.cam_reshape, config.num_classes, config.calibration,
                   classifier=model_defaults(config.architecture).classifier, task=config.task,
                   referable_threshold=config.referable_threshold)

    def __init__(self, model: nn.Module, target_layer: str, reshape: str | None, num_classes: int,
                 calibration: dict | None = None, classifier: str | None = None, task: str | None = None,
                 referable_threshold: float | None = None):
        self.model, self.num_classes, self.calibration = model, num_classes, calibration
        # which class a map explains by default: the one the page names (None: the most probable)
        self.task, self.referable_threshold = task, referable_threshold
        self.classifier = classifier  # its input is recorded as the pooled features (single-head models)
        self.cam_model = _GradeLogits(model) if isinstance(model, MultiHeadNet) else model
        try:
            self.layers = target_layers(model, target_layer)
        except ValueError as exc:
            raise ExplainError(str(exc)) from exc
        if reshape is not None and reshape not in CAM_RESHAPES:
            raise ExplainError(f"unknown CAM reshape {reshape!r}; known: {', '.join(CAM_RESHAPES)}")
        self.reshape = CAM_RESHAPES[reshape] if reshape else None

    def explain(self, batch: torch.Tensor, method: str = "gradcam", target: int | None = None,
                referable_threshold: float | None = None) -> Explanation:
        """Map for the single image in `batch` (1, 3, H, W); `target` None explains the class the page names
        (at `referable_threshold`, default the checkpoint's; see `named_class`)."""
        threshold = self.referable_threshold if referable_threshold is None else referable_threshold
        if method not in CAM_METHODS:
            raise ExplainError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
        if batch.dim() != 4 or batch.shape[0] != 1:
            raise ExplainError(f"explain takes one image as a (1, 3, H, W) batch, got {tuple(batch.shape)}")
        if target is not None and not 0 <= target < self.num_classes:
            raise ExplainError(f"class {target} does not exist; the model has {self.num_classes} classes")
        # Registered before the CAM's own hooks, so they run first on each target layer's output.
        graph_starts = [layer.register_forward_hook(_start_graph_here) for layer in self.layers]
        captured: dict[str, torch.Tensor] = {}
        if self.classifier is not None and not isinstance(self.model, MultiHeadNet):
            graph_starts.append(self.model.get_submodule(self.classifier).register_forward_pre_hook(
                lambda _module, inputs: captured.__setitem__("features", inputs[0])))
        cam = None
        try:
            cam = CAM_METHODS[method](model=self.cam_model, target_layers=self.layers, reshape_transform=self.reshape)
            targets = [_NamedClass(self.calibration, self.task, threshold) if target is None
                       else ClassifierOutputTarget(int(target))]
            # A method without gradients (EigenCAM) runs the forward without autograd: MedMamba's scan then takes
            # its inference path (measured 130 -> 100 ms on MedMamba-T), and the map is the same.
            with torch.enable_grad() if cam.uses_gradients else torch.no_grad():
                maps = cam(input_tensor=batch, targets=targets)
            logits = main_logits(cam.outputs).detach().double().cpu().numpy()
        finally:
            # Not `with cam:`: BaseCAM.__exit__ prints and swallows an IndexError raised inside the block.
            if cam is not None:
                cam.activations_and_grads.release()
            for hook in graph_starts:
                hook.remove()
        probabilities = class_probabilities(logits, self.calibration)[0]
        chosen = named_class(probabilities, self.task, threshold) if target is None else int(target)
        heads = features = None
        if isinstance(self.cam_model, _GradeLogits) and self.cam_model.last is not None:
            heads = _heads_arrays(self.cam_model.last)
            features = heads["features"][0]
            self.cam_model.last = None
        elif "features" in captured:
            features = captured["features"].detach().flatten(1)[0].float().cpu().numpy()
        return Explanation(logits=logits[0], probabilities=probabilities,
                           heatmap=np.nan_to_num(maps[0]).astype(np.float32), target=chosen, method=method,
                           features=features, heads=heads)


def _heads_arrays(output: HeadsOutput) -> dict[str, np.ndarray]:
    """One image's three-head output as drdemo.inference.view_outputs lays it out for one view."""
    def one_view(values: torch.Tensor) -> np.ndarray:
        return values.detach().float().cpu().double().numpy()[:, None]

    return {"logits": one_view(output.logits), "dme_logits": one_view(output.dme_logits),
            "lesion_probabilities": torch.sigmoid(output.lesion_logits.detach().float()).cpu().numpy(),
            "features": output.features.detach().float().cpu().numpy()}


def on_field_of_view(heatmap: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """`heatmap` with everything outside the field of view (`inside`, a boolean mask of the same size) set to 0
    and rescaled so its peak on the retina is 1: a CAM's upsampling spreads energy into the black surround
    and the padding, which shows no retina and must not look like evidence."""
    if heatmap.shape != inside.shape:
        raise ExplainError(f"heat map {heatmap.shape} and field-of-view mask {inside.shape} differ in size")
    masked = np.where(inside, heatmap, 0.0).astype(np.float32)
    peak = float(masked.max())
    return masked / peak if peak > 0 else masked


def _start_graph_here(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """With frozen weights (a served model), make the target layer's output the leaf of the autograd
    graph: backward then stops at this layer and computes no weight gradients, which cuts a CAM's
    cost to little more than one forward pass. The map is the same: it needs only the gradient of
    the score with respect to this output. With several target layers only the first one run starts
    the graph (the later ones' outputs already require grad), so every layer still gets its gradient."""
    if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and not output.requires_grad:
        return output.detach().requires_grad_()
    return None


def overlay(image: Image.Image, heatmap: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """The heatmap as a jet colour map over `image` (resized to the map), `opacity` in [0, 1]."""
    if not 0.0 <= opacity <= 1.0:
        raise ExplainError(f"opacity must be in [0, 1], got {opacity}")
    height, width = heatmap.shape
    base = np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    colours = cv2.applyColorMap(np.uint8(255 * np.clip(heatmap, 0, 1)), cv2.COLORMAP_JET)
    colours = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB).astype(np.float32)
    # A plain alpha blend (pytorch-grad-cam's show_cam_on_image rescales the result, brightening the photo).
    return Image.fromarray(np.round((1.0 - opacity) * base + opacity * colours).astype(np.uint8))
