"""Every config group composes, and the paper recipes instantiate (they cannot run here)."""

from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate

from fastsnn import QuantReLU
from tasks.pipeline import build

CONF = Path(__file__).resolve().parents[2] / "conf"
CLASSIFICATION_EXPERIMENTS = sorted(
    p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem.startswith(("cifar", "imagenet"))
)


def test_the_paper_recipes_exist():
    assert {
        "cifar10_alexnet",
        "cifar10_vgg11",
        "cifar10_resnet18",
        "cifar10_resnet20",
        "imagenet_alexnet",
        "imagenet_vgg16",
    } <= set(CLASSIFICATION_EXPERIMENTS)


@pytest.mark.parametrize("experiment", CLASSIFICATION_EXPERIMENTS)
def test_classification_experiments_compose_and_instantiate(make_config, experiment):
    cfg = make_config(
        f"experiment={experiment}",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.strategy=auto",
        "trainer.precision=32-true",
        tiny=False,
    )
    assert cfg.default_bits == 4 and cfg.bits is None and cfg.model.net.width == 1.0
    exp = build(cfg)  # no data on disk: constructing the data module must not touch it
    assert cfg.bits == 4  # resolved from the recipe's default
    assert all(m.bits == 4 for m in exp.net.modules() if isinstance(m, QuantReLU))
    assert isinstance(exp.trainer, L.Trainer) and exp.conversion.simulation.timesteps == 15
    assert exp.module.configure_optimizers()["optimizer"].defaults["lr"] == cfg.task.module.optimizer.lr
    assert instantiate(cfg.finetune).epochs_per_layer >= 1


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_every_model_config_builds_a_quantizable_net(make_config, model):
    # model=custom names the user's class: here one of torchvision's
    own = ["model.net._target_=fastsnn.backbones.torchvision.torchvision_backbone", "+model.net.name=resnet18"]
    cfg = make_config(f"model={model}", *(own if model == "custom" else []), tiny=False)
    kwargs = {"width": 0.125} if "width" in cfg.model.net else {}
    net = instantiate(cfg.model.net, num_classes=10, in_channels=3, **kwargs)
    net = instantiate(cfg.quant)(net, bits=2)
    assert any(isinstance(m, QuantReLU) for m in net.modules())


def test_sweeper_and_slurm_launcher_configs_compose(make_config):
    cfg = make_config("hparams_search=optuna", tiny=False)
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.optimized_metric == "snn_finetuned"
    assert "task.module.optimizer.lr" in cfg.hydra.sweeper.params
    cfg = make_config("hydra/launcher=slurm", tiny=False)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 1


def test_loggers_instantiate(make_config, tmp_path):
    for logger in ("csv", "tensorboard"):
        cfg = make_config(f"logger={logger}", tiny=False)
        assert [instantiate(c) for c in cfg.logger.values()]
