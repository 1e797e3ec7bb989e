"""The layer builders every backbone (and the task heads in ``tasks/``) build their layers with.

The ANN-to-SNN converter (``fastsnn.convert``) relies on a few structural rules
(one ``nn.ReLU`` instance per activation site, no max pooling, ``bias=False`` on
convs followed by BatchNorm, modules registered in forward order). The builders
here are the single place where those rules are encoded, so every model file
builds its layers through them instead of re-implementing them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

__all__ = [
    "scale_channels",
    "conv_bn_relu",
    "conv_stack",
    "LayerSpec",
    "mlp_classifier",
    "init_weights",
]


def scale_channels(channels: int, width: float) -> int:
    """Width-multiplied channel count, never below 8 so tiny test models stay valid."""
    return max(8, int(round(channels * width)))


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    dilation: int = 1,
) -> nn.Sequential:
    """Conv (no bias, BN supplies it) + BatchNorm + a fresh ReLU, 'same' padding."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


# A conv_stack entry: "A" is a 2x2 average pool, an int a conv3x3 with that many
# (width-scaled) channels, a tuple (channels, stride[, dilation]) a strided or
# dilated conv3x3.
LayerSpec = str | int | tuple


def conv_stack(specs: Sequence[LayerSpec], in_channels: int, width: float) -> tuple[nn.Sequential, int]:
    """Plain conv3x3 + BN + ReLU trunk from ``specs``; returns it and its output channels."""
    layers: list[nn.Module] = []
    channels = in_channels
    for spec in specs:
        if spec == "A":
            layers.append(nn.AvgPool2d(2))
            continue
        if isinstance(spec, int):
            spec = (spec,)
        out, stride, dilation = (*spec, 1, 1)[:3]
        out = scale_channels(out, width)
        layers.append(conv_bn_relu(channels, out, stride=stride, dilation=dilation))
        channels = out
    return nn.Sequential(*layers), channels


def mlp_classifier(in_features: int, hidden: Sequence[int], num_classes: int, dropout: float) -> nn.Sequential:
    """[Linear + ReLU + Dropout] per hidden size, then the output Linear.

    Dropout is kept even when ``dropout == 0`` so that layer indices (and thus
    checkpoint keys) do not depend on the dropout rate.
    """
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_features, h), nn.ReLU(), nn.Dropout(dropout)]
        in_features = h
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convs, unit/zero BN, N(0, 0.01) linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
