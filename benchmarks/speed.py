"""Inference speed and memory of Fast-SNN against the ANNs and SpikingJelly.

For each architecture (``fastsnn.backbones``, random weights, 3x32x32 input), one group per T, its
methods timed in turns (so that a change of load hits them all alike):

* the float ANN and the quantized ANN (b-bit activations and, by default, b-bit APoT weights with
  8-bit first / last layer; weights frozen and batch norm folded, as the SNN has them);
* our SNN at T = 2**b - 1: the default ``convert_to_snn(q)`` and the explicit variants below;
* SpikingJelly's rate-coding conversion of the float ANN, single-step loop and multi-step, and its
  ``STBIFNode`` simulating our quantized ANN (``fastsnn.peers.spikingjelly``; skipped when not installed),
  with the largest difference of its outputs from ours (float rounding only);

each as images / s (best and median of ``--repeats``), time over T x the quantized ANN's, and the
peak memory PyTorch allocates in one batch; then the speed and memory targets.

    python -m benchmarks.speed --name speed_<machine>   # T = 3 7 15, batch 64
    python -m benchmarks.speed --quick                  # batch 16, T = 3 15, 3 repeats
"""

from __future__ import annotations

import copy

import torch

import fastsnn
from benchmarks import cli
from benchmarks.measure import peak_memory_bytes, time_round_robin, timed_call
from benchmarks.models import bits_for, random_backbone
from benchmarks.record import record, section, target
from fastsnn.convert import frozen_ann
from fastsnn.peers import spikingjelly as peers

PLAIN = dict(mode="multistep", integer_kernels=False, chunk_size=None)  # multi-step, float32 synapses, whole batches
PEERS = ("sj_single_step", "sj_multi_step", "stbif_single_step", "stbif_multi_step")
JUDGED = ("fastsnn_default", "fastsnn_compiled", "fastsnn_integer", "fastsnn_chunked")  # what the targets judge


def our_options(quantized_weights: bool = True, chunk_size: int = 8) -> dict[str, dict]:
    """``convert_to_snn(q, **options)`` of each of our variants (the default: every option "auto")."""
    return {
        "fastsnn_default": {},
        "fastsnn_compiled": dict(PLAIN, compiled=True),
        "fastsnn_integer": dict(PLAIN, compiled=True, integer_kernels=True),
        # int8 synapses only where the weights are quantized
        "fastsnn_chunked": dict(PLAIN, compiled=True, integer_kernels=quantized_weights, chunk_size=chunk_size),
        "fastsnn_eager": dict(PLAIN, compiled=False),
        "fastsnn_streaming": dict(PLAIN, mode="streaming"),
        "fastsnn_contiguous": dict(channels_last=False),
    }


def candidates(fp, q, T: int, x: torch.Tensor, args) -> dict:
    """``{method: callable}`` of one group: the ANNs, our variants, the peers asked for."""
    ann_float, ann_quant = frozen_ann(fp), frozen_ann(q)
    fns = {"ann_float": lambda: ann_float(x), "ann_quant": lambda: ann_quant(x)}
    for name, options in our_options(args.weight_bits == "same", args.chunk_size).items():
        if name in args.variants:
            snn = fastsnn.convert_to_snn(q, timesteps=T, **options)
            fns[name] = lambda snn=snn: snn(x)
    for name in (p for p in PEERS if p in args.variants):
        step = "s" if name.endswith("single_step") else "m"
        if name.startswith("sj"):
            sj = peers.SpikingJellySNN(fp, [(x, None)], mode="max", step_mode=step, device=x.device)
            fns[name] = lambda sj=sj: sj(x, T)
            cli.log(f"{name}: SpikingJelly's {sj.backend} backend")
        else:
            stbif = peers.STBIFSNN(q, timesteps=T, device=x.device, step_mode=step)
            fns[name] = lambda stbif=stbif: stbif(x)
    return fns


@torch.no_grad()
def measure_group(arch: str, T: int, fns: dict, args, device: torch.device) -> list[dict]:
    """Rows of one group (one architecture, one T): times in turns, peak memory, STBIF's differences."""
    first = {name: timed_call(fn, device) for name, fn in fns.items()}  # warm-up: compile, kernel choices
    cli.log(f"{arch} T={T}: warm-up " + ", ".join(f"{k} {v:.1f}s" for k, v in first.items()))
    timed = time_round_robin(fns, args.repeats, device)
    peer_s = min((timed[m]["min_s"] for m in ("sj_single_step", "sj_multi_step") if m in timed), default=None)
    ours = next((m for m in ("fastsnn_eager", *JUDGED) if m in fns), None)  # the same outputs up to float rounding
    reference = fns[ours]() if ours else None
    rows = []
    for name, fn in fns.items():
        t, snn = timed[name], not name.startswith("ann")
        row = {"arch": arch, "method": name, "T": T if snn else None, "group_T": T, "batch": args.batch, **t}
        row |= {"images_per_s": args.batch / t["min_s"], "ms_per_batch": t["min_s"] * 1e3}
        row |= {"peak_mib": peak_memory_bytes(fn, device) / 2**20, "warmup_s": max(first[name] - t["min_s"], 0.0)}
        if snn:
            row["vs_T_x_quant_ann"] = t["min_s"] / (T * timed["ann_quant"]["min_s"])
            row["vs_spikingjelly"] = peer_s / t["min_s"] if peer_s else None
        if name.startswith("stbif") and reference is not None:
            row["max_abs_diff_vs_fastsnn"] = float((fn() - reference).abs().max())
        rows.append(row)
    cli.log(f"{arch} T={T}: " + ", ".join(f"{k} {v['min_s'] * 1e3:.0f} ms" for k, v in timed.items()))
    return rows


