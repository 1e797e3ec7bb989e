"""BasicBlock ResNets (He et al., CVPR 2016) in the converter-friendly form.

Differences from torchvision that the SNN converter needs:

* every block owns two ReLUs (``relu1`` inside the residual branch, ``relu2``
  after the residual add) instead of reusing one module;
* the ImageNet stem replaces the 3x3 max pool with a stride-2 3x3 conv + BN +
  ReLU (max over spike trains is not rate-preserving);
* shortcuts that change shape are 1x1 conv + BN (option B), never padding.

``resnet20`` is the 3-stage CIFAR ResNet of the original paper (16/32/64
channels); ``resnet34_features`` is the classifier-free trunk used by the
detection and segmentation heads, with optional dilation for output stride 16/8.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .layers import conv_bn_relu, init_weights, scale_channels
from .registry import register_backbone

__all__ = [
    "BasicBlock",
    "ResNet",
    "resnet18",
    "resnet20",
    "resnet34",
    "resnet34_features",
]

_STEM_STRIDE = {"cifar": 1, "small": 2, "imagenet": 4}


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection.

    Modules are registered in call order (branch, shortcut, then ``relu2``) so
    the converter can read the graph order off the module order.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            # Identity keeps forward free of branches on module attributes.
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


def _make_stem(stem: str, in_channels: int, channels: int) -> nn.Sequential:
    if stem == "cifar":
        return conv_bn_relu(in_channels, channels, 3)
    if stem == "small":  # one 3x3/2 conv: small images (e.g. 64 px) keep detail for the first stage
        return conv_bn_relu(in_channels, channels, 3, stride=2)
    # ImageNet: 7x7/2 conv as in torchvision, then a 3x3/2 conv where the max pool was.
    return nn.Sequential(
        *conv_bn_relu(in_channels, channels, 7, stride=2),
        *conv_bn_relu(channels, channels, 3, stride=2),
    )


class ResNet(nn.Module):
    """BasicBlock ResNet.

    Args:
        blocks: number of blocks per stage; the first stage keeps the resolution,
            every later stage halves it.
        channels: base channel count per stage (before ``width`` scaling).
        num_classes: size of the output Linear; ``None`` builds a feature trunk
            whose forward returns the last stage's map (``out_channels`` channels).
        stem: ``"cifar"`` (3x3 conv, stride 1), ``"small"`` (3x3/2 conv) or
            ``"imagenet"`` (7x7/2 + 3x3/2 convs, stride 4).
        output_stride: total down-sampling; smaller than the natural stride, the
            stride of the last one or two stages is replaced by dilation (as
            torchvision's ``replace_stride_with_dilation``), keeping the weights.
    """

    def __init__(
        self,
        blocks: Sequence[int],
        channels: Sequence[int],
        num_classes: int | None = 10,
        in_channels: int = 3,
        width: float = 1.0,
        stem: str = "cifar",
        output_stride: int | None = None,
    ) -> None:
        super().__init__()
        if stem not in _STEM_STRIDE:
            raise ValueError(f"unknown stem {stem!r}; expected one of {sorted(_STEM_STRIDE)}")
        strides = [1] + [2] * (len(blocks) - 1)
        natural = _STEM_STRIDE[stem] * 2 ** (len(blocks) - 1)
        # At most the last two stages may be dilated (natural, /2, /4).
        allowed = [natural // 2**k for k in range(min(3, len(blocks)))]
        output_stride = natural if output_stride is None else output_stride
        if output_stride not in allowed:
            raise ValueError(
                f"output_stride {output_stride} not supported with stem {stem!r}; expected one of {allowed}"
            )
        # Which stages (from the end) trade their stride for dilation.
        n_dilated = (natural // output_stride).bit_length() - 1
        dilate = [False] * (len(blocks) - n_dilated) + [True] * n_dilated

        widths = [scale_channels(c, width) for c in channels]
        self.stem = _make_stem(stem, in_channels, widths[0])
        stages = []
        prev, dilation = widths[0], 1
        for n, out, stride, dil in zip(blocks, widths, strides, dilate):
            stage, dilation = self._make_stage(prev, out, n, stride, dilation, dil)
            stages.append(stage)
            prev = out
        self.layers = nn.Sequential(*stages)
        self.out_channels = prev
        if num_classes is not None:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(prev, num_classes)
        self.include_top = num_classes is not None
        init_weights(self)

    @staticmethod
    def _make_stage(
        in_channels: int, out_channels: int, n: int, stride: int, dilation: int, dilate: bool
    ) -> tuple[nn.Sequential, int]:
        """One stage of ``n`` blocks; returns it and the dilation after it."""
        # Like torchvision: the first block keeps the previous dilation, the
        # rest use the new one that stands in for the removed stride.
        first_dilation = dilation
        if dilate:
            dilation *= stride
            stride = 1
        layers = [BasicBlock(in_channels, out_channels, stride, first_dilation)]
        layers += [BasicBlock(out_channels, out_channels, 1, dilation) for _ in range(n - 1)]
        return nn.Sequential(*layers), dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        # include_top is a constructor constant, so fx tracing stays static.
        if self.include_top:
            x = self.fc(torch.flatten(self.pool(x), 1))
        return x


_IMAGENET_CHANNELS = (64, 128, 256, 512)


@register_backbone("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, stem: str = "cifar") -> ResNet:
    """ResNet-18 (2-2-2-2 BasicBlocks); CIFAR stem by default."""
    return ResNet((2, 2, 2, 2), _IMAGENET_CHANNELS, num_classes, in_channels, width, stem)


@register_backbone("resnet34")
def resnet34(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, stem: str = "cifar") -> ResNet:
    """ResNet-34 (3-4-6-3 BasicBlocks); CIFAR stem by default."""
    return ResNet((3, 4, 6, 3), _IMAGENET_CHANNELS, num_classes, in_channels, width, stem)


@register_backbone("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet:
    """CIFAR ResNet-20: 3 stages of 3 BasicBlocks with 16/32/64 channels."""
    return ResNet((3, 3, 3), (16, 32, 64), num_classes, in_channels, width, "cifar")


@register_backbone("resnet34_features")
def resnet34_features(
    in_channels: int = 3, width: float = 1.0, output_stride: int = 32, stem: str = "imagenet"
) -> ResNet:
    """ResNet-34 trunk for detection/segmentation; output stride 32, 16 or 8."""
    return ResNet((3, 4, 6, 3), _IMAGENET_CHANNELS, None, in_channels, width, stem, output_stride)
