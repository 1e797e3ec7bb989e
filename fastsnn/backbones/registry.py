"""The backbone registry: backbone factories by name.

Every model file registers its factories with ``@register_backbone(name)``;
``create_backbone(name, **kwargs)`` builds one. The layers they are made of come from
:mod:`fastsnn.backbones.layers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch.nn as nn

__all__ = ["register_backbone", "create_backbone", "list_backbones"]

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
