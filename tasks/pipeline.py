"""The stages of a run, shared by every task: train -> convert -> finetune -> results.

``run(cfg)`` builds data, model and trainer from the Hydra config, runs the requested
stages and returns the results dict that is also written to ``results.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from fastsnn import quantize_model
from fastsnn.callbacks import SNNConversion
from tasks.base import SNNTaskModule, per_step_key
from tasks.loggers import close_loggers, make_loggers
from tasks.results import print_results, write_results
from tasks.settings import RunSettings, SettingsError, resolve

log = logging.getLogger(__name__)


def checkpoint_bits(path: str | None) -> int | None:
    """Activation bits stored in a checkpoint of ours (None when unknown or full precision)."""
    if not path:
        return None
    meta = _load_checkpoint(path).get("fastsnn", {})
    return meta.get("bits")


def _load_checkpoint(path: str) -> dict:
    if not Path(path).is_file():
        raise SettingsError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise SettingsError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise SettingsError(f"{path} is not a Lightning checkpoint of this project (no 'state_dict')")
    return ckpt


def load_weights(module: SNNTaskModule, path: str, partial: bool = False) -> None:
    """Load a checkpoint's network weights into ``module.net``.

    ``partial`` (``init_from``): another bit width's checkpoint; parameters it lacks (e.g.
    weight-quantizer clips when starting from full precision) keep their initial values.
    """
    state = {k[len("net.") :]: v for k, v in _load_checkpoint(path)["state_dict"].items() if k.startswith("net.")}
    own = module.net.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise SettingsError(
            f"{path} does not fit this model (shape mismatch in {wrong[:5]}): "
            "was it trained with another model, width or data set?"
        )
    missing, unexpected = module.net.load_state_dict(state, strict=not partial)
    if partial and (missing or unexpected):
        log.info("init_from %s: kept initial values for %s; ignored %s", path, missing, unexpected)


def _quantize(net, bits: int | None, quant: DictConfig) -> None:
    weight_bits = quant.get("weight_bits")
    if weight_bits == "same":  # weights need a sign and at least one magnitude bit
        weight_bits = None if bits is None else max(bits, 2)
    quantize_model(
        net,
        bits,
        weight_bits=weight_bits if bits is not None else None,
        weight_quant=quant.get("weight_quant", "apot"),
        first_last_bits=quant.get("first_last_bits", 8),
        alpha_init=quant.get("alpha_init", 8.0),
        fused=quant.get("fused", False),
    )


def _plain_config(cfg: DictConfig) -> dict:
    """The run's resolved config for the loggers (without Hydra's own node, if composed with it)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return OmegaConf.to_container(cfg, resolve=True)


def _test(trainer: L.Trainer, module: SNNTaskModule, datamodule, label: str) -> dict:
    module.eval_label = label
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{label}/")}
    module.eval_label = "ann"
    return metrics


def _names(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        "task": cfg.task.name,
        "model": choices.get("model", cfg.model.get("name")),
        "data": choices.get("data", cfg.data.get("_target_", "").rsplit(".", 1)[-1]),
    }


