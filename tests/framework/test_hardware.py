"""Recipes that need GPUs stop before any work on a machine without them, naming the need and the CPU override."""

import pytest
import torch
from omegaconf import OmegaConf

from tasks.hardware import check_hardware, gpus_wanted
from tasks.pipeline import build
from tasks.settings import SettingsError
from tests.helpers import compose_config


@pytest.mark.parametrize(
    "trainer,wanted",
    [
        ({"accelerator": "cpu", "devices": 2}, 0),
        ({"accelerator": "auto", "devices": 1}, 0),
        ({"accelerator": "gpu", "devices": 4}, 4),
        ({"accelerator": "gpu", "devices": -1}, 1),
        ({"accelerator": "cuda", "devices": "0,1"}, 2),
        ({"accelerator": "gpu", "devices": [0, 2, 3]}, 3),
    ],
)
def test_gpus_wanted_reads_the_trainer_config(trainer, wanted):
    assert gpus_wanted(OmegaConf.create(trainer)) == wanted


@pytest.mark.parametrize("overrides", [["experiment=voc_yolo"], ["experiment=voc_deeplabv3"], ["trainer=ddp"]])
def test_gpu_recipes_stop_at_once_without_gpus(tmp_path, monkeypatch, overrides):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cfg = compose_config(tmp_path, *overrides)
    with pytest.raises(SettingsError, match=r"asks for \d GPU\(s\).*add trainer=cpu") as err:
        build(cfg)  # before any data set is read: VOC is not on this machine
    assert "this machine has 0" in str(err.value)
    check_hardware(compose_config(tmp_path, *overrides, "trainer=cpu").trainer)  # the override it names works
