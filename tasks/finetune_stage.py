"""The fine-tuning stage: :func:`fastsnn.layerwise_finetune`, then optionally
:func:`fastsnn.network_finetune`, on a Lightning task module's SNN.

It is a stage of its own, not a Lightning callback: it runs after the SNN's test pass, with
its own loop (no Trainer), on any module that follows :class:`fastsnn.protocol.SpikingTask`.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fastsnn.finetune import LayerReport, NetworkReport, layerwise_finetune, network_finetune
from fastsnn.finetune.store import CacheWriteError
from fastsnn.protocol import SpikingTask
from tasks.checkpoints import load_checkpoint

log = logging.getLogger(__name__)


class _Limited:
    """A re-iterable view of the first ``n`` batches of a data loader."""

    def __init__(self, loader: Iterable, n: int | None):
        self.loader, self.n = loader, n

    def __iter__(self):
        return iter(self.loader) if self.n is None else itertools.islice(self.loader, self.n)

    def __len__(self):
        total = len(self.loader)
        return total if self.n is None else min(total, self.n)


PHASES = ("layerwise", "output")
# the network-level phase's settings (docs/method.md §4.1): finetune.output.<key>
OUTPUT_DEFAULTS = {
    "epochs": 1,
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "loss": "mse",  # mse | kl | task (the task module's own loss on the batch's labels)
    "output_layer": False,  # tune the analog output layer too
    "checkpoint_every": 50,  # steps between checkpoints inside an epoch (null: after each epoch only)
    "limit_batches": None,  # training batches per epoch (null: finetune.limit_batches)
}


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # never leaves a half-written checkpoint behind


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU; anything else as given. A GPU without
    an index is this process's current one (under DDP, the one its rank was given)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def process_group() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without a process group)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Shard:
    """This process's share of the first ``n`` batches of a loader (``size`` at least): every
    ``size``-th from ``rank``."""

    def __init__(self, loader, n: int | None, rank: int, size: int):
        self.loader, self.n, self.rank, self.size = loader, n, rank, size

    def __iter__(self):
        n = None if self.n is None else max(self.n, self.size)  # a batch for every process at least
        for i, batch in enumerate(itertools.islice(self.loader, n)):
            if i % self.size == self.rank:
                yield batch


def _spawned_stage(stage: FineTuningStage, module: SpikingTask, datamodule, strategy):
    """One spawned process of :meth:`FineTuningStage.run_on`: joins the strategy's process group, tunes."""
    strategy.setup_environment()  # this process's rank (LOCAL_RANK from the launcher) and the group
    module.set_snn(copy.deepcopy(module.snn))  # weights of its own: spawned tensors share their memory
    records: list[logging.LogRecord] = []  # fastsnn's messages (the plan line), for the run's log
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logging.getLogger("fastsnn").addHandler(handler)
    logging.getLogger("fastsnn").setLevel(logging.INFO)
    reports = stage.run(module, datamodule)
    if stage.rank != 0:
        return None
    for record in records:
        record.msg, record.args, record.exc_info = record.getMessage(), None, None  # plain text
    # through a file: the launcher's queue is read only after the processes end, and a large
    # message would block the first one for ever (Lightning returns its weights the same way)
    fd, weights = tempfile.mkstemp(suffix=".pt", prefix="fastsnn-finetuned-")
    os.close(fd)
    torch.save(module.snn.state_dict(), weights)
    return weights, reports, vars(stage), records


