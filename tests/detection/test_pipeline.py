"""`task=detection` through the shared pipeline (train -> convert -> finetune -> results), shrunk to
seconds; the paper recipes compose and instantiate."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate
from omegaconf.errors import InterpolationKeyError

from fastsnn import QuantReLU
from tasks.detection.module import DetectionModule
from tasks.detection.yolo import TinyYOLO, YOLOv2R34
from tasks.pipeline import build, run
from tests import helpers
from tests.helpers import CONF_DIR, compose_config

TINY = [
    *helpers.TINY,
    *helpers.NARROW,
    "data.splits={train:8,val:4,test:4}",
    "data.image_size=64",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "data.num_workers=0",
]
EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml") if "_yolo" in p.stem)


def _compose(tmp_path: Path, *overrides: str, tiny: bool = True):
    return compose_config(tmp_path / "run", *(TINY if tiny else []), *overrides)


def test_task_detection_selects_its_default_model_and_data(tmp_path):
    cfg = _compose(tmp_path, "task=detection", tiny=False)
    assert cfg.model.name == "yolo" and cfg.data._target_.endswith("ShapesDetectionDataModule")
    assert cfg.task.metric == "map_50" and cfg.task.module.metric == "map_50"
    assert cfg.quant.weight_bits is None  # activations only, float weights
    assert cfg.data.root == str(tmp_path / "data" / "shapes")
    assert cfg.model.net.anchors == cfg.data.anchors  # the data set's k-means anchors
    # the command line still overrides the task's choices
    cfg = _compose(tmp_path, "task=detection", "model=yolo_r34", "data=voc", tiny=False)
    assert cfg.model.name == "yolo_r34" and cfg.data._target_.endswith("VOCDetectionDataModule")


def test_tiny_end_to_end_run_writes_the_shared_results(tmp_path):
    cfg = _compose(tmp_path, "task=detection", "timesteps=3", "model.net.output_stride=16")
    results = run(cfg)
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["metric"] == results["metric"] == "map_50"
    assert (written["task"], written["model"], written["data"]) == ("detection", "yolo", "shapes_det")
    assert (written["bits"], written["timesteps"], written["signed"]) == (2, 3, True)
    for key in ("ann", "snn", "snn_finetuned"):
        assert 0.0 <= written[key] <= 1.0
    assert "ann/test_map_50" in written["ann_metrics"] and "ann/test_map" in written["ann_metrics"]
    assert len(written["snn_per_step"]) == 3  # the mAP-vs-time curve
    assert written["finetune_layers"] and Path(written["snn_checkpoint"]).is_file()
    assert {"train", "test_ann", "convert_and_test_snn", "finetune"} <= set(written["time_s"])
    assert "snn/spike_rate" in written["snn_metrics"]


def test_yolo_r34_composes_and_runs_one_tiny_step(tmp_path):
    cfg = _compose(
        tmp_path, "task=detection", "model=yolo_r34", "bits=2", "stages=[train,convert]", "+trainer.max_steps=1"
    )
    results = run(cfg)
    assert results["model"] == "yolo_r34" and results["timesteps"] == 3
    assert results["ann"] is not None and results["snn"] is not None


# the values of the recipes' per_bits table: (lr, max_epochs) by bit width
PER_BITS = {4: (0.001, 160), 3: (0.0005, 60), 2: (0.0005, 60)}


@pytest.mark.parametrize("bits", sorted(PER_BITS))
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_paper_recipes_compose_and_instantiate(tmp_path, experiment, bits):
    cfg = _compose(
        tmp_path,
        f"experiment={experiment}",
        f"bits={bits}",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        tiny=False,
    )
    data_name, model_name = experiment.split("_", 1)
    assert cfg.task.name == "detection" and cfg.model.name == model_name and cfg.bits == bits
    assert (cfg.task.module.optimizer.lr, cfg.trainer.max_epochs) == PER_BITS[bits] and f"{bits}bit" in cfg.tags
    missing = _compose(tmp_path, f"experiment={experiment}", "bits=5", tiny=False)
    with pytest.raises(InterpolationKeyError, match=r"per_bits\.lr\.b5"):  # a bit width without values
        instantiate(missing.task.module.optimizer)
    assert cfg.data.image_size == 416 and cfg.model.net.width == 1.0 and cfg.quant.weight_bits is None
    assert cfg.task.metric == ("map" if data_name == "coco" else "map_50") == cfg.task.module.metric
    exp = build(cfg)  # constructing the data module must not touch the (absent) data
    data, net, module = exp.datamodule, exp.net, exp.module
    assert data.num_classes == (80 if data_name == "coco" else 20) and data.image_size == 416
    assert isinstance(net, TinyYOLO if model_name == "yolo" else YOLOv2R34)
    assert net.pred.out_channels == 5 * (5 + data.num_classes)
    assert {m.bits for m in net.modules() if isinstance(m, QuantReLU)} == {bits}
    assert isinstance(module, DetectionModule) and module.metric == cfg.task.metric
    assert type(module.configure_optimizers()["optimizer"]).__name__ == "SGD"
    assert isinstance(exp.trainer, L.Trainer)
    assert instantiate(cfg.finetune).epochs_per_layer >= 1
