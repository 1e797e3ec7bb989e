"""Any torchvision classification model as a Fast-SNN backbone, with random or pretrained weights.

>>> from fastsnn.backbones.torchvision import torchvision_backbone
>>> net = torchvision_backbone("resnet18", num_classes=10, in_channels=1)
>>> net = torchvision_backbone("resnet18", num_classes=10, weights="IMAGENET1K_V1")  # from the hub cache

The model is built by ``torchvision.models.get_model(name, weights=None, ...)`` and made
convertible by :func:`fastsnn.prepare.prepare_model`: ReLUs written as functions become modules,
every call site of a shared activation module gets its own (one clip per site), and max pools
between spiking layers are replaced (``max_pool``). ``quantize_model`` then quantizes the result
in place. Families with other activations (SiLU, Hardswish, GELU, sigmoid gates) or attention
build, but the converter refuses them, naming the module.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.error import URLError

import torch
import torchvision
from torch import nn

from ..prepare import prepare_model
from ..weights import load_matching

log = logging.getLogger(__name__)

# builders whose defaults would add auxiliary heads, warn about initialisation, or shift the
# input for ImageNet weights; for training from scratch inside this project:
_BUILDER_DEFAULTS = {
    "googlenet": {"aux_logits": False, "init_weights": True, "transform_input": False},
    "inception_v3": {"aux_logits": False, "init_weights": True, "transform_input": False},
}


def torchvision_models() -> list[str]:
    """Names of torchvision's classification model builders."""
    return torchvision.models.list_models(module=torchvision.models)


def torchvision_backbone(
    name: str,
    num_classes: int = 1000,
    in_channels: int = 3,
    max_pool: str | None = "avg",
    small_input: bool = False,
    split_shared: bool = True,
    weights: str | None = None,
    **kwargs,
) -> nn.Module:
    """torchvision's ``name``, adapted to the data and ready to quantize.

    Args:
        name: a builder of ``torchvision.models`` (``resnet18``, ``vgg11_bn``, ``mobilenet_v2``...).
        num_classes: the classifier's outputs.
        in_channels: the input's channels; when not 3, the first convolution is rebuilt for it.
        max_pool: ``"avg"`` (default) replaces the max pools between spiking layers by average
            pooling of the same window, ``"conv"`` by a strided depthwise convolution
            (:class:`fastsnn.prepare.PoolConv2d`), ``None`` keeps them (the converter refuses
            them). A max pool right after the first activation (a ResNet stem) stays in every
            case: the converter computes it exactly on the analog input.
        small_input: for 32 px images (CIFAR, digits): the first convolution becomes 3x3 with
            stride 1 and a max pool right after it is removed, as CIFAR variants of these
            models do, so that the image is not downsampled 4x before the first block.
        split_shared: one activation module per call site (see :func:`prepare_model`).
        weights: None for random weights, or the name of one of the model's torchvision weights
            (``"IMAGENET1K_V1"``, ``"DEFAULT"``...), read from the torch hub cache (downloaded
            there when absent and the network allows). A classifier with another number of classes
            is replaced; a first convolution for ``in_channels`` other than 3 starts from the
            pretrained one summed over its input channels (``in_channels=1``) or repeated.
        kwargs: passed to the builder (e.g. ``width_mult`` for mobilenet_v2, ``dropout``).

    Returns the model, usually a ``torch.fx.GraphModule`` with torchvision's module paths.
    """
    known = torchvision_models()
    if name not in known:
        raise ValueError(f"unknown torchvision classification model {name!r}; known: {', '.join(known)}")
    kwargs = {**_BUILDER_DEFAULTS.get(name, {}), **kwargs}
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if weights is not None:
        match = load_matching(model, pretrained_state(name, weights), f"torchvision {name} {weights}")
        log.info("%s", match.summary())
    _adapt_stem(model, in_channels, small_input, pretrained=weights is not None)
    return prepare_model(model, max_pool=max_pool, split_shared=split_shared)


def pretrained_state(name: str, weights: str) -> dict[str, torch.Tensor]:
    """The state dict of torchvision's ``weights`` for ``name``, from the torch hub cache."""
    choices = torchvision.models.get_model_weights(name)
    if weights not in choices.__members__:
        raise ValueError(f"{name} has no torchvision weights {weights!r}; it has {', '.join(choices.__members__)}")
    url = choices[weights].url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except (URLError, OSError) as err:
        raise FileNotFoundError(
            f"torchvision's {name} weights {weights} are not in the torch hub cache and could not be downloaded "
            f"({err}): put the file {Path(url).name} (from {url}) at {path}, or set TORCH_HOME to a directory "
            "whose hub/checkpoints/ holds it"
        ) from err


def _inherit_stem(new: nn.Conv2d, old: nn.Conv2d) -> None:
    """Start a rebuilt first convolution from the pretrained one where the kernels agree: summed over
    the RGB channels for one input channel, repeated (and rescaled) for more."""
    if new.kernel_size != old.kernel_size or new.groups != old.groups:
        log.info(
            "the first convolution's kernel changed (%s -> %s): it starts at random", old.kernel_size, new.kernel_size
        )
        return
    with torch.no_grad():
        w = old.weight.sum(1, keepdim=True)
        if new.in_channels > 1:
            w = old.weight.repeat(1, -(-new.in_channels // old.in_channels), 1, 1)[:, : new.in_channels]
            w = w * old.in_channels / new.in_channels
        new.weight.copy_(w)
        if new.bias is not None:
            new.bias.copy_(old.bias)
    log.info("the first convolution takes %d input channels: it starts from the pretrained one", new.in_channels)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _adapt_stem(model: nn.Module, in_channels: int, small_input: bool, pretrained: bool = False) -> None:
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return
    (first_name, first), second_name = convs[0], convs[1][0] if len(convs) > 1 else None
    kernel, stride, padding = first.kernel_size, first.stride, first.padding
    if small_input and stride != (1, 1):
        kernel, stride, padding = (3, 3), (1, 1), (1, 1)
    if in_channels != first.in_channels or stride != first.stride:
        new = nn.Conv2d(
            in_channels,
            first.out_channels,
            kernel,
            stride=stride,
            padding=padding,
            dilation=first.dilation,
            groups=1 if first.groups == 1 else in_channels,
            bias=first.bias is not None,
        )
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if new.bias is not None:
            nn.init.zeros_(new.bias)
        if pretrained:
            _inherit_stem(new, first)
        _set(model, first_name, new)
    if small_input:  # a max pool registered before the second conv belongs to the stem
        for n, m in model.named_modules():
            if n == second_name:
                break
            if isinstance(m, nn.MaxPool2d):
                _set(model, n, nn.Identity())
                break
