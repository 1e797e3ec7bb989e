"""Weights from elsewhere into a model: a plain state dict, torchvision's files, another framework's
checkpoint.

:func:`load_matching` copies every tensor whose name and shape fit, and says what it did with the
rest (:class:`WeightMatch`): a classifier head with another number of classes is *replaced*
(kept at its initial values), parameters the file lacks keep theirs, and entries the model does not
have are ignored. A file that fits no parameter at all is refused: it belongs to another model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

# where other tools keep the network inside a checkpoint dict, and the prefixes of its names
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
_PREFIXES = ("", "net.", "model.", "module.", "backbone.", "net.module.", "model.module.")


@dataclass
class WeightMatch:
    """What :func:`load_matching` did with a file's tensors."""

    source: str
    loaded: list[str] = field(default_factory=list)  # copied into the model
    replaced: list[str] = field(default_factory=list)  # same name, other shape (e.g. a head): kept initial
    missing: list[str] = field(default_factory=list)  # the model's, absent from the file: kept initial
    ignored: list[str] = field(default_factory=list)  # the file's, absent from the model
    prefix: str = ""  # stripped from the file's names

    def as_dict(self) -> dict:
        """For results.json: the count of loaded tensors, the names of the others."""
        return {
            "source": self.source,
            "loaded": len(self.loaded),
            "replaced": self.replaced,
            "missing": self.missing,
            "ignored": self.ignored,
        }

    def summary(self) -> str:
        return (
            f"{self.source}: loaded {len(self.loaded)} tensors; replaced (other shape, kept initial): "
            f"{_short(self.replaced)}; missing from the file (kept initial): {_short(self.missing)}; "
            f"ignored (not in the model): {_short(self.ignored)}"
        )


def network_state(obj, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: a state dict itself, or one nested under a usual key."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    for key in _NESTED_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            return network_state(obj[key], source)
    raise ValueError(
        f"{source} holds no state dict (a mapping of names to tensors, at its top or under one of "
        f"{list(_NESTED_KEYS)}): save the network's weights with torch.save(model.state_dict(), path)"
    )


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> WeightMatch:
    """Copy the tensors of ``state`` that fit ``model`` by name and shape; see the module's doc.

    Raises ``ValueError`` naming ``source`` when no tensor fits.
    """
    own = model.state_dict()
    prefix = max(_PREFIXES, key=lambda p: _fits(state, own, p))
    match = WeightMatch(source, prefix=prefix)
    renamed = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    for name, tensor in renamed.items():
        if name not in own:
            match.ignored.append(name)
        elif own[name].shape != tensor.shape:
            match.replaced.append(name)
        else:
            match.loaded.append(name)
    match.ignored += [k for k in state if not k.startswith(prefix)]
    match.missing = [k for k in own if k not in renamed]
    if not any(n in dict(model.named_parameters()) for n in match.loaded):
        raise ValueError(
            f"{source} fits no parameter of the model ({len(state)} tensors, e.g. {_short(list(state), 3)}; the "
            f"model's are e.g. {_short(list(own), 3)}): is it the weights of another model?"
        )
    model.load_state_dict({n: renamed[n] for n in match.loaded}, strict=False)
    return match


def _fits(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], prefix: str) -> int:
    return sum(1 for k, v in state.items() if k.startswith(prefix) and own.get(k[len(prefix) :]) is not None)


def _short(names: list[str], n: int = 6) -> str:
    if not names:
        return "none"
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