def run(cfg: DictConfig) -> dict:
    """Run the configured stages; returns the results (also written to results.json)."""
    settings: RunSettings = resolve(cfg.bits, cfg.timesteps, cfg.stages, checkpoint_bits(cfg.get("ckpt_path")))
    if "train" not in settings.stages and not cfg.get("ckpt_path"):
        raise SettingsError(
            "without the train stage there is nothing to convert: give ckpt_path=<checkpoint "
            "of a train stage> (e.g. logs/.../checkpoints/last.ckpt)"
        )
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model.net, num_classes=datamodule.num_classes, in_channels=datamodule.in_channels)
    _quantize(net, settings.bits, cfg.model.quant)
    module: SNNTaskModule = instantiate(cfg.task.module, net=net, num_classes=datamodule.num_classes)
    names = _names(cfg)
    module.run_meta = {**names, "bits": settings.bits}

    loggers = make_loggers(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # `trainer.enable_progress_bar=false` just works
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    conversion = next((c for c in callbacks if isinstance(c, SNNConversion)), None)
    if conversion is None:
        conversion = SNNConversion()
        callbacks.append(conversion)
    conversion.timesteps, conversion.signed = settings.timesteps, bool(cfg.signed)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(_plain_config(cfg))

    results = {
        **names,
        "bits": settings.bits,
        "timesteps": settings.timesteps,
        "signed": bool(cfg.signed),
        "stages": list(settings.stages),
        "metric": module.metric,
        "output_dir": str(out_dir),
        "time_s": {},
    }
    timer = time.perf_counter
    try:
        if "train" in settings.stages:
            start = timer()
            if cfg.get("init_from"):
                load_weights(module, cfg.init_from, partial=True)
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
            best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
            if best:
                load_weights(module, best)
                results["checkpoint"] = best
            results["time_s"]["train"] = timer() - start
        else:
            load_weights(module, cfg.ckpt_path)
            results["checkpoint"] = cfg.ckpt_path
        module.set_snn(None)

        start = timer()
        ann = _test(trainer, module, datamodule, "ann")
        results["ann"] = ann.get(f"ann/test_{module.metric}")
        results["ann_metrics"] = ann
        results["time_s"]["test_ann"] = timer() - start

        if "convert" in settings.stages:
            start = timer()
            conversion.convert(module)
            _record_snn(results, "snn", _test(trainer, module, datamodule, "snn"), module)
            results["time_s"]["convert_and_test_snn"] = timer() - start

        if "finetune" in settings.stages:
            start = timer()
            stage = instantiate(cfg.finetune)
            if stage.checkpoint_dir is None:
                stage.checkpoint_dir = out_dir / "checkpoints" / "finetune"
            reports = stage.run(module, datamodule, loggers)
            results["finetune_layers"] = [vars(r) for r in reports]
            if trainer.is_global_zero:
                snn_path = out_dir / "checkpoints" / "snn_finetuned.pt"
                snn_path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(
                    {
                        "snn": module.snn.state_dict(),
                        "timesteps": module.snn.timesteps,
                        "signed": module.snn.signed,
                        **module.run_meta,
                    },
                    snn_path,
                )
                results["snn_checkpoint"] = str(snn_path)
            results["time_s"]["finetune"] = timer() - start
            start = timer()
            _record_snn(results, "snn_finetuned", _test(trainer, module, datamodule, "snn_finetuned"), module)
            results["time_s"]["test_snn_finetuned"] = timer() - start
    finally:
        close_loggers(loggers, results)

    if trainer.is_global_zero:
        write_results(results, out_dir / "results.json")
        print_results(results)
    return results


def _record_snn(results: dict, label: str, metrics: dict, module: SNNTaskModule) -> None:
    T = module.snn.timesteps
    results[label] = metrics.get(f"{label}/test_{module.metric}")
    results[f"{label}_metrics"] = {k: v for k, v in metrics.items() if "_t" not in k.rsplit("/", 1)[-1]}
    per_step = [metrics.get(per_step_key(label, module.metric, t)) for t in range(1, T + 1)]
    if all(v is not None for v in per_step):
        results["snn_per_step"] = per_step  # the last SNN pass's curve (after fine-tuning if any)
    for key in ("spike_rate", "sops", "energy_ratio"):
        if f"{label}/{key}" in metrics:
            results[key] = metrics[f"{label}/{key}"]


def optimized_value(results: dict, name: str | None) -> float | None:
    """The number a sweeper optimises: ``results[name]``, or a logged metric of that name."""
    if not name:
        return None
    for source in (
        results,
        results.get("ann_metrics", {}),
        results.get("snn_metrics", {}),
        results.get("snn_finetuned_metrics", {}),
    ):
        if source.get(name) is not None:
            return float(source[name])
    raise SettingsError(f"optimized_metric={name!r} is neither a results.json key nor a logged test metric")
