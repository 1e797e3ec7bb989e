"""The stages of a run, shared by every task: train -> convert -> [compare] -> finetune -> results.

``build(cfg)`` makes everything a run needs from the Hydra config (data, quantized network,
task module, trainer, loggers, conversion callback); ``run(cfg)`` runs the requested stages
on it, one function each, and returns the results dict that is also written to
``results.json``.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from fastsnn.callbacks import SNNConversion
from fastsnn.saved import SavedSNN, save_snn
from tasks.base import SNNTaskModule
from tasks.checkpoints import checkpoint_bits, load_weights
from tasks.hardware import check_hardware
from tasks.loggers import close_loggers, make_loggers
from tasks.recipe import Recipe, check_saved_snn, net_builder, quant_options, read_saved_snn
from tasks.results import check_optimized_metric, print_results, record_snn, write_results
from tasks.settings import DEFAULT_BITS, FULL_PRECISION, RunSettings, SettingsError, resolve

log = logging.getLogger(__name__)


@dataclass
class Experiment:
    """Everything one run works on, as :func:`build` makes it from the config."""

    cfg: DictConfig
    settings: RunSettings
    datamodule: L.LightningDataModule
    module: SNNTaskModule
    trainer: L.Trainer
    loggers: list
    conversion: SNNConversion | None  # None when the run does not convert
    out_dir: Path
    recipe: Recipe  # how the network is built and quantized: saved with the SNN
    saved_snn: nn.Module | None = None  # stages=[evaluate]: the SNN of snn_path

    @property
    def net(self) -> nn.Module:
        """The quantized ANN (the task module's ``net``)."""
        return self.module.net


def build(cfg: DictConfig) -> Experiment:
    """Data, quantized network, task module, trainer, loggers and conversion callback of a run."""
    check_hardware(cfg.trainer)
    saved = read_saved_snn(cfg)  # stages=[evaluate]: the SNN file, rebuilt
    settings = _settings(cfg, saved)
    _fill_in(cfg, settings)
    if not {"train", "evaluate"} & set(settings.stages) and not cfg.get("ckpt_path"):
        raise SettingsError(
            "without the train stage there is nothing to convert: give ckpt_path=<checkpoint "
            "of a train stage> (e.g. logs/.../checkpoints/last.ckpt)"
        )
    if "compare" in settings.stages:  # SpikingJelly installed and the options valid, before any training
        instantiate(cfg.compare).check(settings)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = L.seed_everything(cfg.seed, workers=True)  # the seed used (cfg.seed null: a random one)

    datamodule = instantiate(cfg.data)
    datamodule.seed = seed  # its training order and augmentation are functions of it (resumable)
    net, recipe = _network(cfg, saved, datamodule, settings)
    module: SNNTaskModule = instantiate(cfg.task.module, net=net, num_classes=datamodule.num_classes)
    # bits resolved (32: full precision); seed: the training steps reseed from it (resumable)
    module.run_meta = {**run_names(cfg), "bits": cfg.bits, "seed": seed}
    if saved is not None:
        module.run_meta["model"] = saved.meta.get("model", module.run_meta["model"])
        saved.snn.timesteps = settings.timesteps

    loggers = make_loggers(cfg)
    callbacks = _callbacks(cfg)
    conversion = _conversion_callback(callbacks, settings)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    saved_snn = saved.snn if saved is not None else None
    return Experiment(cfg, settings, datamodule, module, trainer, loggers, conversion, out_dir, recipe, saved_snn)


def _settings(cfg: DictConfig, saved: SavedSNN | None) -> RunSettings:
    """The run's bits, T and stages; a saved SNN's bits and T are the file's (``timesteps=`` may change T)."""
    if saved is None:
        bits_of_checkpoint = checkpoint_bits(cfg.get("ckpt_path"))
        return resolve(cfg.bits, cfg.timesteps, cfg.stages, bits_of_checkpoint, cfg.get("default_bits", DEFAULT_BITS))
    return resolve(saved.quant["bits"] or FULL_PRECISION, cfg.timesteps or saved.snn.timesteps, cfg.stages)


def _network(cfg: DictConfig, saved: SavedSNN | None, datamodule, settings: RunSettings) -> tuple[nn.Module, Recipe]:
    """The quantized ANN (built from the config, or the saved SNN's) and the recipe that rebuilds it."""
    if saved is not None:
        return check_saved_snn(saved, cfg, datamodule), Recipe(saved.builder, saved.quant)
    recipe = Recipe(net_builder(cfg.model.net, datamodule), quant_options(cfg.quant, settings.bits))
    net = instantiate(cfg.model.net, num_classes=datamodule.num_classes, in_channels=datamodule.in_channels)
    return instantiate(cfg.quant, **recipe.quant)(net), recipe  # quantize_model (a partial), bits included


def run(cfg: DictConfig) -> dict:
    """Run the configured stages; returns the results (also written to results.json)."""
    check_optimized_metric(cfg.get("optimized_metric"))
    exp = build(cfg)
    for logger in exp.loggers:
        logger.log_hyperparams(_plain_config(cfg))
    stages = exp.settings.stages
    results = {
        **exp.module.run_meta,
        "timesteps": exp.settings.timesteps,
        "signed": bool(cfg.signed),
        "seed": cfg.seed,
        "overrides": job_overrides(),  # what tells the jobs of a multirun apart (python -m fastsnn.report)
        "stages": list(stages),
        "metric": exp.module.metric,
        "output_dir": str(exp.out_dir),
        "torch_threads": torch.get_num_threads(),  # CPU results depend on it (README, "Reproducibility")
        "time_s": {},
    }
    status = "failed"
    try:
        if "train" in stages:
            train(exp, results)
        elif "evaluate" not in stages:
            load(exp, results)
        evaluate_ann(exp, results)
        if "evaluate" in stages:
            evaluate_saved(exp, results)
        if "convert" in stages:
            convert(exp, results)
        if "compare" in stages:
            compare(exp, results)
        if "finetune" in stages:
            finetune(exp, results)
        status = "success"
    finally:
        close_loggers(exp.loggers, results, status)
    if exp.trainer.is_global_zero:
        write_results(results, exp.out_dir / "results.json")
        print_results(results)
    return results


# ----------------------------------------------------------------------------- the stages


def train(exp: Experiment, results: dict) -> None:
    """Fit the quantized ANN, then continue with the best checkpoint's weights."""
    with _timed(results, "train"):
        if exp.cfg.get("init_from"):
            match = load_weights(exp.net, exp.cfg.init_from, partial=True)
            if match is not None:  # weights from another tool: what was loaded, what was not
                results["init_from"] = match.as_dict()
        exp.trainer.fit(exp.module, datamodule=exp.datamodule, ckpt_path=exp.cfg.get("ckpt_path"))
        best = _best_checkpoint(exp.trainer)
        if best:
            load_weights(exp.net, best)
            results["checkpoint"] = best


def load(exp: Experiment, results: dict) -> None:
    """Without a train stage: the network of ``ckpt_path``."""
    load_weights(exp.net, exp.cfg.ckpt_path)
    results["checkpoint"] = exp.cfg.ckpt_path


def evaluate_ann(exp: Experiment, results: dict) -> None:
    exp.module.set_snn(None)
    with _timed(results, "test_ann"):
        metrics = evaluate(exp, "ann")
    results["ann"] = metrics.get(f"ann/test_{exp.module.metric}")
    results["ann_metrics"] = metrics


def convert(exp: Experiment, results: dict) -> None:
    with _timed(results, "convert_and_test_snn"):
        exp.conversion.convert(exp.module)
        record_snn(results, "snn", evaluate(exp, "snn"), exp.module.metric, exp.settings.timesteps)


def evaluate_saved(exp: Experiment, results: dict) -> None:
    """The test pass of a saved SNN (``stages=[evaluate] snn_path=...``)."""
    results["snn_path"] = exp.cfg.snn_path
    exp.module.set_snn(exp.saved_snn.to(exp.module.device))
    with _timed(results, "test_snn"):
        record_snn(results, "snn", evaluate(exp, "snn"), exp.module.metric, exp.settings.timesteps)


def compare(exp: Experiment, results: dict) -> None:
    """SpikingJelly's SNNs of the run's models, each tested as the SNN is, under its own label (tasks/compare.py)."""
    with _timed(results, "compare"):
        instantiate(exp.cfg.compare).run(exp, results, lambda label: evaluate(exp, label))


def finetune(exp: Experiment, results: dict) -> None:
    """Fine-tuning of the SNN (its phases), its checkpoint, then its test pass."""
    with _timed(results, "finetune"):
        stage = instantiate(exp.cfg.finetune)
        reports = stage.run_on(exp.trainer, exp.module, exp.datamodule, exp.loggers)
        results["finetune_layers"] = [vars(r) for r in reports]
        stage.record(results)
        if exp.trainer.is_global_zero:
            results["snn_checkpoint"] = str(_save_snn(exp, exp.out_dir / "checkpoints" / "snn_finetuned.pt"))
    with _timed(results, "test_snn_finetuned"):
        metrics = evaluate(exp, "snn_finetuned")
        record_snn(results, "snn_finetuned", metrics, exp.module.metric, exp.settings.timesteps)


def evaluate(exp: Experiment, label: str) -> dict:
    """One test pass of the ANN (``label="ann"``) or of the SNN; the logged ``<label>/...`` metrics."""
    exp.module.eval_label = label
    try:
        exp.trainer.test(exp.module, datamodule=exp.datamodule, verbose=False)
    finally:  # the module must not stay in SNN mode after a failed pass
        exp.module.eval_label = "ann"
    return {k: float(v) for k, v in exp.trainer.callback_metrics.items() if k.startswith(f"{label}/")}


# ----------------------------------------------------------------------------- helpers


def run_names(cfg: DictConfig) -> dict:
    """Task, model and data names of a run, as the user chose them."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        "task": cfg.task.name,
        "model": choices.get("model", cfg.model.get("name")),
        "data": choices.get("data", cfg.data.get("_target_", "").rsplit(".", 1)[-1]),
    }


def job_overrides() -> list[str]:
    """The job's command-line overrides (``timesteps=7``, ...), or [] outside a Hydra run."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _callbacks(cfg: DictConfig) -> list:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # `trainer.enable_progress_bar=false` just works
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def _fill_in(cfg: DictConfig, settings: RunSettings) -> None:
    """Write the resolved bit width and T into the config, once, before anything reads them: the
    groups that interpolate them (``snn``), the loggers and the run's name all see the same values."""
    with open_dict(cfg):
        cfg.bits = FULL_PRECISION if settings.bits is None else settings.bits
        cfg.timesteps = settings.timesteps


def _conversion_callback(callbacks: list, settings: RunSettings) -> SNNConversion | None:
    """The configured conversion callback; a run that converts stops at once without one."""
    conversion = next((c for c in callbacks if isinstance(c, SNNConversion)), None)
    if conversion is None and "convert" in settings.stages:
        raise SettingsError(
            "the convert stage needs the conversion callback, but callbacks.snn_conversion is null: "
            "remove that override (the simulation options are the snn group's: snn.mode=..., snn.chunk_size=...), "
            "or run stages=[train]"
        )
    return conversion


def _best_checkpoint(trainer: L.Trainer) -> str:
    """The best checkpoint of training, or "" (with a warning) when the final weights must do."""
    callback = trainer.checkpoint_callback
    if callback is None:
        log.warning(
            "checkpointing is off (trainer.enable_checkpointing=false): the stages after training use the final "
            "weights, not the best ones"
        )
        return ""
    if callback.monitor is None:  # e.g. Lightning's own when callbacks.model_checkpoint is null
        log.warning(
            "the ModelCheckpoint monitors no metric (is callbacks.model_checkpoint null?): the stages after "
            "training use the final weights, not the best ones"
        )
    elif not callback.best_model_path:
        log.warning(
            "no best checkpoint was saved (is %s logged?): the stages after training use the final weights",
            callback.monitor,
        )
    return callback.best_model_path


def _save_snn(exp: Experiment, path: Path) -> Path:
    """The fine-tuned SNN as a file that rebuilds itself (``fastsnn.load_snn``, ``stages=[evaluate]``)."""
    meta = {**exp.module.run_meta, "timesteps": exp.settings.timesteps, "signed": bool(exp.cfg.signed)}
    return save_snn(path, exp.module.snn, exp.net, exp.recipe.builder, exp.recipe.quant, meta)


@contextmanager
def _timed(results: dict, key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        results["time_s"][key] = time.perf_counter() - start


def _plain_config(cfg: DictConfig) -> dict:
    """The run's resolved config for the loggers (without Hydra's own node, if composed with it)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return OmegaConf.to_container(cfg, resolve=True)
