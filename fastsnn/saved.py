"""A converted SNN as a file that rebuilds itself: :func:`save_snn` and :func:`load_snn`.

The file holds what rebuilding needs besides the weights: how to build the network (a builder's
dotted name and its arguments), the ``quantize_model`` options, the quantized ANN's weights, the
:class:`~fastsnn.SimulationConfig` and the SNN's own (e.g. fine-tuned) weights. Loading repeats the
conversion and then loads the SNN's weights, so the SNN is exactly the one saved. Everything in it
is tensors and plain data: it opens with ``torch.load(weights_only=True)``, and the builder is
imported only from modules the caller trusts (:data:`TRUSTED_BUILDERS`, or ``net=`` built by hand).

>>> save_snn("snn.pt", snn, qmodel, builder=("fastsnn.backbones.create_backbone", {"name": "vgg11",
...          "num_classes": 10, "in_channels": 1}), quant={"bits": 2, "weight_bits": "same"})
>>> snn = load_snn("snn.pt")
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import SimulationConfig
from .convert import SpikingModel, convert_to_snn
from .quantize import quantize_model

FORMAT = "fastsnn-snn/1"
TRUSTED_BUILDERS = ("fastsnn.", "tasks.", "torchvision.models.")  # dotted-name prefixes load_snn imports


@dataclass
class SavedSNN:
    """What an SNN file holds, rebuilt: the SNN, the quantized ANN it was converted from, and the
    plain data saved with them (``meta``: e.g. the task, model and data it was made for)."""

    snn: SpikingModel
    ann: nn.Module
    builder: tuple[str, dict]
    quant: dict
    meta: dict


def save_snn(
    path: str | Path,
    snn: SpikingModel,
    qmodel: nn.Module,
    builder: tuple[str, dict],
    quant: dict,
    meta: dict | None = None,
) -> Path:
    """Save ``snn`` with what rebuilds it.

    Args:
        snn: the converted (and maybe fine-tuned) SNN.
        qmodel: the quantized ANN it was converted from.
        builder: ``(dotted name, keyword arguments)`` of the callable that builds the float network,
            e.g. ``("fastsnn.backbones.create_backbone", {"name": "vgg11", "num_classes": 10})``.
        quant: :func:`fastsnn.quantize_model`'s keyword arguments, ``bits`` included.
        meta: plain data kept with it (names, settings of the run).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    target, kwargs = builder
    file = {
        "format": FORMAT,
        "builder": {"target": target, "kwargs": dict(kwargs)},
        "quant": dict(quant),
        "simulation": dataclasses.asdict(snn.config),
        "ann": qmodel.state_dict(),
        "snn": snn.state_dict(),
        "meta": dict(meta or {}),
    }
    torch.save(file, path)
    return path


def load_snn(path: str | Path, net: nn.Module | None = None, device="cpu", **simulation) -> SpikingModel:
    """The SNN saved in ``path``, ready to run on ``device``; see :func:`read_snn`."""
    return read_snn(path, net, device, **simulation).snn


def read_snn(path: str | Path, net: nn.Module | None = None, device="cpu", **simulation) -> SavedSNN:
    """Rebuild the SNN of a :func:`save_snn` file.

    Args:
        net: the float network to quantize and load the weights into; None builds it with the
            file's builder, which must be in a module of :data:`TRUSTED_BUILDERS` (pass ``net`` for
            a network of your own: the file's ``builder`` says which and with what arguments).
        device: where the SNN and the ANN go (they are rebuilt on the CPU first).
        simulation: :class:`~fastsnn.SimulationConfig` options that replace the saved ones (e.g.
            ``timesteps=15``, ``mode="streaming"``, ``integer_kernels=False``).
    """
    file = _read(path)
    target, kwargs = file["builder"]["target"], file["builder"]["kwargs"]
    net = _build(target, kwargs, path) if net is None else net
    quant = dict(file["quant"])
    qmodel = quantize_model(net, **quant)
    qmodel.load_state_dict(file["ann"])
    config = SimulationConfig(**file["simulation"]).replace(**simulation)
    snn = convert_to_snn(qmodel.eval(), config)
    snn.load_state_dict(file["snn"])
    return SavedSNN(snn.to(device), qmodel.to(device), (target, kwargs), quant, file["meta"])


def _read(path: str | Path) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no SNN file at {path}")
    file = torch.load(path, map_location="cpu", weights_only=True)  # converted on the CPU, then moved
    if not isinstance(file, dict) or file.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an SNN file of fastsnn ({FORMAT}; made by fastsnn.save_snn or a run's "
            "checkpoints/snn_finetuned.pt): rebuild the SNN with quantize_model and convert_to_snn instead"
        )
    return file


def _build(target: str, kwargs: dict, path) -> nn.Module:
    """Call the builder named in the file, if its module is trusted."""
    module_name, _, attr = target.rpartition(".")
    if not target.startswith(TRUSTED_BUILDERS) or not module_name:
        raise ValueError(
            f"{path} is built by {target}({kwargs}), outside the modules load_snn imports by itself "
            f"({', '.join(TRUSTED_BUILDERS)}): build that network yourself and pass it, "
            "load_snn(path, net=...)"
        )
    return getattr(importlib.import_module(module_name), attr)(**kwargs)
