"""Backbone registry and the construction helpers every backbone shares.

The ANN-to-SNN converter (``fastsnn.convert``) relies on a few structural rules
(one ``nn.ReLU`` instance per activation site, no max pooling, ``bias=False`` on
convs followed by BatchNorm, modules registered in forward order). The helpers
here are the single place where those rules are encoded, so every model file
builds its layers through them instead of re-implementing them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch.nn as nn

__all__ = [
    "register_backbone",
    "create_backbone",
    "list_backbones",
    "scale_channels",
    "conv_bn_relu",
    "conv_stack",
    "LayerSpec",
    "mlp_classifier",
    "init_weights",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_backbone(name: str) -> Callable[[F], F]:
    """Decorator that registers a backbone factory under ``name``."""

    def decorator(fn: F) -> F:
        # Silently overwriting would make create_backbone() depend on import order.
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name`` with the given keyword arguments."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}") from None
    return factory(**kwargs)


def list_backbones() -> list[str]:
    """Sorted names of all registered backbones."""
    return sorted(_REGISTRY)


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
