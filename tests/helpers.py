"""Small helpers shared by several test modules (import as ``from tests.helpers import ...``)."""

import copy
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from torch import nn


def randomize_bn(model: nn.Module, bias_offset: float = 0.0) -> nn.Module:
    """Give batch norms non-trivial statistics so that folding them is really tested;
    ``bias_offset`` shifts the BN biases up (more units active)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2 + bias_offset)
    return model


CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

# any run shrunk to seconds (conf/debug/tiny.yaml), on the CPU, without an experiment logger
TINY = ["debug=tiny", "trainer.accelerator=cpu", "logger=none"]
NARROW = ["model.net.width=0.125"]  # for the models that have a width


def compose_config(out_dir: Path, *overrides: str):
    """The run's config as `python run.py <overrides>` would see it (hydra node included), with
    its outputs under ``out_dir`` and its data under ``out_dir/../data``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"paths.output_dir={out_dir}", f"paths.data_dir={out_dir.parent / 'data'}", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)  # group choices and ${hydra:...} resolve as in a real run
    return cfg


def run_script(main, argv: list[str]):
    """A benchmark script's ``main(argv)`` in this process; it sets torch's thread count for
    itself, which is put back afterwards."""
    threads = torch.get_num_threads()
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)


class StageTask:
    """What the fine-tuning stage reads of a SpikingTask: the ANN, a copy of the SNN, a validation
    metric that never drops."""

    eval_label = "snn"
    device = torch.device("cpu")

    def __init__(self, ann, snn):
        self.net, self.snn = ann, copy.deepcopy(snn)

    def to(self, device):
        return self

    def inputs(self, batch):
        return batch[0]

    def score(self, model, dataloader, max_batches=None):
        return 0.0


class StageData:
    """What the fine-tuning stage reads of a data module: the batches, the first two for validation."""

    def __init__(self, batches):
        self.batches = batches

    def setup(self, stage):
        pass

    def train_dataloader(self):
        return self.batches

    def val_dataloader(self):
        return self.batches[:2]
