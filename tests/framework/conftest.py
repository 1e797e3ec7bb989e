"""Compose the real Hydra config, shrunk to seconds, for in-process pipeline runs."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

# one epoch of three batches, tiny VGG, tiny fine-tuning: a whole run takes seconds
TINY = [
    "trainer.max_epochs=1", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
    "model.net.width=0.125", "finetune.limit_batches=2", "finetune.limit_val_batches=1",
    "finetune.measure_batches=1", "finetune.progress=false", "callbacks.progress_bar=null",
    "logger=none",
]


def compose_config(out_dir: Path, *overrides: str, tiny: bool = True):
    """The run's config as `python run.py <overrides>` would see it (hydra node included)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*(TINY if tiny else []), f"paths.output_dir={out_dir}",
                                           f"paths.data_dir={out_dir.parent / 'data'}", *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # group choices and ${hydra:...} resolve as in a real run
    return cfg


@pytest.fixture
def make_config(tmp_path):
    def make(*overrides: str, name: str = "run", tiny: bool = True):
        return compose_config(tmp_path / name, *overrides, tiny=tiny)
    return make


@pytest.fixture
def tiny() -> list[str]:
    """The overrides that shrink a run to seconds, for command lines."""
    return list(TINY)
