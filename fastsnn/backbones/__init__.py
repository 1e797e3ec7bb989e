"""Quantizable plain-PyTorch backbones that ``fastsnn.convert`` turns into SNNs.

All models use one ``nn.ReLU`` instance per activation site, no max pooling and
fx-traceable forwards. Importing this package registers every backbone:

>>> from fastsnn.backbones import create_backbone, list_backbones
>>> net = create_backbone("resnet20", num_classes=10)

New backbones and task heads build their layers with :mod:`fastsnn.backbones.layers`
and register their factories with :func:`register_backbone` (:mod:`.registry`).
"""

# Imported for their @register_backbone side effects (each imports the registry itself).
from . import alexnet, darknet, resnet, vgg  # noqa: F401
from .registry import create_backbone, list_backbones, register_backbone

__all__ = ["create_backbone", "list_backbones", "register_backbone"]
