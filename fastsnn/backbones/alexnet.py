"""CIFAR AlexNet as used for ANN-to-SNN conversion (Fast-SNN, Hu et al., TPAMI 2023).

Five conv3x3 + BN + ReLU layers (96-256-384-384-256) where the max pools of the
original AlexNet (Krizhevsky et al., NIPS 2012) are replaced by stride-2 convs,
followed by a Linear-ReLU-Dropout hidden layer (2048, as in Fast-SNN) and the
output Linear. On 32x32 input the trunk yields 4x4 maps, so the 4x4 adaptive
pool is an identity there and only makes other input sizes work.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import conv_stack, init_weights, mlp_classifier, scale_channels
from .registry import register_backbone

__all__ = ["AlexNet", "alexnet"]

# (channels, stride): three stride-2 convs take 32x32 to 4x4.
_CFG = [(96, 1), (256, 2), (384, 2), (384, 1), (256, 2)]


class AlexNet(nn.Module):
    """CIFAR AlexNet: conv trunk, 4x4 adaptive average pool, MLP head."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        hidden: int = 2048,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.features, channels = conv_stack(_CFG, in_channels, width)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = mlp_classifier(channels * 16, [scale_channels(hidden, width)], num_classes, dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_backbone("alexnet")
def alexnet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, dropout: float = 0.0) -> AlexNet:
    """CIFAR AlexNet (Fast-SNN variant)."""
    return AlexNet(num_classes, in_channels, width, dropout=dropout)
