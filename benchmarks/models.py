"""The random-weight networks the benchmarks run: what they measure does not depend on the weights
(a dense simulation costs the same), only on the shapes and settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from fastsnn.backbones import create_backbone

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def bits_for(T: int) -> int:
    """The activation bits whose SNN runs at ``T = 2**bits - 1`` steps."""
    bits = (T + 1).bit_length() - 1
    if T < 1 or 2**bits - 1 != T:
        raise ValueError(f"T must be 2**bits - 1 (1, 3, 7, 15, ...), got {T}")
    return bits


def with_bn_statistics(model: nn.Module) -> nn.Module:
    """Random but non-trivial batch-norm statistics, as in a trained network (in place); eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def random_backbone(arch: str, width: float = 1.0, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """A ``fastsnn.backbones`` network with random weights (seed with ``torch.manual_seed``), eval mode."""
    return with_bn_statistics(create_backbone(arch, num_classes=num_classes, in_channels=in_channels, width=width))


def recipe(experiment: str) -> tuple[nn.Module, Callable, int]:
    """The network of a ``run.py`` recipe (``conf/experiment/<experiment>.yaml``) with random weights,
    its ``quantize(net, bits=...)`` and its input size, read from the recipe's config (Hydra's
    compose API); constructing its data module reads no data."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"])
    GlobalHydra.instance().clear()
    data = instantiate(cfg.data)
    net = instantiate(cfg.model.net, num_classes=data.num_classes, in_channels=data.in_channels)
    return with_bn_statistics(net), instantiate(cfg.quant), int(data.image_size)
