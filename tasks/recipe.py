"""How a run's quantized network is built (:class:`Recipe`), saved with its SNN, and read back for
``stages=[evaluate] snn_path=...``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from fastsnn.saved import SavedSNN, read_snn
from tasks.settings import SettingsError

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    """The network's builder and ``quantize_model``'s options (``bits`` included)."""

    builder: tuple[str, dict]  # (dotted name, keyword arguments)
    quant: dict


def net_builder(net: DictConfig, datamodule) -> tuple[str, dict]:
    """``model.net`` as (dotted name, arguments), with the data's classes and channels; without
    pretrained weights (the saved ANN's replace them: rebuilding must not need their file)."""
    kwargs = OmegaConf.to_container(net, resolve=True)
    target = kwargs.pop("_target_")
    if "weights" in kwargs:
        kwargs["weights"] = None
    return target, {**kwargs, "num_classes": datamodule.num_classes, "in_channels": datamodule.in_channels}


def quant_options(quant: DictConfig, bits: int | None) -> dict:
    """``quantize_model``'s keyword arguments for a stage at ``bits`` (None: full precision)."""
    options = {k: v for k, v in OmegaConf.to_container(quant, resolve=True).items() if not k.startswith("_")}
    return {**options, **full_precision_weights(quant, bits), "bits": bits}


def full_precision_weights(quant: DictConfig, bits: int | None) -> dict:
    """Overrides of ``cfg.quant`` for a stage at ``bits``: at full precision (``bits`` None) an integer
    ``weight_bits`` is ignored, with a warning, so that the float stage keeps float weights."""
    weight_bits = quant.get("weight_bits")
    if bits is not None or weight_bits in (None, "same"):
        return {}
    log.warning(
        "quant.weight_bits=%s is ignored at bits=32: the full-precision stage keeps float weights "
        "(they are quantized from the next stage on, with init_from=...)",
        weight_bits,
    )
    return {"weight_bits": None}


def read_saved_snn(cfg: DictConfig) -> SavedSNN | None:
    """The SNN file of ``stages=[evaluate]``, rebuilt; None for the other runs."""
    if "evaluate" not in cfg.stages:
        return None
    if not cfg.get("snn_path"):
        raise SettingsError("stages=[evaluate] tests a saved SNN: give snn_path=<run>/checkpoints/snn_finetuned.pt")
    try:
        return read_snn(cfg.snn_path)
    except (OSError, ValueError) as err:
        raise SettingsError(f"cannot open the SNN of snn_path={cfg.snn_path}: {err}") from err


def check_saved_snn(saved: SavedSNN, cfg: DictConfig, datamodule):
    """The saved SNN's quantized ANN, once its task and data fit the run's; else what to change."""
    made_for = saved.meta
    if made_for.get("task") not in (None, cfg.task.name):
        raise SettingsError(f"{cfg.snn_path} holds a {made_for['task']} SNN: add task={made_for['task']}")
    classes = saved.builder[1].get("num_classes")
    if classes not in (None, datamodule.num_classes):
        raise SettingsError(
            f"{cfg.snn_path} has {classes} classes and this data {datamodule.num_classes}: add "
            f"data={made_for.get('data', '...')} (the data it was made for)"
        )
    return saved.ann
