"""benchmarks.finetune_plan: a network's carried bytes per image (the stage's own dry run), scaled to
the data set sizes and the processes, and the SNN passes carried against recomputed."""

import math

import torch

import fastsnn
from benchmarks import finetune_plan
from benchmarks.models import random_backbone


def test_carried_bytes_scale_to_the_data_sets_and_processes():
    torch.manual_seed(0)
    q = fastsnn.quantize_model(random_backbone("resnet20", width=0.25), 2)
    row = finetune_plan.plan("resnet20", q, T=3, size=16)
    assert row["layers"] == 18 and row["T"] == 3 and row["px"] == 16  # ResNet-20's neurons but the first
    assert 0 < row["MiB_per_image_median"] <= row["MiB_per_image_peak"]
    peak_gib = row["MiB_per_image_peak"] / 1024
    assert math.isclose(row["GiB ImageNet train, 1 proc"], peak_gib * 1_281_167)
    assert math.isclose(row["GiB subset, 8 proc"], peak_gib * 100_000 / 8)
    assert row["SNN passes recomputed"] == (18 + 1) / 2 > row["SNN passes carried"]
    bigger = finetune_plan.plan("resnet20", q, T=3, size=32)
    assert math.isclose(bigger["MiB_per_image_peak"], 4 * row["MiB_per_image_peak"], rel_tol=0.1)  # feature maps


def test_the_defaults_are_imagenet_sizes():
    args = finetune_plan.parse_args([])
    assert args.image_size == 224 and args.timesteps == [7, 15]
    quick = finetune_plan.parse_args(["--quick"])
    assert quick.image_size == 64 and quick.timesteps == [7] and quick.name == "finetune_plan_quick"
