"""The Fashion-MNIST recipes (conf/experiment/fashion_mnist_*.yaml) compose, instantiate with the
settings their comments state (net and width, weight and activation quantization, optimiser, epochs,
fine-tuning budget), and run the progressive sequence bits=32 -> 2 through the pipeline on idx
fixtures (never the real data set)."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
from hydra.utils import instantiate

from fastsnn import QuantReLU
from fastsnn.quantizers import QuantConv2d, QuantLinear
from tasks.chain import run_chain
from tasks.classification.data import FashionMNISTDataModule
from tasks.pipeline import build
from tests.helpers import TINY, compose_config

RECIPES = {"fashion_mnist_vgg11": ("vgg11", 0.25), "fashion_mnist_resnet20": ("resnet20", 0.5)}  # net, width


@pytest.mark.parametrize("experiment", sorted(RECIPES))
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_recipe_composes_and_instantiates_as_its_comments_say(tmp_path, experiment, bits):
    model, width = RECIPES[experiment]
    cfg = compose_config(tmp_path / "run", f"experiment={experiment}", f"bits={bits}")
    assert cfg.model.name == model and cfg.model.net.width == width
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_epochs == 3  # the quantized stages: 3 epochs
    exp = build(cfg)  # no data on disk: constructing the data module must not read it
    assert isinstance(exp.datamodule, FashionMNISTDataModule) and exp.datamodule.image_size == 32
    assert not exp.datamodule.augment and exp.datamodule.batch_size == 64
    assert all(m.bits == bits and float(m.alpha.detach()) == 2.0 for m in exp.net.modules() if isinstance(m, QuantReLU))
    layers = [m for m in exp.net.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    # APoT weights at max(bits, 2) bits (a sign and one magnitude bit at least), 8-bit first conv and last layer
    assert [m.weight_quantizer.bits for m in (layers[0], layers[-1])] == [8, 8]
    assert {m.weight_quantizer.bits for m in layers[1:-1]} == {max(bits, 2)}
    assert exp.conversion.simulation.timesteps == 2**bits - 1
    opt = exp.module.configure_optimizers()["optimizer"]
    assert opt.defaults["lr"] == 0.02 and opt.defaults["weight_decay"] == 5e-4
    ft = instantiate(cfg.finetune)
    assert ft.epochs_per_layer == 1 and ft.limit_batches * cfg.data.batch_size == 5056 and ft.lr == 1e-2


@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_float_stage_of_the_recipe(tmp_path, experiment):
    cfg = compose_config(
        tmp_path / "run",
        f"experiment={experiment}",
        "bits=32",
        "stages=[train]",
        "trainer.max_epochs=6",
        "task.module.optimizer.lr=0.05",
    )
    exp = build(cfg)
    assert exp.settings.bits is None and list(exp.settings.stages) == ["train"]
    assert all(m.bits is None for m in exp.net.modules() if isinstance(m, QuantReLU))
    assert exp.module.configure_optimizers()["optimizer"].defaults["lr"] == 0.05


def _write_fashion_idx(folder, n_train: int = 48, n_test: int = 16) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        header = struct.pack(">I", 0x800 + a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
        (folder / f"{name}.gz").write_bytes(gzip.compress(header + a.astype(np.uint8).tobytes()))


@pytest.mark.slow
def test_the_progressive_sequence_runs_from_one_command(tmp_path):
    """chain=[32,4,3,2]: bits=32 stages=[train], then 4 -> 3 -> 2 bits, each from the previous best checkpoint."""
    _write_fashion_idx(tmp_path / "fixture")
    data = [f"data.root={tmp_path / 'fixture'}", "data.fallback_roots=[]", "data.val_size=8", "data.batch_size=8"]
    tiny = [*TINY, "model.net.width=0.125", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
    cfg = compose_config(tmp_path, "experiment=fashion_mnist_resnet20", "chain=[32,4,3,2]", *data, *tiny)
    last = run_chain(cfg)
    for bits in (32, 4, 3, 2):
        written = json.loads((tmp_path / f"b{bits}" / "results.json").read_text())
        assert written["data"] == "fashion_mnist" and written["bits"] == bits and 0 <= written["ann"] <= 1
        if bits != 32:
            assert written["timesteps"] == 2**bits - 1 and 0 <= written["snn_finetuned"] <= 1
    assert last["bits"] == 2
