"""Quantizable plain-PyTorch backbones that ``fastsnn.convert`` turns into SNNs.

All models use one ``nn.ReLU`` instance per activation site, no max pooling and
fx-traceable forwards. Importing this package registers every backbone:

>>> from fastsnn.backbones import create_backbone, list_backbones
>>> net = create_backbone("resnet20", num_classes=10)
"""

# Imported for their @register_backbone side effects.
from . import alexnet, darknet, resnet, vgg  # noqa: F401
from .registry import create_backbone, list_backbones, register_backbone

__all__ = ["create_backbone", "list_backbones", "register_backbone"]
