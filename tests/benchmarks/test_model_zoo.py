"""python -m benchmarks.model_zoo on three small torchvision models at a tiny input: one converts as-is
(ResNet-18: its stem max pool moves), one needs max_pool='avg' (SqueezeNet), one is refused
(MobileNet-v3: Hardswish / Hardsigmoid), and the result says so and where it ran."""

from benchmarks import model_zoo
from tests.benchmarks.recorded import check_recorded
from tests.helpers import run_script

TINY = ["--image-size", "32", "--batch", "2", "--calibration-batch", "2", "--calibration-passes", "1", "--repeats", "1"]


def test_model_zoo_sorts_models_into_as_is_avg_and_refused(tmp_path):
    models = "resnet18,squeezenet1_1,mobilenet_v3_small"
    result = run_script(model_zoo.main, ["--models", models, "--out-dir", str(tmp_path), "--max-wait", "0", *TINY])
    rows = {r["model"]: r for r in result["models"]}
    assert [rows[m]["status"] for m in models.split(",")] == ["as-is", "max_pool='avg'", "refused"]
    resnet = rows["resnet18"]
    assert resnet["spiking_layers"] == 17 and resnet["timesteps"] == 3
    for r in (resnet, rows["squeezenet1_1"]):
        # streaming and multi-step agree up to float rounding near a threshold (then exactly in float64)
        assert r["streaming_max_abs_diff"] < 1e-4 or r["streaming_max_abs_diff_float64"] < 1e-9
        assert 0 <= r["top1_agreement"] <= 1 and r["relative_error"] >= 0 and r["time_ratio"] > 0
        assert r["ann_output_std"] > 0  # calibration left a non-trivial network
    refused = rows["mobilenet_v3_small"]
    assert "Hardsigmoid" in refused["reason"] and "cannot represent" in refused["reason"]
    assert refused["left_alone"] == ["Hardsigmoid", "Hardswish"]
    saved = check_recorded(tmp_path, "model_zoo", "model_zoo")
    assert [r["model"] for r in saved["models"]] == models.split(",")
    md = (tmp_path / "model_zoo.md").read_text()
    assert "| resnet18 | as-is | 17 |" in md and "| squeezenet1_1 | max_pool='avg' | 26 |" in md
    assert "| mobilenet_v3_small | refused | - |" in md


def test_families_and_quick_select_models():
    args = model_zoo.parse_args(["--families", "resnet,vgg", "--quick"])
    assert model_zoo.select(args) == ["resnet18", "vgg11_bn"] and args.name == "model_zoo_quick"
    assert model_zoo.family("resnext50_32x4d") == "resnext" and model_zoo.family("swin_v2_t") == "swin_v2"
