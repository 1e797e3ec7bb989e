"""The segmentation task through the shared stages (train -> convert -> finetune -> results)."""

import json
from pathlib import Path

import pytest

from tasks.pipeline import run
from tests import helpers
from tests.helpers import compose_config

TINY = [
    *helpers.TINY,
    *helpers.NARROW,
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "data.crop_size=64",
    "data.progress=false",
    "data.splits={train: 8, val: 4, test: 4}",
]


def _config(tmp_path: Path, *overrides: str):
    return compose_config(tmp_path / "run", *TINY, *overrides)


@pytest.mark.parametrize("model", ["deeplabv3", "deeplabv1"])
def test_segmentation_runs_end_to_end_on_the_synthetic_data(tmp_path, model):
    cfg = _config(tmp_path, "task=segmentation", f"model={model}", "timesteps=3")
    results = run(cfg)
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    for res in (results, on_disk):
        assert res["task"] == "segmentation" and res["model"] == model and res["data"] == "shapes_seg"
        assert res["metric"] == "miou" and res["bits"] == 2 and res["timesteps"] == 3
        for key in ("ann", "snn", "snn_finetuned"):
            assert 0.0 <= res[key] <= 1.0
        assert len(res["snn_per_step"]) == 3
        assert "snn/test_pixel_acc" in res["snn_metrics"]
        assert res["finetune_layers"]  # layers after the first were fine-tuned
    assert (tmp_path / "data" / "shapes" / "VOCdevkit" / "VOC2012" / "SegmentationClass").is_dir()
    assert Path(results["snn_checkpoint"]).is_file()
