"""A long evaluation under each neuron-kernel setting: does ``compiled="auto"`` pay for itself?

Runs ``--batches`` batches of random images through a converted network (random weights, the
project's default quantization: b-bit activations and APoT weights) and prints the total time and
the time per batch over the last 10 batches. Run it once per setting, in separate processes (the
kernel choice and torch's compile caches are per process and per cache directory):

    FASTSNN_CACHE_DIR=/tmp/kc python benchmarks/auto_kernels.py --setting eager
    FASTSNN_CACHE_DIR=/tmp/kc python benchmarks/auto_kernels.py --setting auto
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import fastsnn
from fastsnn.backbones import create_backbone

SETTINGS = {"auto": "auto", "eager": False, "compiled": True}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=list(SETTINGS), default="auto", help="convert_to_snn's compiled=")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--timesteps", type=int, default=3, help="T (bits = log2(T + 1))")
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bits = (args.timesteps + 1).bit_length() - 1
    net = create_backbone(args.arch, num_classes=10, width=args.width)
    q = fastsnn.quantize_model(net, bits, weight_bits=bits, alpha_init=8.0).eval()  # clips as in its results
    snn = fastsnn.convert_to_snn(q, timesteps=args.timesteps, compiled=SETTINGS[args.setting])
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    start, marks = time.perf_counter(), []
    with torch.no_grad():
        for _ in range(args.batches):
            snn(x)
            marks.append(time.perf_counter() - start)
    last = marks[-min(11, len(marks))] if len(marks) > 1 else 0.0
    per_batch = (marks[-1] - last) / max(min(10, len(marks) - 1), 1)
    print(f"{args.setting}: {args.batches} batches in {marks[-1]:.1f} s; last batches {per_batch * 1e3:.0f} ms / batch")
    return dict(setting=args.setting, total_s=marks[-1], per_batch_s=per_batch)


if __name__ == "__main__":
    main()
