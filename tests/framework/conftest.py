"""Compose the real Hydra config, shrunk to seconds, for in-process pipeline runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import helpers

# one epoch of three batches, tiny VGG, tiny fine-tuning: a whole run takes seconds
TINY = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "model.net.width=0.125",
    "finetune.limit_batches=2",
    "finetune.limit_val_batches=1",
    "finetune.measure_batches=1",
    "finetune.progress=false",
    "callbacks.progress_bar=null",
    "logger=none",
]


def compose_config(out_dir: Path, *overrides: str, tiny: bool = True):
    return helpers.compose_config(out_dir, *(TINY if tiny else []), *overrides)


@pytest.fixture
def make_config(tmp_path):
    def make(*overrides: str, name: str = "run", tiny: bool = True):
        return compose_config(tmp_path / name, *overrides, tiny=tiny)

    return make


@pytest.fixture
def tiny() -> list[str]:
    """The overrides that shrink a run to seconds, for command lines."""
    return list(TINY)
