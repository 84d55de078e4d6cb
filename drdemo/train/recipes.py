"""How a model is optimised: the recipe (optimiser, schedule, loss, augmentation), its presets, and
the pieces the training loop applies from it (class weights, weight-decay groups, the learning-rate
schedule)."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from drdemo.data import (
    Sample,
    class_counts,
)
from drdemo.data.augment import (
    DRDEMO_AUGMENTATION,
    PAPER_AUGMENTATION,
    REAL_AUGMENTATION,
    Augmentation,
)


@dataclass(frozen=True)
class Recipe:
    """Optimisation and augmentation choices. Presets below; CLI flags override single fields."""

    optimizer: str = "adamw"          # adamw | adam
    lr: float = 5e-4
    weight_decay: float = 0.05
    batch_size: int = 32
    epochs: int = 30
    warmup_epochs: float = 1.0
    schedule: str = "cosine"          # cosine (after linear warmup) | constant
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    class_weights: bool = True        # inverse label frequency, as in the InceptionV3 EyePACS baseline
    aux_loss_weight: float = 0.4      # InceptionV3's auxiliary classifier (Szegedy et al.)
    grad_clip: float = 5.0
    augmentation: Augmentation = DRDEMO_AUGMENTATION
    local_contrast: float = 0.0       # preprocessing: drdemo.preprocess.local_contrast's sigma (0: off)
    ema_decay: float = 0.0            # exponential moving average of the weights (0: off); validated and saved
                                      # instead of the raw weights: on a few hundred photos the raw weights'
                                      # validation QWK jumps by 0.1 from one epoch to the next
    colour_balance: bool = False      # preprocessing: drdemo.preprocess.balance_colour before local contrast
    heads: bool = False               # three heads (drdemo.models.heads): grade, DME risk, lesion maps
    ordinal_loss_weight: float = 1.0  # the CORN grade head's loss beside the softmax head's
    dme_loss_weight: float = 1.0
    dme_class_weights: bool = True    # inverse frequency of the DME risks (risk 1 is about 10% of IDRiD's photos)
    lesion_loss_weight: float = 1.0   # on the photos with lesion masks only
    # Transfer learning: start from the architecture's ImageNet weights (drdemo.models.pretrained), train only the
    # new layers for `freeze_epochs`, then the whole network, the pretrained layers at `backbone_lr_ratio` x lr
    # and the earliest ones (the architecture's `early_layers`) at a further `early_lr_ratio` x that.
    pretrained: bool = False
    freeze_epochs: float = 0.0
    backbone_lr_ratio: float = 1.0
    early_lr_ratio: float = 1.0
    # Distillation from a teacher checkpoint (drdemo.train.distill): this weight x the KL divergence from the
    # teacher's grade and DME probabilities, softened by the temperature, beside the labels' losses.
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    distill_lesions: bool = False     # the teacher's lesion maps are soft masks for the photos without drawn ones


PRESETS = {
    "drdemo": Recipe(),
    # The MedMamba paper's recipe (Yue & Li, 2024): Adam lr 1e-4, batch 64, plain cross-entropy, constant rate,
    # its augmentation.
    "medmamba-paper": Recipe(optimizer="adam", lr=1e-4, weight_decay=0.0, batch_size=64, epochs=300,
                             warmup_epochs=0.0, schedule="constant", label_smoothing=0.0, class_weights=False,
                             grad_clip=0.0, augmentation=PAPER_AUGMENTATION),
    # A few hundred real photographs from one camera (IDRiD): a lower peak rate, longer warmup, strong
    # camera augmentation, and Ben Graham's local contrast (sigma = side / 60, his 10 px at 300 px
    # radius), which removes most of a camera's illumination and colour before the network sees it.
    "real": Recipe(lr=3e-4, batch_size=16, epochs=30, warmup_epochs=2.0, augmentation=REAL_AUGMENTATION,
                   local_contrast=0.0167),
}
# IDRiD with its second label and its lesion masks: the real recipe, with three heads trained together and
# every photo's colour balanced (IDRiD's healthy training eyes were photographed bluer than its diseased
# ones, a shortcut that does not hold on its test split); fine-tunes a real-photo checkpoint.
PRESETS["lesions"] = replace(PRESETS["real"], heads=True, colour_balance=True, epochs=12, lr=2e-4,
                             warmup_epochs=1.0, ema_decay=0.98)

# IDRiD's three heads fine-tuned from ImageNet: a frozen-backbone warm-up, then every layer at lower rates the
# earlier it sits; the inputs the weights were trained on ((pixels - 128) / 128) instead of measured statistics.
PRESETS["imagenet"] = replace(PRESETS["lesions"], pretrained=True, epochs=10, lr=1e-3, warmup_epochs=0.5,
                              freeze_epochs=1.0, backbone_lr_ratio=0.1, early_lr_ratio=0.3)
# The lesions recipe with a teacher: MedMamba learns the fine-tuned InceptionV3's grade and DME probabilities on
# augmented views of the labelled photos and of photos nobody graded, beside the labels.
PRESETS["distill"] = replace(PRESETS["lesions"], epochs=10, distill_weight=1.0, distill_temperature=2.0)


def class_weights(samples: Sequence[Sample], task: str) -> torch.Tensor:
    """n / (classes * count) per class (scikit-learn's "balanced"); absent classes get weight 0."""
    return balanced_weights(class_counts(samples, task))


def balanced_weights(counts: Sequence[int]) -> torch.Tensor:
    """n / (classes * count) per class of `counts`; absent classes get weight 0."""
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def parameter_groups(model: nn.Module, weight_decay: float, pretrained: Collection[str] = (),
                     early_prefixes: tuple[str, ...] = (), backbone_lr_ratio: float = 1.0,
                     early_lr_ratio: float = 1.0) -> list[dict]:
    """No weight decay on biases, norms and the parameters a model marks `_no_weight_decay`
    (MedMamba's A_logs and Ds, as in the official code). Parameters named in `pretrained` form their own
    groups (`"pretrained": True`) at `backbone_lr_ratio` x the rate, x `early_lr_ratio` more where their name
    (after any "backbone." prefix) starts with one of `early_prefixes`; each group's `lr_scale` says which."""
    groups: dict[tuple[float, bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decays = not (parameter.ndim <= 1 or getattr(parameter, "_no_weight_decay", False) or name.endswith(".bias"))
        is_pretrained = name in pretrained
        scale = 1.0
        if is_pretrained:
            scale = backbone_lr_ratio * (early_lr_ratio if name.removeprefix("backbone.").startswith(early_prefixes)
                                         else 1.0)
        groups.setdefault((scale, is_pretrained, decays), []).append(parameter)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale,
             "pretrained": is_pretrained}
            for (scale, is_pretrained, decays), params in sorted(groups.items(), key=lambda item: item[0])]


def group_lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float,
                    lr_scale: float = 1.0, frozen_steps: int = 0) -> float:
    """A parameter group's factor: `lr_scale` x the schedule; a group frozen for `frozen_steps` gets 0 until
    then and warms up afterwards, over the same number of steps, into the schedule where it stands."""
    if step < frozen_steps:
        return 0.0
    factor = lr_scale * lr_factor(step, total_steps, warmup_steps, schedule, min_ratio)
    if frozen_steps and warmup_steps and step < frozen_steps + warmup_steps:
        factor *= (step - frozen_steps + 1) / warmup_steps
    return factor


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Linear warmup from ~0, then cosine decay to `min_ratio` (or constant)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

