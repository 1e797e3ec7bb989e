"""VGG backbones (Simonyan & Zisserman, ICLR 2015) in the converter-friendly form.

Max pooling is replaced by ``nn.AvgPool2d(2)`` (an IF neuron layer can pass on
averaged spike rates, but a max over spike trains is not rate-preserving);
every conv is conv3x3 + BN + ReLU.

* ``vgg11``: CIFAR VGG-11 with a global average pool and one Linear classifier.
* ``vgg16``: ImageNet VGG-16 (config D) with the 7x7 pool and the
  Linear-ReLU-Dropout classifier of the original.
* ``vgg9_dilated``: DeepLab-v1 style trunk (Chen et al., ICLR 2015) for
  segmentation: the last stage uses dilation 2 instead of a further
  down-sampling, giving output stride 8.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .layers import LayerSpec, conv_stack, init_weights, mlp_classifier, scale_channels
from .registry import register_backbone

__all__ = ["VGG", "VGGFeatures", "vgg11", "vgg16", "vgg9_dilated"]

# See layers.conv_stack: int = conv3x3, "A" = AvgPool2d(2), (c, stride, dilation).
_CFGS: dict[str, list[LayerSpec]] = {
    "vgg11": [64, "A", 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A"],
    "vgg16": [64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A", 512, 512, 512, "A"],
    "vgg9_dilated": [64, 64, "A", 128, 128, "A", 256, 256, "A", (512, 1, 2), (512, 1, 2), (512, 1, 2)],
}


class VGG(nn.Module):
    """VGG classifier: conv trunk, adaptive average pool, MLP head."""

    def __init__(
        self,
        cfg: Sequence[LayerSpec],
        num_classes: int,
        in_channels: int = 3,
        width: float = 1.0,
        pool_size: int = 1,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.features, channels = conv_stack(cfg, in_channels, width)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = mlp_classifier(channels * pool_size * pool_size, hidden, num_classes, dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class VGGFeatures(nn.Module):
    """VGG conv trunk without classifier; ``out_channels`` is its channel count."""

    def __init__(self, cfg: Sequence[LayerSpec], in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        self.features, self.out_channels = conv_stack(cfg, in_channels, width)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_backbone("vgg11")
def vgg11(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGG:
    """CIFAR VGG-11: 8 convs, 5 average pools, global pool + Linear."""
    return VGG(_CFGS["vgg11"], num_classes, in_channels, width)


@register_backbone("vgg16")
def vgg16(
    num_classes: int = 1000,
    in_channels: int = 3,
    width: float = 1.0,
    hidden: int = 4096,
    dropout: float = 0.5,
) -> VGG:
    """ImageNet VGG-16 (config D, BN, average pools) for 224x224 input."""
    h = scale_channels(hidden, width)
    return VGG(_CFGS["vgg16"], num_classes, in_channels, width, pool_size=7, hidden=(h, h), dropout=dropout)


@register_backbone("vgg9_dilated")
def vgg9_dilated(in_channels: int = 3, width: float = 1.0) -> VGGFeatures:
    """DeepLab-v1 style VGG-9 trunk, output stride 8 (last stage dilated by 2)."""
    return VGGFeatures(_CFGS["vgg9_dilated"], in_channels, width)
