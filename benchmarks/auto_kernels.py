"""A long evaluation under one neuron-kernel setting: does ``compiled="auto"`` pay for itself?

Runs ``--batches`` batches of random images through a converted network (random weights, b-bit
activations and APoT weights) with ``convert_to_snn(q, compiled=<setting>)`` and records the
time of every batch, the total and the time per batch over the last 10. Run each setting in its
own process (the kernel choice and torch's compile caches are per process and cache directory):

    FASTSNN_CACHE_DIR=/tmp/kc python -m benchmarks.auto_kernels --setting eager
    FASTSNN_CACHE_DIR=/tmp/kc python -m benchmarks.auto_kernels --setting auto
"""

from __future__ import annotations

import logging

import torch

import fastsnn
from benchmarks import cli
from benchmarks.measure import timed_call
from benchmarks.models import bits_for, random_backbone
from benchmarks.record import record

SETTINGS = {"auto": "auto", "eager": False, "compiled": True}


def parse_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--setting", choices=list(SETTINGS), default="auto", help="convert_to_snn's compiled=")
    p.add_argument("--arch", default="resnet20", choices=["vgg11", "resnet20", "resnet18"])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--timesteps", type=int, default=3, help="T = 2**b - 1")
    p.add_argument("--batches", type=int, default=None, help="default 60, quick 12")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    args = cli.parse(p, argv, "auto_kernels")
    args.batches = args.batches or (12 if args.quick else 60)
    if "--name" not in args.argv:
        args.name = f"auto_kernels_{args.setting}" + ("_quick" if args.quick else "")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # the kernel choices
    with cli.measuring(args) as measurement:
        bits = bits_for(args.timesteps)
        net = random_backbone(args.arch, args.width).to(measurement.device)
        q = fastsnn.quantize_model(net, bits, weight_bits=bits).eval()
        snn = fastsnn.convert_to_snn(q, timesteps=args.timesteps, compiled=SETTINGS[args.setting])
        x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=measurement.device)
        with torch.no_grad():
            times = [timed_call(lambda: snn(x), measurement.device) for _ in range(args.batches)]
    last = times[-10:]
    row = {"setting": args.setting, "total_s": sum(times), "per_batch_s": sum(last) / len(last), "times_s": times}
    text = (
        f"### Neuron kernels: compiled={SETTINGS[args.setting]!r}, {args.arch}, T = {args.timesteps}, "
        f"batch {args.batch}\n\n{args.batches} batches in {row['total_s']:.1f} s; the last {len(last)}: "
        f"{row['per_batch_s'] * 1e3:.0f} ms / batch."
    )
    return record(args, measurement, {"rows": [row]}, text)


if __name__ == "__main__":
    main()
