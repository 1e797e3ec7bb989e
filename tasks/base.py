"""The LightningModule every task shares: a quantized network, its SNN, and their evaluation.

A task (classification, detection, segmentation) subclasses :class:`SNNTaskModule` and
supplies four things: ``loss(outputs, batch)``, ``make_metrics()``,
``update_metrics(metrics, outputs, batch)`` and ``metric`` (the name of its headline
metric, e.g. ``"acc"``, ``"map_50"``, ``"miou"``). Everything else, training, the ANN and
SNN test passes, the accuracy-vs-time curve, the metric names, is here, so the stages and
callbacks in :mod:`fastsnn.callbacks` work for every task alike.

Metric names are ``<stage>/<name>``: ``train/loss``, ``val/acc``, ``ann/test_acc``,
``snn/test_acc``, ``snn_finetuned/test_acc``, and per time step ``snn/test_acc_t03``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from fastsnn import SpikingModel
from tasks.common.seeding import STEP, seed_all
from tasks.results import per_step_key


class SNNTaskModule(L.LightningModule):
    """Base module: ``net`` is the quantized ANN; ``snn`` is set by the conversion stage.

    ``eval_label`` selects what ``test`` evaluates: ``"ann"`` (the quantized ANN) or the
    label of an SNN pass (``"snn"``, ``"snn_finetuned"``); SNN passes also log the metric
    after every time step.
    """

    metric: str = "acc"

    def __init__(self, net: nn.Module, optimizer: Any = None, scheduler: Any = None, per_step_metrics: bool = True):
        super().__init__()
        self.net = net
        self.set_snn(None)
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        self.per_step_metrics = per_step_metrics
        self.eval_label = "ann"
        self.val_metrics = self.make_metrics()
        self.test_metrics = self.make_metrics()
        self.step_metrics = nn.ModuleList()
        self.run_meta: dict = {}  # task, model, data, bits, seed: stored in every checkpoint

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["fastsnn"] = dict(self.run_meta)

    # ----------------------------------------------------------------- task hooks
    def loss(self, outputs, batch) -> torch.Tensor:
        raise NotImplementedError

    def make_metrics(self) -> nn.Module:
        """A metric collection whose ``compute()`` returns a dict with ``self.metric``."""
        raise NotImplementedError

    def update_metrics(self, metrics: nn.Module, outputs, batch) -> None:
        raise NotImplementedError

    def inputs(self, batch) -> torch.Tensor:
        return batch[0]

    # ----------------------------------------------------------------- training
    def forward(self, x):
        return self.net(x)

    def on_train_batch_start(self, batch, batch_idx):
        """Reseed from (seed, epoch, batch, rank): a step's random draws (dropout) are then the same
        in a run resumed from a checkpoint, which carries no generator states. Not the global step,
        which batches accumulated into one optimizer step share; the rank, so that DDP processes
        draw differently. Without a run seed (a module trained outside tasks.pipeline) nothing is reseeded.
        """
        seed = self.run_meta.get("seed")
        if seed is not None:
            seed_all(STEP, seed, self.current_epoch, batch_idx, self.global_rank, cuda=True)

    def training_step(self, batch, batch_idx):
        outputs = self.net(self.inputs(batch))
        loss = self.loss(outputs, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(self.inputs(batch)))
        return loss

    def validation_step(self, batch, batch_idx):
        outputs = self.net(self.inputs(batch))
        self.log("val/loss", self.loss(outputs, batch), batch_size=len(self.inputs(batch)), sync_dist=True)
        self.update_metrics(self.val_metrics, outputs, batch)

    def on_validation_epoch_end(self):
        for name, value in self._compute(self.val_metrics).items():
            self.log(f"val/{name}", value, prog_bar=name == self.metric, sync_dist=False)

    # ----------------------------------------------------------------- testing (ANN or SNN)
    def on_test_epoch_start(self):
        if self.eval_label != "ann":
            if self.snn is None:
                raise RuntimeError("no SNN to test: run the convert stage first")
            self.snn.to(self.device)
            T = self.snn.timesteps if self.per_step_metrics else 0
            self.step_metrics = nn.ModuleList(self.make_metrics() for _ in range(T)).to(self.device)

    def test_step(self, batch, batch_idx):
        x = self.inputs(batch)
        if self.eval_label == "ann":
            self.update_metrics(self.test_metrics, self.net(x), batch)
            return
        if self.per_step_metrics:
            outputs, steps = self.snn(x, return_steps=True)
            for t, metrics in enumerate(self.step_metrics):
                self.update_metrics(metrics, _select_step(steps, t), batch)
        else:
            outputs = self.snn(x)
        self.update_metrics(self.test_metrics, outputs, batch)

    def on_test_epoch_end(self):
        label = self.eval_label
        for name, value in self._compute(self.test_metrics).items():
            self.log(f"{label}/test_{name}", value)
        for t, metrics in enumerate(self.step_metrics, start=1):
            self.log(per_step_key(label, self.metric, t), self._compute(metrics)[self.metric])
        self.step_metrics = nn.ModuleList()

    def _compute(self, metrics) -> dict[str, torch.Tensor]:
        values = metrics.compute()
        metrics.reset()
        return {k: v.float() for k, v in values.items() if torch.is_tensor(v) and v.numel() == 1}

    # ----------------------------------------------------------------- optimisation
    def set_snn(self, snn: SpikingModel | None) -> None:
        """Attach the converted network (read it back as ``module.snn``).

        Kept out of the module tree on purpose: checkpoints of the train stage stay loadable
        whether or not a conversion happened (the stages that make an SNN save it), and
        Lightning's spawn-based strategies move state dicts between processes.
        """
        self.__dict__["snn"] = snn

    def configure_optimizers(self):
        """``optimizer`` / ``scheduler`` are factories (Hydra ``_partial_`` configs)."""
        if self.optimizer_cfg is None:
            raise RuntimeError("no optimizer configured for this task module")
        optimizer = self.optimizer_cfg(self.net.parameters())
        if self.scheduler_cfg is None:
            return optimizer
        scheduler = self.scheduler_cfg(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ----------------------------------------------------------------- evaluation outside Lightning
    @torch.no_grad()
    def score(self, model: nn.Module, dataloader, max_batches: int | None = None) -> float:
        """The headline metric of ``model`` (ANN or SNN) on ``dataloader``, without a Trainer."""
        metrics = self.make_metrics().to(self.device)
        for i, batch in enumerate(dataloader):
            if max_batches is not None and i >= max_batches:
                break
            batch = self.transfer_batch_to_device(batch, self.device, 0)
            self.update_metrics(metrics, model(self.inputs(batch)), batch)
        return float(self._compute(metrics)[self.metric])


def _select_step(steps, t: int):
    """Step ``t`` of per-step outputs (a tensor ``[T, ...]`` or a tuple/list/dict of them)."""
    if torch.is_tensor(steps):
        return steps[t]
    if isinstance(steps, dict):
        return {k: _select_step(v, t) for k, v in steps.items()}
    return type(steps)(_select_step(s, t) for s in steps)
