"""What the Lightning glue (:mod:`fastsnn.callbacks`, :mod:`tasks.finetune_stage`) needs from a task.

Any ``LightningModule`` with these members works with the conversion callback and the
fine-tuning stage; ``tasks.base.SNNTaskModule`` is the one this project's tasks share.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .convert import SpikingModel


@runtime_checkable
class SpikingTask(Protocol):
    net: nn.Module  # the quantized ANN
    eval_label: str  # what a test pass evaluates: "ann", or the label of an SNN pass ("snn", ...)
    device: torch.device

    @property
    def snn(self) -> SpikingModel | None: ...  # the converted network, once there is one

    def set_snn(self, snn: SpikingModel | None) -> None: ...

    def inputs(self, batch: Any) -> torch.Tensor:
        """The network input of a batch."""
        ...

    def score(self, model: nn.Module, dataloader: Any, max_batches: int | None = None) -> float:
        """The headline metric of ``model`` (ANN or SNN) on ``dataloader``, on ``self.device``."""
        ...

    def log(self, name: str, value: Any, **kwargs: Any) -> None: ...

    def to(self, device: torch.device) -> Any: ...
