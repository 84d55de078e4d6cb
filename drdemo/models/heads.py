"""One backbone, three heads: the DR grade, the macular oedema (DME) risk and lesion maps.

`MultiHeadNet` wraps any registry backbone without changing it: the backbone's own classifier
stays the softmax grade head (so a single-head checkpoint's weights load into it unchanged), the
pooled features that classifier receives feed the DME head and an ordinal grade head, and the
outputs of the lesion layers feed a small convolutional decoder with one logit map per lesion type:
one mid-level stage (about 1/8 of the input), or several stages fused at the finest one's resolution,
as a feature pyramid does. Both are read with forward hooks for the one call, so the backbone stays
a plain nn.Module and a CAM's hooks see its layers as before.

The ordinal head is CORN (Shi et al., 2021): K - 1 conditional logits, P(y > k | y > k - 1), whose
running products give P(y > k) and, by differences, five class probabilities that are always
valid. `grade_head` says which of the two grade heads the served `logits` come from; as
log-probabilities for the ordinal head, so calibration and the rest of the pipeline treat both alike.

With `lesion_evidence` (drdemo.models.lesion_evidence, fitted after training) the served `logits` and
`dme_logits` blend the network's log-probabilities with those the lesion maps give; `softmax_logits` and
`ordinal_logits` stay the network's own, which training's losses read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from drdemo.models.lesion_evidence import LesionEvidence, blend, is_blend_weight

GRADE_HEADS = ("softmax", "ordinal")
BACKBONE_PREFIX = "backbone."  # a MultiHeadNet's backbone layers are named as in the plain model, after this


@dataclass
class HeadsOutput:
    """What a MultiHeadNet returns; `logits` is the served grade head's, as in a single-head model."""

    logits: torch.Tensor                 # (B, grades): softmax logits or ordinal log-probabilities
    softmax_logits: torch.Tensor         # (B, grades)
    ordinal_logits: torch.Tensor         # (B, grades - 1): CORN's conditional logits
    dme_logits: torch.Tensor             # (B, DME classes)
    lesion_logits: torch.Tensor          # (B, lesion types, h, w) at the (finest) lesion layer's resolution
    features: torch.Tensor               # (B, F) pooled features, the classifier's input
    aux_logits: torch.Tensor | None = None  # InceptionV3's auxiliary head, in training mode


def corn_log_probabilities(conditional_logits: torch.Tensor) -> torch.Tensor:
    """(B, K - 1) CORN conditional logits -> (B, K) log class probabilities."""
    survival = torch.cumprod(torch.sigmoid(conditional_logits.float()), dim=1)   # P(y > k), k = 0..K-2
    ones = torch.ones_like(survival[:, :1])
    zeros = torch.zeros_like(survival[:, :1])
    above = torch.cat([ones, survival], dim=1)          # P(y > k - 1) = P(y >= k)
    below = torch.cat([survival, zeros], dim=1)         # P(y > k)
    return torch.log((above - below).clamp_min(1e-12))


def corn_loss(conditional_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CORN's loss: task k is trained only on the samples with y > k - 1, to predict y > k."""
    losses, count = [], 0
    for k in range(conditional_logits.shape[1]):
        eligible = targets > k - 1
        if eligible.any():
            losses.append(F.binary_cross_entropy_with_logits(
                conditional_logits[eligible, k].float(), (targets[eligible] > k).float(), reduction="sum"))
            count += int(eligible.sum())
    return torch.stack(losses).sum() / max(count, 1)


def lesion_map_loss(lesion_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice of (B, T, h, w) lesion logits against (B, T, H, W) masks at the
    input size. A map cell's target is 1 where any lesion pixel falls in it (max-pooling), so a
    microaneurysm a few pixels wide still marks its cell; Dice keeps the rare types from being drowned
    by the empty background, which plain cross-entropy would let the head predict everywhere."""
    targets = F.adaptive_max_pool2d(masks.float(), lesion_logits.shape[-2:])
    logits = lesion_logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    probabilities = torch.sigmoid(logits)
    overlap = (probabilities * targets).sum(dim=(2, 3))
    dice = 1 - (2 * overlap + 1) / (probabilities.sum(dim=(2, 3)) + targets.sum(dim=(2, 3)) + 1)
    return bce + dice.mean()


class LesionDecoder(nn.Module):
    """Mid-level features -> one logit map per lesion type, at the features' resolution."""

    def __init__(self, in_channels: int, lesion_types: int, hidden: int = 64):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, lesion_types, 1))
        nn.init.constant_(self.block[-1].bias, -4.0)  # lesions are rare: start near P = 0.02

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.block(features)


class FusedLesionDecoder(nn.Module):
    """Several stages' features -> one logit map per lesion type, at the finest stage's resolution: each
    stage is projected to `hidden` channels (1x1), upsampled bilinearly and summed, as in a feature
    pyramid, so the early stages' fine detail and the later stages' context meet before the decoder."""

    def __init__(self, in_channels: Sequence[int], lesion_types: int, hidden: int = 64):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(channels, hidden, 1) for channels in in_channels)
        self.block = LesionDecoder(hidden, lesion_types, hidden).block

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = max((f.shape[-2:] for f in features), key=lambda hw: hw[0] * hw[1])
        fused = sum(F.interpolate(lateral(f), size=size, mode="bilinear", align_corners=False)
                    if f.shape[-2:] != size else lateral(f) for lateral, f in zip(self.lateral, features))
        return self.block(fused)


