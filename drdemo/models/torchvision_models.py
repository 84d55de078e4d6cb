"""Convolutional baselines from torchvision (InceptionV3, ResNet50, VGG16), the usual DR-grading baselines.

Built with weights=None: no pretrained weights can be downloaded in this project's
environment, and checkpoints come from drdemo.serving.hub. Parameter names are torchvision's, so a
torchvision state_dict with a 5-class head loads directly.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tv

from drdemo.models._registry import ModelDefaults, register_model


@register_model(ModelDefaults(input_size=299, cam_target_layer="Mixed_7c", channels_last=True,
                              display_name="InceptionV3", lesion_layer="Mixed_5d"))
def inception_v3(num_classes: int = 5, aux_logits: bool = True, **kwargs) -> nn.Module:
    """InceptionV3 at 299 px. The auxiliary head only runs in training mode (torchvision
    returns (logits, aux_logits) there, plain logits in eval mode)."""
    return tv.inception_v3(weights=None, num_classes=num_classes, aux_logits=aux_logits,
                           init_weights=True, **kwargs)


@register_model(ModelDefaults(input_size=224, cam_target_layer="layer4", display_name="ResNet50"))
def resnet50(num_classes: int = 5, **kwargs) -> nn.Module:
    """ResNet50 at 224 px."""
    return tv.resnet50(weights=None, num_classes=num_classes, **kwargs)


@register_model(ModelDefaults(input_size=224, cam_target_layer="features.29", display_name="VGG16",
                              classifier="classifier.6", lesion_layer="features.22"))
def vgg16(num_classes: int = 5, **kwargs) -> nn.Module:
    """VGG16 at 224 px; the CAM target is the last ReLU before the final max-pool."""
    return tv.vgg16(weights=None, num_classes=num_classes, **kwargs)