def measure_arch(arch: str, args, device: torch.device) -> list[dict]:
    torch.manual_seed(args.seed)
    fp = random_backbone(arch, args.width).to(device)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    rows = []
    for T in args.timesteps:
        bits = bits_for(T)
        q = fastsnn.quantize_model(copy.deepcopy(fp), bits, weight_bits=bits if args.weight_bits == "same" else None)
        rows += measure_group(arch, T, candidates(fp, q.eval(), T, x, args), args, device)
    return rows


def targets(rows: list[dict], args) -> list[dict]:
    """SNN time <= 1.1 x T x quantized ANN; throughput >= 1.5 x (T = 3) / 1.2 x (T = 15) SpikingJelly's;
    streaming peak memory <= 1.5 x the quantized ANN's."""
    out = []
    for arch, T in ((arch, T) for arch in args.archs for T in args.timesteps):
        group = {r["method"]: r for r in rows if r["arch"] == arch and r["group_T"] == T}
        for name in [m for m in JUDGED if m in group] or [m for m in ("fastsnn_eager",) if m in group]:
            ours, at = group[name], f"{arch} T={T}"
            out.append(target(f"{at}: SNN time <= 1.1 x T x quantized ANN ({name})", ours["vs_T_x_quant_ann"], 1.1))
            if ours["vs_spikingjelly"] is not None and T in (3, 15):
                need = 1.5 if T == 3 else 1.2
                name = f"{at}: throughput >= {need} x SpikingJelly ({name})"
                out.append(target(name, ours["vs_spikingjelly"], need, at_least=True))
        if "fastsnn_streaming" in group:
            ratio = group["fastsnn_streaming"]["peak_mib"] / group["ann_quant"]["peak_mib"]
            out.append(target(f"{arch} T={T}: streaming peak memory <= 1.5 x quantized ANN", ratio, 1.5))
    return out


def markdown(rows: list[dict], args) -> str:
    ours = our_options(args.weight_bits == "same", args.chunk_size)
    options = "; ".join(
        f"`{k}`: {', '.join(f'{o}={v!r}' for o, v in ours[k].items()) or '(none)'}" for k in ours if k in args.variants
    )
    note = (
        f"Batch {args.batch}, {args.image_size}x{args.image_size} input, best of {args.repeats} runs timed in turns "
        "within each T group (the median in the JSON). `vs_T_x_quant_ann`: time / (T x the quantized ANN's in the "
        "same group); `vs_spikingjelly`: the faster SpikingJelly mode's time / this row's; `max_abs_diff_vs_fastsnn`: "
        f"STBIF's outputs against our SNN's. Our variants, `convert_to_snn(q, **options)`: {options}."
    )
    keys = ["arch", "method", "group_T", "images_per_s", "ms_per_batch", "vs_T_x_quant_ann", "vs_spikingjelly"]
    return "\n".join(
        section("Inference speed and memory", note, rows, [*keys, "peak_mib", "warmup_s", "max_abs_diff_vs_fastsnn"])
    )


def parse_args(argv=None):
    variants = [*our_options(), *PEERS]
    p = cli.parser(__doc__)
    p.add_argument("--archs", nargs="+", default=["vgg11", "resnet20"], choices=["vgg11", "resnet20", "resnet18"])
    p.add_argument("--batch", type=int, default=None, help="batch size (default 64, quick 16)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier of the backbones")
    p.add_argument("--timesteps", nargs="+", type=int, default=None, help="T = 2**b - 1 (default 3 7 15, quick 3 15)")
    p.add_argument("--variants", nargs="+", default=variants, choices=variants, help="SNN simulations to measure")
    p.add_argument("--chunk-size", type=int, default=8, help="samples per chunk of fastsnn_chunked")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per method (default 7, quick 3)")
    weights = "our models' weights: 'same' bits as the activations (APoT, 8-bit first / last layer) or 'none' (float)"
    p.add_argument("--weight-bits", choices=("same", "none"), default="same", help=weights)
    p.add_argument("--no-spikingjelly", action="store_true", help="skip SpikingJelly even when installed")
    args = cli.parse(p, argv, "speed")
    args.batch = args.batch or (16 if args.quick else 64)
    args.timesteps = args.timesteps or ([3, 15] if args.quick else [3, 7, 15])
    args.repeats = args.repeats or (3 if args.quick else 7)
    for T in args.timesteps:
        try:
            bits_for(T)
        except ValueError as err:
            p.error(str(err))
    args.spikingjelly = not args.no_spikingjelly and peers.spikingjelly_version() is not None
    if not args.spikingjelly:
        cli.log(
            "SpikingJelly skipped: " + ("--no-spikingjelly" if args.no_spikingjelly else "not installed (.[bench])")
        )
        args.variants = [v for v in args.variants if v not in PEERS]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    with cli.measuring(args) as measurement:
        rows = [row for arch in args.archs for row in measure_arch(arch, args, measurement.device)]
    results = {"inference": rows, "targets": targets(rows, args), "spikingjelly_skipped": not args.spikingjelly}
    return record(args, measurement, results, markdown(rows, args))


if __name__ == "__main__":
    main()