class MultiHeadNet(nn.Module):
    """A backbone with grade (softmax and ordinal), DME and lesion-map heads."""

    def __init__(self, backbone: nn.Module, classifier: str, lesion_layers: Sequence[str],
                 lesion_channels: Sequence[int], channels_last_features: bool, num_grades: int, dme_classes: int,
                 lesion_types: int, grade_head: str = "softmax", lesion_evidence_weight: float | None = None,
                 lesion_evidence_grade: str = "multinomial"):
        super().__init__()
        if grade_head not in GRADE_HEADS:
            raise ValueError(f"grade_head must be one of {', '.join(GRADE_HEADS)}, got {grade_head!r}")
        if lesion_evidence_weight is not None and not is_blend_weight(lesion_evidence_weight):
            raise ValueError(f"lesion_evidence_weight must be in (0, 1], got {lesion_evidence_weight!r}")
        if not lesion_layers or len(lesion_layers) != len(lesion_channels):
            raise ValueError(f"one channel count per lesion layer: {list(lesion_layers)}, {list(lesion_channels)}")
        self.backbone = backbone
        self.classifier_path, self.lesion_paths = classifier, tuple(lesion_layers)
        self.channels_last_features = channels_last_features
        self.grade_head = grade_head
        num_features = backbone.get_submodule(classifier).in_features
        self.ordinal_head = nn.Linear(num_features, num_grades - 1)
        self.dme_head = nn.Linear(num_features, dme_classes)
        # one layer keeps the plain decoder (the weights of every checkpoint before fused layers)
        self.lesion_head = (LesionDecoder(lesion_channels[0], lesion_types) if len(lesion_layers) == 1
                            else FusedLesionDecoder(lesion_channels, lesion_types))
        for head in (self.ordinal_head, self.dme_head):
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        self.lesion_evidence_weight = lesion_evidence_weight
        self.lesion_evidence = (LesionEvidence(lesion_types, num_grades, dme_classes, lesion_evidence_grade)
                                if lesion_evidence_weight is not None else None)

    def forward(self, x: torch.Tensor) -> HeadsOutput:
        captured: dict[str, torch.Tensor] = {}

        def keep_input(_module, inputs):
            captured["features"] = inputs[0]

        def keep_output(path):
            return lambda _module, _inputs, output: captured.__setitem__(path, output)

        hooks = [self.backbone.get_submodule(self.classifier_path).register_forward_pre_hook(keep_input)]
        hooks += [self.backbone.get_submodule(path).register_forward_hook(keep_output(path))
                  for path in self.lesion_paths]
        try:
            output = self.backbone(x)
        finally:
            for hook in hooks:
                hook.remove()
        softmax_logits = output.logits if hasattr(output, "logits") else output
        aux = getattr(output, "aux_logits", None)
        features = captured["features"].flatten(1)
        lesion_features = [captured[path] for path in self.lesion_paths]
        if self.channels_last_features:
            lesion_features = [f.permute(0, 3, 1, 2) for f in lesion_features]
        lesion_logits = self.lesion_head(lesion_features[0] if len(lesion_features) == 1 else lesion_features)
        ordinal_logits = self.ordinal_head(features)
        logits = softmax_logits if self.grade_head == "softmax" else corn_log_probabilities(ordinal_logits)
        dme_logits = self.dme_head(features)
        if self.lesion_evidence is not None:
            grade_evidence, dme_evidence = self.lesion_evidence(torch.sigmoid(lesion_logits.float()))
            logits = blend(logits, grade_evidence, self.lesion_evidence_weight)
            dme_logits = blend(dme_logits, dme_evidence, self.lesion_evidence_weight)
        return HeadsOutput(logits=logits, softmax_logits=softmax_logits, ordinal_logits=ordinal_logits,
                           dme_logits=dme_logits, lesion_logits=lesion_logits,
                           features=features, aux_logits=aux)


def pooled_features(model: nn.Module, classifier: str, batch: torch.Tensor) -> tuple[object, torch.Tensor]:
    """(the model's output, its (B, F) pooled features) from one forward pass of a plain or multi-head
    model: a MultiHeadNet returns them; a plain backbone's are the input of its `classifier` layer."""
    if isinstance(model, MultiHeadNet):
        output = model(batch)
        return output, output.features
    captured: dict[str, torch.Tensor] = {}
    hook = model.get_submodule(classifier).register_forward_pre_hook(
        lambda _module, inputs: captured.__setitem__("features", inputs[0]))
    try:
        output = model(batch)
    finally:
        hook.remove()
    return output, captured["features"].flatten(1)


_PROBE_SIZE = 128  # large enough for every registered backbone (InceptionV3 needs 75 px)


def lesion_layer_channels(backbone: nn.Module, lesion_layers: Sequence[str], channels_last: bool) -> list[int]:
    """Channels of each of `lesion_layers`' outputs, found with one small forward pass (no weights change)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [backbone.get_submodule(layer).register_forward_hook(
        lambda _m, _i, output, layer=layer: captured.__setitem__(layer, output)) for layer in lesion_layers]
    training = backbone.training
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE))
    finally:
        for hook in hooks:
            hook.remove()
        backbone.train(training)
    shapes: list[Sequence[int]] = [captured[layer].shape for layer in lesion_layers]
    return [int(shape[-1] if channels_last else shape[1]) for shape in shapes]
