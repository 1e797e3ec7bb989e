"""The fine-tuning stage: :func:`fastsnn.layerwise_finetune` on a Lightning task module's SNN.

It is a stage of its own, not a Lightning callback: it runs after the SNN's test pass, with
its own loop (no Trainer), on any module that follows :class:`fastsnn.protocol.SpikingTask`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fastsnn.finetune import LayerReport, layerwise_finetune
from fastsnn.protocol import SpikingTask
from tasks.checkpoints import load_checkpoint


class _Limited:
    """A re-iterable view of the first ``n`` batches of a data loader."""

    def __init__(self, loader: Iterable, n: int | None):
        self.loader, self.n = loader, n

    def __iter__(self):
        return iter(self.loader) if self.n is None else itertools.islice(self.loader, self.n)

    def __len__(self):
        total = len(self.loader)
        return total if self.n is None else min(total, self.n)


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # never leaves a half-written checkpoint behind


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FineTuningStage:
    """Layer-wise fine-tuning of ``module.snn`` against ``module.net``, as a stage of a run.

    A progress bar per layer, a checkpoint after each layer (``checkpoint_dir/finetune_last.pt``:
    SNN weights and the next layer to tune), per-layer logs (``finetune/mse_before``,
    ``finetune/mse_after``, ``finetune/loss``, ``finetune/kept``, stepped by layer index).
    ``resume`` names such a checkpoint to continue an interrupted stage. With ``validate``, a
    layer's update is kept only if the headline metric on (the first ``limit_val_batches``
    batches of) the validation split does not drop.

    Every layer is tuned on the same batches: one pass over (the first ``limit_batches``
    batches of) the training split, held with the values carried from layer to layer when
    they fit in memory (``layerwise_finetune(cache=True)``); otherwise, as logged then, each
    layer takes a fresh pass and the SNN is simulated from the input for every layer.

    ``device`` (``"auto"``: the GPU when there is one) is decided once; the whole task module
    (ANN, metrics) and its SNN move there, since a test pass before leaves them on the CPU.
    Under multi-process DDP, rank 0 fine-tunes and the result is broadcast to the others.
    """

    def __init__(
        self,
        epochs_per_layer: int = 1,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        validate: bool = True,
        keep_if_better: bool = True,
        limit_batches: int | None = None,
        limit_val_batches: int | None = None,
        measure_batches: int = 4,
        device: str = "auto",
        checkpoint_dir: str | None = None,
        resume: str | None = None,
        progress: bool = True,
    ):
        self.epochs_per_layer = epochs_per_layer
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.validate = validate
        self.keep_if_better = keep_if_better
        self.limit_batches = limit_batches
        self.limit_val_batches = limit_val_batches
        self.measure_batches = measure_batches
        self.device = device
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.resume = resume
        self.progress = progress

    def run(self, module: SpikingTask, datamodule, loggers=()) -> list[LayerReport]:
        if module.snn is None:
            raise RuntimeError("the fine-tuning stage needs a converted SNN: run the convert stage first")
        dist = torch.distributed
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        rank = dist.get_rank() if distributed else 0
        reports: list[LayerReport] = []
        if rank == 0:
            reports = self._tune(module, datamodule, loggers)
        if distributed:
            payload = [module.snn.state_dict(), reports] if rank == 0 else [None, None]
            dist.broadcast_object_list(payload, src=0)
            module.snn.load_state_dict(payload[0])
            reports = payload[1]
        return reports

    def _tune(self, module: SpikingTask, datamodule, loggers) -> list[LayerReport]:
        device = resolve_device(self.device)
        module.to(device)  # the ANN teacher and the validation metrics
        module.snn.to(device)  # kept out of the module tree (see SNNTaskModule.set_snn)
        start, done = self._resume(module, device)
        prior = len(done)
        datamodule.setup("fit")
        validate = None
        if self.validate:

            def validate(snn):
                return module.score(snn, datamodule.val_dataloader(), self.limit_val_batches)

        def on_layer_end(report: LayerReport) -> None:
            done.append(report)
            self._log_layer(report, loggers)
            self._checkpoint(module, done, next_layer=start + len(done) - prior)

        layerwise_finetune(
            module.net,
            module.snn,
            _Limited(datamodule.train_dataloader(), self.limit_batches),
            epochs_per_layer=self.epochs_per_layer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            validate=validate,
            on_layer_end=on_layer_end,
            start_layer=start,
            input_fn=module.inputs,
            measure_batches=self.measure_batches,
            keep_if_better=self.keep_if_better,
            progress=self._progress,
            cache=True,  # one pass of the (limited) loader is held and used for every layer, if it fits
        )
        return done

    def _resume(self, module: SpikingTask, device: torch.device) -> tuple[int, list[LayerReport]]:
        """The layer to start from and the reports so far (from ``resume``, or a fresh start)."""
        if not self.resume:
            return 0, []
        state = load_checkpoint(self.resume, map_location=device)
        snn = module.snn
        if state["timesteps"] != snn.timesteps or state["signed"] != snn.signed:
            raise ValueError(
                f"{self.resume} was made at T={state['timesteps']}, signed={state['signed']}, but this "
                f"run has T={snn.timesteps}, signed={snn.signed}; use the same settings to resume."
            )
        snn.load_state_dict(state["snn"])
        return state["next_layer"], [LayerReport(**r) for r in state["reports"]]

    def _progress(self, loader, description: str):
        return tqdm(loader, desc=f"fine-tune {description}", leave=False, disable=not self.progress, dynamic_ncols=True)

    def _log_layer(self, report: LayerReport, loggers) -> None:
        metrics = {
            "finetune/mse_before": report.mse_before,
            "finetune/mse_after": report.mse_after,
            "finetune/loss": report.train_loss,
            "finetune/kept": float(report.kept),
        }
        if report.score is not None:
            metrics["finetune/val_score"] = report.score
        for logger in loggers:
            logger.log_metrics(metrics, step=report.index)
        if self.progress:
            undone = "" if report.kept else " (undone: no improvement)"
            tqdm.write(f"fine-tuned {report.path}: mse {report.mse_before:.4g} -> {report.mse_after:.4g}{undone}")

    def _checkpoint(self, module: SpikingTask, done: list[LayerReport], next_layer: int) -> None:
        if self.checkpoint_dir is None:
            return
        snn = module.snn
        state = {
            "snn": snn.state_dict(),
            "next_layer": next_layer,
            "reports": [vars(r) for r in done],  # plain data: the file loads with weights_only=True
            "timesteps": snn.timesteps,
            "signed": snn.signed,
        }
        _atomic_save(state, self.checkpoint_dir / "finetune_last.pt")
