"""What layer-wise fine-tuning's carried values take at ImageNet sizes, and what carrying them saves.

For VGG-16 (the ``imagenet_vgg16`` recipe's network) and torchvision's ResNet-34, random weights,
at 224 px and T = 7, 15: the bytes per image that the stage carries while each layer is tuned
(``fastsnn.finetune.sources.frontier_profile``, the dry run behind the stage's plan line, on one
image), the memory or disk they need for the whole ImageNet training set (1,281,167 images) and
for a 100,000-image fine-tuning subset, and the expected SNN passes over the fine-tuning set
(full-network equivalents, one epoch per layer): carried, about 3; recomputed (the SNN simulated
from the input for every layer), about (L + 1) / 2 for L tuned layers. On P processes each
process holds and passes over 1 / P of the images.

    python -m benchmarks.finetune_plan            # 224 px, T = 7 15
    python -m benchmarks.finetune_plan --quick    # 64 px, T = 7
"""

from __future__ import annotations

import torch

import fastsnn
from benchmarks import cli
from benchmarks.models import bits_for, recipe, with_bn_statistics
from benchmarks.record import record, section
from fastsnn.backbones.torchvision import torchvision_backbone
from fastsnn.convert import trace
from fastsnn.finetune.graph import _tunable_layers
from fastsnn.finetune.sources import frontier_profile

IMAGES = {"ImageNet train": 1_281_167, "subset": 100_000}
PROCESSES = (1, 8)


def models(T: int):
    """(name, quantized network) for the two networks at ``T``."""
    vgg, quantize, _ = recipe("imagenet_vgg16")
    yield "VGG-16 (imagenet_vgg16)", quantize(vgg, bits=bits_for(T))
    resnet = with_bn_statistics(torchvision_backbone("resnet34", num_classes=1000))
    yield "ResNet-34 (torchvision)", fastsnn.quantize_model(resnet, bits_for(T))


def plan(name: str, q, T: int, size: int) -> dict:
    snn = fastsnn.convert_to_snn(q.eval(), timesteps=T)
    tunables = _tunable_layers(snn)
    per_layer = frontier_profile(snn, trace(q), tunables, torch.randn(1, 3, size, size))
    L, peak = len(tunables), max(per_layer)
    row = {"net": name, "T": T, "px": size, "layers": L, "MiB_per_image_peak": peak / 2**20}
    row["MiB_per_image_median"] = sorted(per_layer)[L // 2] / 2**20
    for what, n in IMAGES.items():
        for p in PROCESSES:
            row[f"GiB {what}, {p} proc"] = peak * n / p / 2**30
    row["SNN passes carried"], row["SNN passes recomputed"] = 3, (L + 1) / 2
    cli.log(f"{name} T={T}: {L} layers, {peak / 2**20:.2f} MiB per image at the widest cut")
    return row


def markdown(rows: list[dict]) -> str:
    note = (
        "Bytes carried per image while a layer is tuned (the widest cut and the median layer), the space for the "
        "whole training set and for a 100,000-image subset on 1 and on 8 processes (each its share), and the "
        "expected SNN passes over the fine-tuning set with one epoch per layer."
    )
    return "\n".join(section("Carried values at ImageNet sizes", note, rows, list(rows[0])))


def parse_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--timesteps", nargs="+", type=int, default=None, help="default 7 15, quick 7")
    p.add_argument("--image-size", type=int, default=None, help="default 224, quick 64")
    args = cli.parse(p, argv, "finetune_plan")
    args.timesteps = args.timesteps or ([7] if args.quick else [7, 15])
    args.image_size = args.image_size or (64 if args.quick else 224)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    with cli.measuring(args) as measurement, torch.no_grad():
        rows = [plan(name, q, T, args.image_size) for T in args.timesteps for name, q in models(T)]
    return record(args, measurement, {"plans": rows}, markdown(rows))


if __name__ == "__main__":
    main()
