"""Experiment loggers from the config; W&B falls back to offline mode without credentials."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from tasks.results import PEER_NAMES

log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in auth.hosts)


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

        wandb.finish(exit_code=0 if status == "success" else 1)  # W&B marks the run failed


def _log_wandb_results(logger, results: dict) -> None:
    """The accuracy-vs-time-step curves and the results table, as W&B plots."""
    import wandb

    run = logger.experiment
    metric = results.get("metric", "metric")
    # one curve per SNN pass: after conversion, after fine-tuning, and SpikingJelly's (the compare stage)
    for label in ("snn", "snn_finetuned", *PEER_NAMES):
        curve = results.get(f"{label}_per_step")
        if curve:
            table = wandb.Table(columns=["t", metric], data=[[t, v] for t, v in enumerate(curve, 1)])
            run.log({f"{label}_per_step": wandb.plot.line(table, "t", metric, title=f"{label} {metric} after t steps")})
    keys = ["ann", "snn", "snn_finetuned", "spike_rate", "sops", "energy_ratio"]
    run.log({"results": wandb.Table(columns=keys, data=[[results.get(k) for k in keys]])})
    for key in keys + ["bits", "timesteps", *PEER_NAMES]:
        if results.get(key) is not None:
            run.summary[key] = results[key]
