"""Lightning glue: the conversion callback and the layer-wise fine-tuning stage.

Both work with any LightningModule that follows the small protocol of
``tasks.base.SNNTaskModule``: ``net`` (the quantized ANN), ``snn`` / ``set_snn(snn)``,
``eval_label`` (what ``test`` evaluates), ``inputs(batch)`` and ``score(model, loader)``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from lightning.pytorch import Callback
from tqdm.auto import tqdm

from .convert import SpikingModel, convert_to_snn
from .finetune import LayerReport, layerwise_finetune
from .stats import spike_stats


class SNNConversion(Callback):
    """Swaps the quantized activations for (signed) IF neurons and measures the SNN.

    * ``convert(module)`` converts ``module.net`` and attaches the SNN (``module.snn``). The
      pipeline calls it after loading the best checkpoint of training, or a given checkpoint.
    * with ``convert_on_fit_end=True``, ``on_fit_end`` converts the final weights, so a plain
      ``Trainer`` with this callback ends with an SNN too (the pipeline converts the best
      checkpoint instead, and a full-precision stage has nothing to convert).
    * ``mode``: ``"multistep"`` (fast) or ``"streaming"`` (memory independent of T), see
      :class:`fastsnn.SpikingModel`; ``compiled``: fuse the neuron loops with torch.compile;
      ``chunk_size``: simulate each batch this many samples at a time (faster on CPUs, less
      memory; same outputs).
    * In every SNN test pass (``module.eval_label != "ann"``) it converts if no SNN is there
      yet, and logs spike statistics on the first ``stats_batches`` test batches:
      ``<label>/spike_rate``, ``pos_rate``, ``neg_rate``, ``sops``, ``energy_ratio`` and the
      per-layer rates ``<label>/layer_rate/<layer>``.
    """

    def __init__(
        self,
        timesteps: int | None = None,
        signed: bool = True,
        stats_batches: int = 4,
        mode: str = "multistep",
        compiled: bool = False,
        convert_on_fit_end: bool = False,
        chunk_size: int | None = None,
    ):
        self.timesteps = timesteps
        self.chunk_size = chunk_size
        self.mode = mode
        self.compiled = compiled
        self.convert_on_fit_end = convert_on_fit_end
        self.signed = signed
        self.stats_batches = stats_batches
        self._inputs: list[torch.Tensor] = []
        self.last_stats: dict | None = None

    def convert(self, module) -> SpikingModel:
        snn = convert_to_snn(
            module.net, self.timesteps, self.signed, self.mode, self.compiled, chunk_size=self.chunk_size
        )
        module.set_snn(snn.to(module.device))
        return snn

    def on_fit_end(self, trainer, module):
        if self.convert_on_fit_end:
            self.convert(module)

    def on_test_epoch_start(self, trainer, module):
        self._inputs = []
        if module.eval_label != "ann" and module.snn is None:
            self.convert(module)

    def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if module.eval_label != "ann" and len(self._inputs) < self.stats_batches:
            self._inputs.append(module.inputs(batch))

    def on_test_epoch_end(self, trainer, module):
        if module.eval_label == "ann" or not self._inputs:
            return
        stats = spike_stats(module.snn, self._inputs)
        label = module.eval_label
        for key in ("spike_rate", "pos_rate", "neg_rate", "sops", "first_layer_macs", "ann_macs"):
            module.log(f"{label}/{key}", float(stats[key]), sync_dist=True)
        module.log(f"{label}/energy_ratio", float(stats["energy"]["ratio"]), sync_dist=True)
        for layer in stats["layers"]:
            module.log(f"{label}/layer_rate/{layer['name']}", layer["pos_rate"] + layer["neg_rate"], sync_dist=True)
        self.last_stats = stats
        self._inputs = []


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


class LayerwiseFineTuning:
    """The fine-tuning stage: :func:`fastsnn.layerwise_finetune` on a task module's SNN.

    Runs on its own (no Trainer): a progress bar per layer, a checkpoint after each layer
    (``checkpoint_dir/finetune_last.pt``: SNN weights and the next layer to tune), per-layer
    logs (``finetune/mse_before``, ``finetune/mse_after``, ``finetune/loss``,
    ``finetune/kept``, stepped by layer index). ``resume`` names such a checkpoint to continue
    an interrupted stage. With ``validate``, a layer's update is kept only if the headline
    metric on (the first ``limit_val_batches`` batches of) the validation split does not drop.

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

    def _device(self, module) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def run(self, module, datamodule, loggers=()) -> list[LayerReport]:
        if module.snn is None:
            raise RuntimeError("the fine-tuning stage needs a converted SNN: run the convert stage first")
        distributed = (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        )
        rank = torch.distributed.get_rank() if distributed else 0
        reports: list[LayerReport] = []
        if rank == 0:
            reports = self._tune(module, datamodule, loggers)
        if distributed:
            payload = [module.snn.state_dict(), reports] if rank == 0 else [None, None]
            torch.distributed.broadcast_object_list(payload, src=0)
            module.snn.load_state_dict(payload[0])
            reports = payload[1]
        return reports

    def _tune(self, module, datamodule, loggers) -> list[LayerReport]:
        device = self._device(module)
        module.net.to(device)
        module.snn.to(device)
        start, done = 0, []
        if self.resume:
            state = torch.load(self.resume, map_location=device, weights_only=False)
            if state["timesteps"] != module.snn.timesteps or state["signed"] != module.snn.signed:
                raise ValueError(
                    f"{self.resume} was made at T={state['timesteps']}, signed={state['signed']}, but this "
                    f"run has T={module.snn.timesteps}, signed={module.snn.signed}; use the same settings to resume."
                )
            module.snn.load_state_dict(state["snn"])
            start, done = state["next_layer"], state["reports"]
        datamodule.setup("fit")
        train = _Limited(datamodule.train_dataloader(), self.limit_batches)
        validate = None
        if self.validate:

            def validate(snn):
                return module.score(snn, datamodule.val_dataloader(), self.limit_val_batches)

        def progress(loader, description):
            return tqdm(
                loader, desc=f"fine-tune {description}", leave=False, disable=not self.progress, dynamic_ncols=True
            )

        def on_layer_end(report: LayerReport):
            done.append(report)
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
                tqdm.write(
                    f"fine-tuned {report.path}: mse {report.mse_before:.4g} -> {report.mse_after:.4g}"
                    f"{'' if report.kept else ' (undone: no improvement)'}"
                )
            if self.checkpoint_dir is not None:
                _atomic_save(
                    {
                        "snn": module.snn.state_dict(),
                        "next_layer": start + len(done) - len(prior),
                        "reports": done,
                        "timesteps": module.snn.timesteps,
                        "signed": module.snn.signed,
                    },
                    self.checkpoint_dir / "finetune_last.pt",
                )

        prior = list(done)
        layerwise_finetune(
            module.net,
            module.snn,
            train,
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
            progress=progress,
        )
        return done
