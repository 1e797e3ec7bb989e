"""DeepLab-style segmentation networks on the shared quantizable backbones.

Both models follow the converter's rules (see ``fastsnn/backbones/layers.py`` and
``fastsnn/convert/``): one ``nn.ReLU`` instance per activation site (``quantize_model``
turns each into a ``QuantReLU``, the converter each into an IF neuron layer), no max
pooling, and a ``forward`` that ``torch.fx`` can trace (no Python branch on tensor values
or shapes). ``forward`` returns the logits at the input's resolution.

* :class:`DeepLabV1`: DeepLab-v1 ("LargeFOV") style: the dilated VGG-9 trunk
  (``vgg9_dilated``, output stride 8, average pooling instead of max pooling), a wide
  dilated 3x3 conv (the "fc6" of the original; the Fast-SNN reference has this one head
  conv, 1024 channels, dilation 12) and a 1x1 classifier conv.
* :class:`DeepLabV3`: the ResNet-34 trunk (``resnet34_features``) with its last stage(s)
  dilated (output stride 16 or 8), an :class:`ASPP` module, a 3x3 conv and a 1x1
  classifier conv, as torchvision's ``DeepLabHead``.

In the SNN the classifier conv is the analog output layer: the converter runs it on the
mean over T of the last spike trains, and the bilinear upsampling after it is the same
as in the ANN. The ASPP branches' spike trains are concatenated (linear per time step),
and its image-pooling branch uses adaptive average pooling and bilinear upsampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fastsnn.backbones import create_backbone
from fastsnn.backbones.layers import conv_bn_relu, init_weights, scale_channels

__all__ = ["ASPP", "DeepLabV1", "DeepLabV3"]


def _upsample_to(logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of ``logits`` to the spatial size of ``image`` (fx-traceable)."""
    return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


class ASPPPooling(nn.Module):
    """Image-level features: global average pool, 1x1 conv + BN + ReLU, upsampled back.

    Bilinear upsampling of a 1x1 map is a broadcast; both are linear per time step.
    The batch norm here sees one value per channel and image: train with batches > 1.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn(self.conv(self.pool(x))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al., 2017): a 1x1 conv, one dilated 3x3 conv
    per rate and image pooling in parallel, concatenated and projected by a 1x1 conv."""

    def __init__(
        self, in_channels: int, out_channels: int, rates: Sequence[int] = (6, 12, 18), dropout: float = 0.1
    ) -> None:
        super().__init__()
        branches = [conv_bn_relu(in_channels, out_channels, kernel_size=1)]
        branches += [conv_bn_relu(in_channels, out_channels, dilation=int(r)) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = conv_bn_relu(len(branches) * out_channels, out_channels, kernel_size=1)
        self.dropout = nn.Dropout(dropout)  # identity in eval mode (and in the SNN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.dropout(self.project(y))


class DeepLabV1(nn.Module):
    """DeepLab-v1 style network: dilated VGG-9 (output stride 8) + dilated 3x3 conv + classifier.

    Args:
        num_classes: output classes, background included.
        width: channel multiplier of the trunk and the head (1.0: 64..512 trunk channels).
        head_channels: channels of the head conv before ``width`` scaling (1024 in
            DeepLab-v1 LargeFOV).
        head_dilation: dilation of the head's 3x3 conv (12 in LargeFOV for ~500 px images;
            smaller for small images, whose feature maps are only a few cells wide).
        dropout: dropout before the classifier (training only).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: float = 1.0,
        head_channels: int = 1024,
        head_dilation: int = 12,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.backbone = create_backbone("vgg9_dilated", in_channels=in_channels, width=width)
        channels = scale_channels(head_channels, width)
        self.head = nn.Sequential(
            conv_bn_relu(self.backbone.out_channels, channels, dilation=int(head_dilation)),
            nn.Dropout(dropout),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_weights(self.head)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.head(self.backbone(x)))
        return _upsample_to(logits, x)


class DeepLabV3(nn.Module):
    """DeepLab-v3 style network: dilated ResNet-34 trunk + ASPP + 3x3 conv + classifier.

    Args:
        num_classes: output classes, background included.
        width: channel multiplier of the trunk and the head (1.0: 64..512 trunk channels,
            256 ASPP channels).
        output_stride: 16 (last stage dilated) or 8 (last two stages dilated).
        aspp_channels: ASPP / head channels before ``width`` scaling.
        atrous_rates: dilations of the ASPP's 3x3 branches (6, 12, 18 at output stride 16
            in the paper; doubled at output stride 8).
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 conv, stride 4), ``"small"`` (one 3x3/2 conv)
            or ``"cifar"`` (3x3, stride 1).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: float = 1.0,
        output_stride: int = 16,
        aspp_channels: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        dropout: float = 0.1,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        self.backbone = create_backbone(
            "resnet34_features", in_channels=in_channels, width=width, output_stride=output_stride, stem=stem
        )
        channels = scale_channels(aspp_channels, width)
        self.aspp = ASPP(self.backbone.out_channels, channels, tuple(atrous_rates), dropout)
        self.head = conv_bn_relu(channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_weights(self.aspp)
        init_weights(self.head)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.head(self.aspp(self.backbone(x))))
        return _upsample_to(logits, x)