class FineTuningStage:
    """Fine-tuning of ``module.snn`` against ``module.net``, as a stage of a run, in ``phases``:
    ``layerwise`` (docs/method.md §4), then ``output`` (§4.1, the whole network towards the ANN's
    output; its settings in ``output``, see ``OUTPUT_DEFAULTS``).

    A progress bar per layer and per epoch, a checkpoint after each layer, and in the output phase
    every ``output.checkpoint_every`` steps and after each epoch (``checkpoint_dir/finetune_last.pt``:
    SNN weights, the next layer to tune, the output phase's state), per-layer logs
    (``finetune/mse_before``, ``finetune/mse_after``, ``finetune/loss``, ``finetune/kept``, stepped
    by layer index) and per-epoch ones (``finetune/output_*``). ``resume`` names such a checkpoint to
    continue an interrupted stage. With ``validate``, an update (a layer's; an epoch of the output
    phase) is kept only if the headline metric on (the first ``limit_val_batches`` batches of) the
    validation split does not drop. :meth:`record` files the phases' times and reports in results.

    Every layer is tuned on the same batches: one pass over (the first ``limit_batches``
    batches of) the training split, the values carried from layer to layer where ``cache``
    says (``layerwise_finetune(cache=..., cache_dir=...)``). The output phase passes over the
    same (limited) loader once per epoch.

    ``device`` (``"auto"``: the GPU when there is one) is decided once; the whole task module
    (ANN, metrics) and its SNN move there, since a test pass before leaves them on the CPU.
    Under multi-process DDP every process tunes on its shard (``distributed=True``), the first
    writes the checkpoints; :meth:`run_on` starts the processes of a spawn-based strategy again.
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
        phases: Iterable[str] = ("layerwise",),
        output: dict | None = None,
        cache: str = "auto",
        cache_dir: str | None = None,
        bias_correction: bool = False,
    ):
        self.epochs_per_layer, self.bias_correction = epochs_per_layer, bias_correction
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
        self.cache, self.cache_dir = cache, cache_dir
        self.rank, self.world_size = 0, 1  # the processes that fine-tune together (set by run)
        self.phases = list(phases)
        unknown = [p for p in self.phases if p not in PHASES] + [k for k in output or {} if k not in OUTPUT_DEFAULTS]
        if unknown or len(set(self.phases)) != len(self.phases):
            raise ValueError(
                f"finetune.phases lists {self.phases} and finetune.output sets {sorted(output or {})}: "
                f"the phases are {list(PHASES)} (each once, in that order), the output keys {sorted(OUTPUT_DEFAULTS)}"
            )
        self.phases = [p for p in PHASES if p in self.phases]
        self.output = {**OUTPUT_DEFAULTS, **(output or {})}
        self.times: dict[str, float] = {}  # seconds per phase run by this process
        self.gate_s = 0.0  # of which in the validation gate
        self.output_reports: list[NetworkReport] = []

    def run(self, module: SpikingTask, datamodule, loggers=()) -> list[LayerReport]:
        """Fine-tune ``module.snn`` in place; returns the layer-wise reports (see :meth:`record` for the rest)."""
        if module.snn is None:
            raise RuntimeError("the fine-tuning stage needs a converted SNN: run the convert stage first")
        self.rank, self.world_size = process_group()  # every process tunes on its own shard
        return self._tune(module, datamodule, loggers)

    def run_on(self, trainer, module: SpikingTask, datamodule, loggers=()) -> list[LayerReport]:
        """:meth:`run` in the processes of ``trainer``'s strategy. A spawn-based one (``ddp_spawn``,
        ``trainer=ddp_cpu``) trained in processes that are gone by now: its launcher starts them
        again for this stage, and the first one's weights and reports come back to this process.
        Otherwise (one process; every rank of a ``torchrun`` / ``srun`` launch) it runs here."""
        launcher = getattr(trainer.strategy, "launcher", None)
        spawned = getattr(launcher, "_start_method", None) in ("spawn", "fork", "forkserver")
        if not spawned or trainer.world_size == 1 or process_group()[1] > 1:
            return self.run(module, datamodule, loggers)
        weights, reports, self.__dict__, records = launcher.launch(
            _spawned_stage, self, module, datamodule, trainer.strategy
        )
        for record in records:
            logging.getLogger(record.name).handle(record)
        try:
            module.snn.load_state_dict(torch.load(weights, weights_only=True))
        finally:
            os.remove(weights)
        for report in reports:  # the processes logged nothing: their loggers stay here
            self._log_layer(report, loggers)
        for report in self.output_reports:
            self._log_epoch(report, loggers)
        return reports

    def record(self, results: dict) -> None:
        """The phases' seconds as ``time_s.finetune_<phase>`` (the validation gate's share of them as
        ``time_s.finetune_gate``) and the output phase's epochs as ``finetune_output``."""
        times = results.setdefault("time_s", {})
        times.update({f"finetune_{p}": s for p, s in self.times.items()})
        if self.validate:
            times["finetune_gate"] = self.gate_s
        results["finetune_world_size"] = self.world_size
        if "output" in self.phases:
            results["finetune_output"] = [vars(r) for r in self.output_reports]

    def _tune(self, module: SpikingTask, datamodule, loggers) -> list[LayerReport]:
        device = resolve_device(self.device)
        module.to(device)  # the ANN teacher and the validation metrics
        module.snn.to(device)  # kept out of the module tree (see SNNTaskModule.set_snn)
        start, done, output_state = self._resume(module, device)
        datamodule.setup("fit")
        validate = None
        if self.validate:

            def validate(snn):  # each process scores its share; the metrics sum them over the processes
                start = time.perf_counter()
                shard = _Shard(datamodule.val_dataloader(), self.limit_val_batches, self.rank, self.world_size)
                try:
                    return module.score(snn, shard)
                finally:
                    self.gate_s += time.perf_counter() - start

        loader = _Limited(datamodule.train_dataloader(), self.limit_batches)
        n_layers = sum(not layer.constant_input for layer in module.snn.layers)
        if "layerwise" in self.phases and output_state is None and start < n_layers:
            with self._timed("layerwise"), self._resumable():
                self._layerwise(module, loader, validate, start, done, loggers)
        if "output" in self.phases:
            with self._timed("output"):
                self._network(module, loader, validate, done, output_state, loggers)
        return done

    def _layerwise(self, module: SpikingTask, loader, validate, start: int, done: list, loggers) -> None:
        prior = len(done)

        def on_layer_end(report: LayerReport) -> None:
            done.append(report)
            self._log_layer(report, loggers)
            self._checkpoint(module, done, next_layer=start + len(done) - prior)

        layerwise_finetune(
            module.net,
            module.snn,
            loader,
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
            cache=self.cache,  # "auto": one pass of the (limited) loader carried in memory, on disk, or recomputed
            cache_dir=self.cache_dir,
            distributed=self.world_size > 1,
            bias_correction=self.bias_correction,
        )

    def _network(self, module: SpikingTask, loader, validate, done: list, state: dict | None, loggers) -> None:
        settings = dict(self.output)
        every, limit = settings.pop("checkpoint_every"), settings.pop("limit_batches")
        if limit is not None:
            loader = _Limited(loader.loader, limit)
        if settings["loss"] == "task":
            settings["loss"] = self._task_loss(module)
        n_layers = sum(not layer.constant_input for layer in module.snn.layers)

        def on_checkpoint(output_state: dict) -> None:
            self._checkpoint(module, done, next_layer=n_layers, output=output_state)

        self.output_reports = network_finetune(
            module.net,
            module.snn,
            loader,
            **settings,
            validate=validate,
            keep_if_better=self.keep_if_better,
            measure_batches=self.measure_batches,
            input_fn=module.inputs,
            progress=self._progress,
            on_epoch_end=lambda report: self._log_epoch(report, loggers),
            on_checkpoint=on_checkpoint if self.checkpoint_dir is not None else None,
            checkpoint_every=every,
            resume=state,
            distributed=self.world_size > 1,
        )

    @staticmethod
    def _task_loss(module: SpikingTask):
        if not callable(getattr(module, "loss", None)):
            raise ValueError("finetune.output.loss=task needs the task module's loss(outputs, batch); use mse or kl")

        def loss(snn_out, ann_out, batch):
            return module.loss(snn_out, module.transfer_batch_to_device(batch, module.device, 0))

        return loss

    @contextmanager
    def _resumable(self):
        """A cache that cannot be written stops the stage with the way to resume it."""
        try:
            yield
        except CacheWriteError as e:
            last = self.checkpoint_dir / "finetune_last.pt" if self.checkpoint_dir else None
            how = f"resume from the last finished layer with finetune.resume={last}" if last and last.exists() else ""
            raise CacheWriteError(e.errno, f"{e.strerror}; set finetune.cache_dir or finetune.cache=off. {how}") from e

    @contextmanager
    def _timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[phase] = time.perf_counter() - start
            log.info("fine-tuning phase %s: %.1f s", phase, self.times[phase])

    def _resume(self, module: SpikingTask, device: torch.device) -> tuple[int, list[LayerReport], dict | None]:
        """The layer to start from, the reports so far and the output phase's state (from ``resume``, or a fresh start)."""
        if not self.resume:
            return 0, [], None
        state = load_checkpoint(self.resume, map_location=device)
        snn = module.snn
        if state["timesteps"] != snn.timesteps or state["signed"] != snn.signed:
            raise ValueError(
                f"{self.resume} was made at T={state['timesteps']}, signed={state['signed']}, but this "
                f"run has T={snn.timesteps}, signed={snn.signed}; use the same settings to resume."
            )
        snn.load_state_dict(state["snn"])
        return state["next_layer"], [LayerReport(**r) for r in state["reports"]], state.get("output")

    def _progress(self, loader, description: str):
        quiet = not self.progress or self.rank != 0
        return tqdm(loader, desc=f"fine-tune {description}", leave=False, disable=quiet, dynamic_ncols=True)

    def _log_layer(self, report: LayerReport, loggers) -> None:
        values = {"mse_before": report.mse_before, "mse_after": report.mse_after, "loss": report.train_loss}
        mse = f"{report.mse_before:.4g} -> {report.mse_after:.4g}"
        self._log(report, "", values, report.index, f"fine-tuned {report.path}: mse {mse}", loggers)

    def _log_epoch(self, report: NetworkReport, loggers) -> None:
        values = {"loss_before": report.loss_before, "loss_after": report.loss_after, "loss": report.train_loss}
        loss = f"{self.output['loss']} {report.loss_before:.4g} -> {report.loss_after:.4g}"
        self._log(
            report,
            "output_",
            values,
            report.epoch,
            f"fine-tuned the network, epoch {report.epoch + 1}: {loss}",
            loggers,
        )

    def _log(self, report, prefix: str, values: dict, step: int, message: str, loggers) -> None:
        """``finetune/<prefix><name>`` metrics (and ``kept``, ``val_score``) at ``step``; a line when ``progress``."""
        values = {**values, "kept": float(report.kept)}
        if report.score is not None:
            values["val_score"] = report.score
        for logger in loggers:
            logger.log_metrics({f"finetune/{prefix}{k}": v for k, v in values.items()}, step=step)
        if self.progress and self.rank == 0:
            tqdm.write(message + ("" if report.kept else " (undone: no improvement)"))

    def _checkpoint(self, module: SpikingTask, done: list[LayerReport], next_layer: int, output=None) -> None:
        if self.checkpoint_dir is None or self.rank != 0:  # the processes hold the same weights
            return
        snn = module.snn
        state = {
            "snn": snn.state_dict(),
            "next_layer": next_layer,
            "reports": [vars(r) for r in done],  # plain data: the file loads with weights_only=True
            "output": output,  # the output phase's state once it has started (network_finetune(resume=...))
            "timesteps": snn.timesteps,
            "signed": snn.signed,
        }
        _atomic_save(state, self.checkpoint_dir / "finetune_last.pt")
