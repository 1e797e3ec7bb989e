"""Experiment loggers from the config; W&B falls back to offline mode without credentials.

The W&B run is named, grouped and tagged from the resolved settings (``conf/logger/wandb.yaml``
through the ``run_group`` and ``run_tags`` resolvers registered here), and its per-step SNN curves
are history metrics over their own x-axis ``per_step/t``, so that W&B's ordinary line plots overlay
them across runs and groups (docs/wandb.md).
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch import loggers as pl_loggers
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, OmegaConf

from tasks.results import PEER_LABELS, SNN_LABELS

log = logging.getLogger(__name__)

STEP_AXIS = "per_step/t"  # the x-axis of the per-step curves: the number of time steps simulated
RESULT_KEYS = ("ann", "snn", "snn_finetuned", "spike_rate", "sops", "energy_ratio")


def run_group(task: str, model: str) -> str:
    """The W&B group: ``<task>-<model>`` for a single run; every job of one multirun or sweep shares
    ``<task>-<sweep folder name>`` (Hydra resolves that folder once for all its jobs), so that a
    dashboard shows them side by side. Outside a Hydra run (``compose`` in tests) it is a single run."""
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra is None or hydra.mode != RunMode.MULTIRUN:
        return f"{task}-{model}"
    return f"{task}-{Path(hydra.sweep.dir).name}"


def run_tags(bits, timesteps, signed, user_tags) -> list[str]:
    """Tags to filter runs by: ``b3``, ``T7`` (none when no SNN is made), ``signed`` / ``unsigned``,
    then the user's ``tags``."""
    tags = [f"b{bits}", *([f"T{timesteps}"] if timesteps is not None else []), "signed" if signed else "unsigned"]
    return tags + [str(tag) for tag in user_tags or []]


# registered on import: run.py and tasks.pipeline import this module before any logger config resolves
OmegaConf.register_new_resolver("run_group", run_group, replace=True)
OmegaConf.register_new_resolver("run_tags", run_tags, replace=True)


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in auth.hosts)


class _SharedFileWriter(ExperimentWriter):
    """Lightning's CSV writer, for a file that other processes write too: each process of a
    spawn strategy (``trainer=ddp_cpu``) starts from a copy of the run's logger, so its own list
    of columns misses what an earlier stage's processes wrote: Lightning's writer deletes the
    file when it starts, or fails to rewrite it. This one keeps the file (an earlier stage's rows,
    or an earlier run's in the same directory) and takes in its columns before each write."""

    def _check_log_dir_exists(self) -> None:
        """Nothing is deleted."""

    def _record_new_keys(self) -> set[str]:
        on_file = self._header()
        new = super()._record_new_keys()
        if not on_file:
            return new
        self.metrics_keys = sorted(set(self.metrics_keys) | set(on_file))
        return set(self.metrics_keys) - set(on_file)  # non-empty: the file is rewritten with them

    def _header(self) -> list[str]:
        if not self._fs.isfile(self.metrics_file_path):
            return []
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            return next(csv.reader(file), [])


class CSVLogger(pl_loggers.CSVLogger):
    """Lightning's CSV logger whose file survives the stages of a spawn strategy (``_SharedFileWriter``)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _SharedFileWriter(log_dir=self.log_dir)
        return self._experiment


def make_loggers(cfg: DictConfig) -> list:
    """Instantiate ``cfg.logger`` (a dict of logger configs, or null for none)."""
    loggers = []
    for _name, conf in (cfg.get("logger") or {}).items():
        if conf is None:
            continue
        if (
            "Wandb" in conf.get("_target_", "")
            and not conf.get("offline")
            and not wandb_credentials_present()
            and os.environ.get("WANDB_MODE") not in ("online", "offline", "disabled")
        ):
            log.warning(
                "W&B: no credentials found (WANDB_API_KEY or `wandb login`), so this run logs offline "
                "under %s/wandb; upload it later with `wandb sync %s/wandb/offline-run-*`",
                conf.save_dir,
                conf.save_dir,
            )
            loggers.append(instantiate(conf, offline=True))
            continue
        loggers.append(instantiate(conf))
    return loggers


def close_loggers(loggers: list, results: dict, status: str) -> None:
    """Finish every logger with ``status`` (``"success"`` only when every stage ran), so that one
    failed job of a multirun does not leave a run open, nor shows as finished on a dashboard."""
    for logger in loggers:
        try:
            if type(logger).__name__ == "WandbLogger":
                _log_wandb_results(logger, results)
            logger.finalize(status)
        except Exception as err:  # closing must not hide the run's own error
            log.warning("could not close logger %s: %s", type(logger).__name__, err)
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        offline_dir = _offline_run_dir(wandb.run)
        wandb.finish(exit_code=0 if status == "success" else 1)  # W&B marks the run failed
        if offline_dir:
            log.info("W&B: this run was logged offline; upload it with `wandb sync %s`", offline_dir)


def _offline_run_dir(run) -> str | None:
    """The folder of an offline W&B run (what `wandb sync` takes), or None for an online run."""
    if run is None or not run.offline:
        return None
    return str(Path(run.dir).parent)


def _log_wandb_results(logger, results: dict) -> None:
    """The per-step curves, the results table and the headline numbers in the run's summary."""
    import wandb

    run = logger.experiment
    _log_per_step_curves(run, results)
    run.log({"results": wandb.Table(columns=list(RESULT_KEYS), data=[[results.get(k) for k in RESULT_KEYS]])})
    for key in (*RESULT_KEYS, "bits", "timesteps", *PEER_LABELS):
        if results.get(key) is not None:
            run.summary[key] = results[key]


def per_step_curves(results: dict) -> dict[str, list[float]]:
    """Each SNN pass's metric after t = 1, 2, ... steps, by its W&B key: ``per_step/snn/test_map_50``
    (after conversion), ``per_step/snn_finetuned/...``, and the compare stage's methods."""
    metric = results.get("metric", "metric")
    return {
        f"per_step/{label}/test_{metric}": results[f"{label}_per_step"]
        for label in (*SNN_LABELS, *PEER_LABELS)
        if results.get(f"{label}_per_step")
    }


def _log_per_step_curves(run, results: dict) -> None:
    """One history row per time step t, every curve against the x-axis ``per_step/t``.

    Plain metrics rather than ``wandb.plot.line`` tables: W&B's ordinary line plots draw a metric of
    every run of a workspace in one panel and average a group's runs (seeds), which a custom chart
    of one run's table does not; the x-axis is T, not the trainer's step (Lightning's default)."""
    curves = per_step_curves(results)
    if not curves:
        return
    run.define_metric(STEP_AXIS, hidden=True)  # the axis itself needs no panel
    for key in curves:
        run.define_metric(key, step_metric=STEP_AXIS)
    for t in range(1, max(map(len, curves.values())) + 1):  # rate coding may run longer than T
        run.log({STEP_AXIS: t, **{key: curve[t - 1] for key, curve in curves.items() if t <= len(curve)}})
