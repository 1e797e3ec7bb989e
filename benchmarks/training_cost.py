"""What the two training stages cost: the quantized ANN's training step against the float ANN's,
and layer-wise fine-tuning's time per layer.

* training step (forward, backward, SGD step) of the float ANN, and of the ANN with 2-bit
  activations, with 2-bit activations and 2-bit APoT weights, and the same with the fused
  ``QuantReLU`` (``quantize_model(..., fused=True)``), timed in turns;
* ``fastsnn.layerwise_finetune`` (its own defaults, one epoch per layer) of the converted SNN on
  a fixed list of ``--finetune-batches`` batches, its values carried from layer to layer in
  memory (``cache="memory"``), on disk (``"disk"``, a temporary directory) and recomputed for
  every layer (``"off"``): the seconds of every layer, and whether all gave the same layer reports.

Random weights and random images: the cost does not depend on them.

    python -m benchmarks.training_cost          # batch 64, 7 training steps, 8 fine-tuning batches
    python -m benchmarks.training_cost --quick  # batch 16, 3 steps, 2 batches
"""

from __future__ import annotations

import copy
import tempfile
import time

import torch
from torch.nn import functional as F

import fastsnn
from benchmarks import cli
from benchmarks.measure import time_round_robin
from benchmarks.models import bits_for, random_backbone
from benchmarks.record import record, section, target

STEP_LIMIT = 1.3  # target: a quantized training step within 1.3 x the float one


def training_steps(arch: str, args, device: torch.device) -> list[dict]:
    """Median and best time of a training step per model; its ratio to the float ANN's."""
    torch.manual_seed(args.seed)
    fp = random_backbone(arch, args.width).to(device).train()
    models = {
        "float": fp,
        "quant_a2": fastsnn.quantize_model(copy.deepcopy(fp), 2),
        "quant_a2_w2_apot": fastsnn.quantize_model(copy.deepcopy(fp), 2, weight_bits=2),
        "quant_a2_w2_apot_fused": fastsnn.quantize_model(copy.deepcopy(fp), 2, weight_bits=2, fused=True),
    }
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def step(model, opt):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4) for k, m in models.items()}
    fns = {k: (lambda k=k: step(models[k], opts[k])) for k in models}
    for fn in fns.values():
        fn()  # warm-up
    timed = time_round_robin(fns, args.train_steps, device)
    rows = [{"arch": arch, "model": k, "batch": args.batch, **t} for k, t in timed.items()]
    for r in rows:
        r["vs_float"] = r["median_s"] / timed["float"]["median_s"]
    cli.log(f"{arch} training step: " + ", ".join(f"{r['model']} {r['median_s'] * 1e3:.0f} ms" for r in rows))
    return rows


def finetuning(arch: str, T: int, args, device: torch.device) -> list[dict]:
    """Layer-wise fine-tuning's stage and layer seconds, carried in memory, on disk, and recomputed."""
    torch.manual_seed(args.seed)
    q = fastsnn.quantize_model(random_backbone(arch, args.width).to(device), bits_for(T), weight_bits=bits_for(T))
    snn = fastsnn.convert_to_snn(q.eval(), timesteps=T)
    shape = (args.batch, 3, args.image_size, args.image_size)
    batches = [(torch.randn(shape, device=device),) for _ in range(args.finetune_batches)]
    with torch.no_grad():
        snn(batches[0][0])  # compile and kernel choices before the timed stage
    rows, outcomes = [], []
    for cache in ("memory", "disk", "off"):
        stamps = [time.perf_counter()]
        done = lambda report, stamps=stamps: stamps.append(time.perf_counter())  # noqa: E731
        with tempfile.TemporaryDirectory() as cache_dir:
            tuned = copy.deepcopy(snn)
            reports = fastsnn.layerwise_finetune(q, tuned, batches, cache=cache, cache_dir=cache_dir, on_layer_end=done)
        outcomes.append([(r.mse_before, r.mse_after, r.kept) for r in reports])
        layers = [end - start for start, end in zip(stamps, stamps[1:])]
        rows.append({"arch": arch, "T": T, "cache": cache, "layers": len(reports), "seconds": stamps[-1] - stamps[0]})
        rows[-1] |= {"s_per_layer": rows[-1]["seconds"] / len(reports), "layer_s": layers}
        cli.log(f"{arch} T={T} fine-tuning, cache={cache}: {len(reports)} layers, {rows[-1]['seconds']:.1f} s")
    return [row | {"same_reports": all(o == outcomes[0] for o in outcomes)} for row in rows]


def markdown(steps: list[dict], tuning: list[dict], args) -> str:
    note = f"Forward, backward and SGD step, batch {args.batch}, median of {args.train_steps} steps taken in turns."
    lines = section("Training step", note, steps, ["arch", "model", "batch", "median_s", "min_s", "vs_float"])
    note = (
        f"One epoch of {args.finetune_batches} batches of {args.batch} per layer, the values carried from layer to "
        "layer in memory or on disk, or recomputed for every layer (cache=off); `same_reports`: all gave the "
        "same layer reports."
    )
    keys = ["arch", "T", "cache", "layers", "seconds", "s_per_layer", "same_reports"]
    return "\n".join(lines + section("Layer-wise fine-tuning", note, tuning, keys))


def parse_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--archs", nargs="+", default=["vgg11", "resnet20"], choices=["vgg11", "resnet20", "resnet18"])
    p.add_argument("--batch", type=int, default=None, help="default 64, quick 16")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier of the backbones")
    p.add_argument("--train-steps", type=int, default=None, help="timed training steps per model (default 7, quick 3)")
    p.add_argument("--finetune-batches", type=int, default=None, help="batches per layer (default 8, quick 2)")
    p.add_argument("--finetune-timesteps", nargs="*", type=int, default=[3], help="T values (none: no fine-tuning)")
    args = cli.parse(p, argv, "training_cost")
    args.batch = args.batch or (16 if args.quick else 64)
    args.train_steps = args.train_steps or (3 if args.quick else 7)
    args.finetune_batches = args.finetune_batches or (2 if args.quick else 8)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    with cli.measuring(args) as measurement:
        steps = [row for arch in args.archs for row in training_steps(arch, args, measurement.device)]
        tuning = [
            row
            for arch in args.archs
            for T in args.finetune_timesteps
            for row in finetuning(arch, T, args, measurement.device)
        ]
    goals = [
        target(f"{r['arch']}: {r['model']} step <= {STEP_LIMIT} x float", r["vs_float"], STEP_LIMIT) for r in steps
    ]
    results = {"training": steps, "finetune": tuning, "targets": [g for g in goals if "quant_a2_w2" in g["target"]]}
    return record(args, measurement, results, markdown(steps, tuning, args))


if __name__ == "__main__":
    main()
