"""Tiny-YOLOv2 style Darknet trunk (Redmon & Farhadi, CVPR 2017) for detection.

The original Darknet-tiny interleaves conv3x3 + BN + LeakyReLU with 2x2 max
pools. For conversion LeakyReLU becomes ReLU and each stride-2 max pool is
folded into the following conv, which gets stride 2 (the final stride-1 max
pool is dropped). Output stride 32, or 16 with ``output_stride=16`` (the 512-channel conv
then keeps stride 1, like Tiny YOLO's last, stride-1 max pool).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import conv_stack, init_weights
from .registry import register_backbone

__all__ = ["DarknetTiny", "darknet_tiny"]

# (channels, stride): stages 2-6 down-sample in their conv, then the 1024 conv.
_CFG = [(16, 1), (32, 2), (64, 2), (128, 2), (256, 2), (512, 2), (1024, 1)]


class DarknetTiny(nn.Module):
    """Darknet-tiny feature trunk; forward returns the feature map at ``output_stride`` (32 or 16)."""

    def __init__(self, in_channels: int = 3, width: float = 1.0, output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 or 32, got {output_stride}")
        cfg = list(_CFG)
        if output_stride == 16:
            cfg[5] = (cfg[5][0], 1)  # stage 6, the 512-channel conv, does not down-sample
        self.features, self.out_channels = conv_stack(cfg, in_channels, width)
        self.output_stride = output_stride
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_backbone("darknet_tiny")
def darknet_tiny(in_channels: int = 3, width: float = 1.0, output_stride: int = 32) -> DarknetTiny:
    """Tiny-YOLOv2 trunk without max pooling, output stride 32 (or 16)."""
    return DarknetTiny(in_channels, width, output_stride)
