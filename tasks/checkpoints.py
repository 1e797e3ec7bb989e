"""Reading checkpoints: a train stage's (their bit width and network weights), and other weights
to start training from (``init_from``: a plain state dict, torchvision's files, other frameworks')."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
from torch import nn

from fastsnn.weights import WeightMatch, load_matching, network_state
from tasks.settings import SettingsError

log = logging.getLogger(__name__)


def load_checkpoint(path: str, map_location="cpu", lightning: bool = False) -> dict:
    """A checkpoint's tensors and plain data, or a :class:`SettingsError` saying what is wrong.

    Loaded with ``weights_only=True``: a file that carries other pickled objects (which could run
    code when unpickled) is refused, and nothing in it runs. ``lightning``: it must be a Lightning
    checkpoint of this project (a ``state_dict``).
    """
    if not Path(path).is_file():
        raise SettingsError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise SettingsError(
            f"refused to open {path}: it carries pickled Python objects besides tensors and plain data, which "
            f"could run code when loaded ({str(err).splitlines()[0]}). If you trust the file, load it yourself "
            "with torch.load(path) and weights_only set to False, then save its tensors (e.g. its state_dict) to a new file"
        ) from err
    except Exception as err:
        raise SettingsError(f"cannot read checkpoint {path}: {err}") from err
    if lightning and (not isinstance(ckpt, dict) or "state_dict" not in ckpt):
        raise SettingsError(f"{path} is not a Lightning checkpoint of this project (no 'state_dict')")
    return ckpt


def checkpoint_bits(path: str | None) -> int | None:
    """Activation bits stored in a checkpoint of ours (None when unknown or full precision)."""
    if not path:
        return None
    return load_checkpoint(path, lightning=True).get("fastsnn", {}).get("bits")


def load_weights(net: nn.Module, path: str, partial: bool = False) -> WeightMatch | None:
    """Load a checkpoint's network weights into ``net``.

    ``partial`` (``init_from``): the file may be another bit width's checkpoint of this project
    (parameters it lacks, e.g. weight-quantizer clips when starting from full precision, keep their
    initial values), or any other file of weights (:func:`load_foreign_weights`, whose report is
    returned). Without ``partial`` (``ckpt_path``) it must be a checkpoint of this project.
    """
    ckpt = load_checkpoint(path)
    if not (isinstance(ckpt, dict) and "fastsnn" in ckpt and "state_dict" in ckpt):
        if partial:
            return load_foreign_weights(net, ckpt, path)
        raise SettingsError(
            f"{path} is not a checkpoint of this project's train stage: ckpt_path= needs one; to start training "
            "from other weights (a state dict, torchvision's, another framework's), use init_from="
        )
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    own = net.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise SettingsError(
            f"{path} does not fit this model (shape mismatch in {wrong[:5]}): "
            "was it trained with another model, width or data set?"
        )
    missing, unexpected = net.load_state_dict(state, strict=not partial)
    if partial and (missing or unexpected):
        log.info("init_from %s: kept initial values for %s; ignored %s", path, missing, unexpected)
    return None


def load_foreign_weights(net: nn.Module, ckpt, path: str) -> WeightMatch:
    """The tensors of another tool's file that fit ``net`` by name and shape; a file that fits none
    stops the run (:func:`fastsnn.weights.load_matching`)."""
    try:
        match = load_matching(net, network_state(ckpt, path), f"init_from={path}")
    except ValueError as err:
        raise SettingsError(str(err)) from err
    log.info("%s", match.summary())
    return match
