"""Progressive training from one command: ``chain=[32,4,3,2]`` runs one stage per bit width.

Each stage is a whole run (its own directory ``<run dir>/b<bits>``, results.json and loggers),
started from the previous stage's best checkpoint (``init_from``). The full-precision stage
(``32``) only trains: it has no natural T to convert at. The other stages run the configured
``stages`` at ``T = 2**bits - 1``. Recipes whose learning rate or epochs depend on the bit width
look them up by ``${bits}``, so each stage gets its own.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from tasks.pipeline import run
from tasks.settings import FULL_PRECISION, SettingsError

log = logging.getLogger(__name__)


def check_chain(cfg: DictConfig) -> list[int]:
    """The chain's bit widths, or a :class:`SettingsError` that says what to change."""
    chain = [int(b) for b in cfg.chain]
    if not chain or any(not (1 <= b <= 16 or b == FULL_PRECISION) for b in chain):
        raise SettingsError(f"chain must list bit widths (1..16, or 32 for full precision), got {list(cfg.chain)}")
    if cfg.get("timesteps") is not None or cfg.get("ckpt_path"):
        raise SettingsError(
            "chain sets each stage's bits (T = 2**bits - 1) and starts each from the previous one: drop timesteps= "
            "and ckpt_path= (init_from= starts the first stage from a checkpoint)"
        )
    if "train" not in cfg.stages:
        raise SettingsError(f"a chain trains every stage: stages must include train, got {list(cfg.stages)}")
    return chain


def run_chain(cfg: DictConfig) -> dict:
    """Run every stage of ``cfg.chain`` in order; returns the last stage's results."""
    chain = check_chain(cfg)
    base, init_from = Path(cfg.paths.output_dir), cfg.get("init_from")
    results: dict = {}
    for i, bits in enumerate(chain):
        stage = _stage_config(cfg, bits, init_from, base / f"b{bits}")
        log.info("chain %d/%d: bits=%d in %s%s", i + 1, len(chain), bits, stage.paths.output_dir, _from(init_from))
        results = run(stage)
        init_from = results.get("checkpoint")
        if not init_from and i + 1 < len(chain):
            raise SettingsError(
                f"the bits={bits} stage saved no best checkpoint to start the next stage from: "
                "keep callbacks.model_checkpoint (and trainer.enable_checkpointing) on"
            )
    return results


def _stage_config(cfg: DictConfig, bits: int, init_from: str | None, out_dir: Path) -> DictConfig:
    stage = copy.deepcopy(cfg)
    with open_dict(stage):
        stage.chain = None
        stage.bits, stage.timesteps, stage.init_from = bits, None, init_from
        stage.paths.output_dir = str(out_dir)
        if bits == FULL_PRECISION:
            stage.stages = ["train"]
    return stage


def _from(init_from: str | None) -> str:
    return f", from {init_from}" if init_from else ""
