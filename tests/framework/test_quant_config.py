"""conf/quant: quantize_model's options as a Hydra group, its defaults the function's own."""

import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fastsnn import quantize_model
from tests.helpers import CONF_DIR


def test_the_default_quant_config_lists_every_option_of_quantize_model_with_its_default():
    conf = OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/quant/default.yaml"))
    assert conf.pop("_target_") == "fastsnn.quantize_model" and conf.pop("_partial_") is True
    params = list(inspect.signature(quantize_model).parameters.values())
    assert [p.name for p in params[:2]] == ["model", "bits"]  # the pipeline passes these
    assert conf == {p.name: p.default for p in params[2:]}
    assert list(conf) == [p.name for p in params[2:]]  # in the signature's order


def test_quant_overrides_compose(make_config):
    cfg = make_config("quant.max_pool=avg", "quant.alpha_init=8.0", "quant.weight_bits=4", tiny=False)
    assert (cfg.quant.max_pool, cfg.quant.alpha_init, cfg.quant.weight_bits) == ("avg", 8.0, 4)
    cfg = make_config("model=torchvision", "quant.max_pool=avg", tiny=False)
    assert cfg.quant.max_pool == "avg"


# what each model's runs quantize: classification weights at the activation bits (APoT), detection
# and segmentation float weights; deeplabv3's clips start at 4
CHOICES = {
    "alexnet": ("same", 2.0),
    "custom": (None, 2.0),  # your own class: float weights unless quant=quantized_weights
    "resnet18": ("same", 2.0),
    "resnet20": ("same", 2.0),
    "resnet34": ("same", 2.0),
    "torchvision": ("same", 2.0),
    "tv_resnet18": ("same", 2.0),
    "vgg11": ("same", 2.0),
    "vgg16": ("same", 2.0),
    "yolo": (None, 2.0),
    "yolo_r34": (None, 2.0),
    "deeplabv1": (None, 2.0),
    "deeplabv3": (None, 4.0),
}


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_each_model_chooses_its_quant_settings_whatever_the_task(make_config, task):
    for model, (weight_bits, alpha_init) in CHOICES.items():
        cfg = make_config(f"task={task}", f"model={model}", tiny=False)
        assert (cfg.quant.weight_bits, cfg.quant.alpha_init) == (weight_bits, alpha_init), model
    # the tasks' default models, and the command line over the model's choice
    assert make_config(f"task={task}", tiny=False).quant.weight_bits == ("same" if task == "classification" else None)
    assert make_config(f"task={task}", "model=vgg11", "quant=default", tiny=False).quant.weight_bits is None


def test_every_model_config_is_covered():
    assert set(CHOICES) == {p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml")}
