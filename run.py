"""The one entry point: `python run.py [overrides]` (Hydra). See README.md."""

from __future__ import annotations

import logging
import math
import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fastsnn import ConversionError
from tasks.chain import run_chain
from tasks.common.data import DataError
from tasks.pipeline import run
from tasks.results import optimized_value
from tasks.settings import SettingsError

log = logging.getLogger("fastsnn")
# Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecated; nothing a user can act on
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
USER_ERRORS = (SettingsError, DataError, ConversionError)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        results = run_chain(cfg) if cfg.get("chain") else run(cfg)
        return optimized_value(results, cfg.get("optimized_metric"))
    except USER_ERRORS as err:
        log.error("%s: %s", type(err).__name__, err)
        if multirun:  # one bad job must not stop the sweep; the sweeper sees a failed trial
            return math.nan
        sys.exit(2)
    except Exception:
        if multirun:
            log.exception("this job failed; the sweep goes on")
            return math.nan
        raise


if __name__ == "__main__":
    main()
