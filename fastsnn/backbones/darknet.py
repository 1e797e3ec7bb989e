"""Tiny-YOLOv2 style Darknet trunk (Redmon & Farhadi, CVPR 2017) for detection.

The original Darknet-tiny interleaves conv3x3 + BN + LeakyReLU with 2x2 max
pools. For conversion LeakyReLU becomes ReLU and each stride-2 max pool is
folded into the following conv, which gets stride 2 (the final stride-1 max
pool is dropped). Output stride 32.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .registry import conv_stack, init_weights, register_backbone

__all__ = ["DarknetTiny", "darknet_tiny"]

# (channels, stride): stages 2-6 down-sample in their conv, then the 1024 conv.
_CFG = [(16, 1), (32, 2), (64, 2), (128, 2), (256, 2), (512, 2), (1024, 1)]


class DarknetTiny(nn.Module):
    """Darknet-tiny feature trunk; forward returns the stride-32 feature map."""

    def __init__(self, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        self.features, self.out_channels = conv_stack(_CFG, in_channels, width)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_backbone("darknet_tiny")
def darknet_tiny(in_channels: int = 3, width: float = 1.0) -> DarknetTiny:
    """Tiny-YOLOv2 trunk without max pooling, output stride 32."""
    return DarknetTiny(in_channels, width)
