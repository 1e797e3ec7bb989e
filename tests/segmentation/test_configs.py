"""The segmentation configs compose and instantiate: the task defaults and the paper recipes."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from fastsnn.quantizers import QuantConv2d, activation_bits
from tasks.pipeline import build
from tasks.segmentation.data import COCOSegDataModule, ShapesSegDataModule, VOCSegDataModule
from tasks.segmentation.deeplab import DeepLabV1, DeepLabV3
from tasks.segmentation.module import SegmentationModule
from tasks.settings import resolve
from tests.helpers import CONF_DIR


def _compose(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=["paths.output_dir=/tmp/unused", *overrides])


def _build(cfg):
    exp = build(cfg)
    return exp.datamodule, exp.net, exp.module, exp.settings


def test_task_segmentation_picks_deeplabv3_on_the_synthetic_data():
    cfg = _compose("task=segmentation")
    assert cfg.task.name == "segmentation" and cfg.task.metric == "miou"
    assert cfg.model.name == "deeplabv3" and cfg.data.root.endswith("/shapes")
    datamodule, net, module, settings = _build(cfg)
    assert isinstance(datamodule, ShapesSegDataModule) and isinstance(net, DeepLabV3)
    assert isinstance(module, SegmentationModule) and module.metric == "miou"
    assert (datamodule.num_classes, datamodule.in_channels, datamodule.image_size) == (6, 3, 64)  # read at 64 px
    assert cfg.trainer.max_epochs == 50 and cfg.finetune.limit_batches == 16  # the task's CPU budget
    # the user's choices win over the task's defaults
    assert _compose("task=segmentation", "model=deeplabv1").model.name == "deeplabv1"
    assert _compose("model=deeplabv1", "task=segmentation").model.name == "deeplabv1"
    # other tasks keep their own defaults
    assert _compose().model.name != "deeplabv3"


# the recipes train with DDP on GPUs: build their trainer for one CPU process here
ON_THIS_MACHINE = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto", "trainer.precision=32-true"]
RECIPES = {
    "voc_deeplabv1": (VOCSegDataModule, DeepLabV1, 21),
    "voc_deeplabv3": (VOCSegDataModule, DeepLabV3, 21),
    "coco_deeplabv1": (COCOSegDataModule, DeepLabV1, 81),
    "coco_deeplabv3": (COCOSegDataModule, DeepLabV3, 81),
}


@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_paper_recipes_compose_and_instantiate_at_4_3_and_2_bits(experiment):
    data_cls, net_cls, num_classes = RECIPES[experiment]
    net = None
    for bits in (4, 3, 2):
        cfg = _compose(f"experiment={experiment}", f"bits={bits}", *ON_THIS_MACHINE)
        assert cfg.task.name == "segmentation" and cfg.trainer.max_epochs == 50
        assert cfg.task.module.optimizer.lr == pytest.approx(0.007)
        assert cfg.quant.weight_bits is None and cfg.data.crop_size == 513
        if net is None:  # the network is the same at every bit width: build it once
            datamodule, net, module, settings = _build(cfg)
            assert isinstance(datamodule, data_cls) and isinstance(net, net_cls)
            assert datamodule.num_classes == num_classes and net.classifier.out_channels == num_classes
            assert module.configure_optimizers()["optimizer"].__class__ is torch.optim.SGD
        else:
            settings = resolve(cfg.bits, cfg.timesteps, cfg.stages)
            net = instantiate(cfg.quant)(net, bits=settings.bits)
        assert settings.timesteps == 2**bits - 1
        assert activation_bits(net) == {bits}
        assert not any(isinstance(m, QuantConv2d) for m in net.modules())  # float weights
