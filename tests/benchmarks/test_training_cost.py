"""python -m benchmarks.training_cost in a tiny configuration: the training steps of every model, and
layer-wise fine-tuning carried in memory, on disk and recomputed, with the same layer reports."""

import math

from benchmarks import training_cost
from tests.benchmarks.recorded import check_recorded
from tests.helpers import run_script

TINY = ["--archs", "vgg11", "resnet20", "--width", "0.125", "--batch", "2", "--train-steps", "2"]
TINY += ["--finetune-batches", "2", "--max-wait", "0"]


def test_training_steps_and_finetuning_timings(tmp_path):
    result = run_script(training_cost.main, [*TINY, "--out-dir", str(tmp_path)])
    check_recorded(tmp_path, "training_cost", "training_cost")
    steps = {(r["arch"], r["model"]): r for r in result["training"]}
    models = ("float", "quant_a2", "quant_a2_w2_apot", "quant_a2_w2_apot_fused")
    assert set(steps) == {(a, m) for a in ("vgg11", "resnet20") for m in models}
    for (arch, _), r in steps.items():
        assert len(r["times_s"]) == 2 and math.isclose(r["vs_float"], r["median_s"] / steps[arch, "float"]["median_s"])
    tuning = {(r["arch"], r["cache"]): r for r in result["finetune"]}
    assert set(tuning) == {(a, c) for a in ("vgg11", "resnet20") for c in ("memory", "disk", "off")}
    for (arch, _), r in tuning.items():
        # every neuron layer but the first (constant input): VGG-11 has 8, ResNet-20 19
        assert r["layers"] == len(r["layer_s"]) == {"vgg11": 7, "resnet20": 18}[arch] and r["T"] == 3
        assert r["same_reports"] and all(s > 0 for s in r["layer_s"])
        assert math.isclose(r["seconds"], sum(r["layer_s"]))
    assert {t["target"] for t in result["targets"]} == {
        f"{a}: {m} step <= 1.3 x float" for a in ("vgg11", "resnet20") for m in models[2:]
    }


def test_finetuning_can_be_skipped():
    args = training_cost.parse_args(["--finetune-timesteps"])
    assert args.finetune_timesteps == [] and args.batch == 64 and args.name == "training_cost"
