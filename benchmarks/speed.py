"""Speed and memory of Fast-SNN inference vs the ANNs and SpikingJelly's converted SNN.

For each architecture (VGG-11 and ResNet-20 of ``fastsnn.backbones``, 3x32x32 input, batch 64
by default; random weights: dense simulation costs the same whatever the weights), measures

* inference of the float ANN and of the quantized ANN (b-bit activations and, by default, b-bit
  APoT weights with 8-bit first / last layer, the project's default; weights frozen at their
  quantized values and batch norm folded into the convs for both ANNs, as the SNN does);
* our SNN at T = 3 / 7 / 15 (from the 2 / 3 / 4-bit quantized ANN): multi-step with the
  ``torch.compile``-fused neuron loop (``compiled=True``), the same with int8 synapses
  (``integer_kernels=True``: exact int8 GEMMs for the convs fed by spikes, possible because
  the weights are quantized), multi-step with the eager neuron loop, and streaming (one step at
  a time, state per neuron, ``mode="streaming"``);
* SpikingJelly's ``ann2snn.RateCodingRecipe`` conversion of the float ANN at the same T, in its
  documented single-step loop and in multi-step mode (skipped when it is not installed);
* SpikingJelly's ``STBIFNode`` (SpikeZIP's signed ST-BIF neuron) simulating our own quantized ANN
  (``bench_utils.STBIFSNN``), single-step and multi-step: the strongest peer, the same network and
  neuron rule as ours; each row records the largest difference of its outputs from our SNN's
  (``max_abs_diff_vs_fastsnn``: float rounding only at T = 2**bits - 1);

each as images / s (best and median of ``--repeats`` interleaved runs) and the peak memory
PyTorch allocates during one batch. Also the training step of the float vs the quantized ANN
(2-bit activations, and 2-bit activations + 2-bit APoT weights), and the time per layer of
layer-wise fine-tuning. Writes ``benchmarks/results/speed.{json,md}`` (``speed_quick`` with
``--quick``) and prints the markdown tables. Runs on CUDA instead of the CPU when a GPU is
present (``--device``); the tables say which device.

    python benchmarks/speed.py              # full run (~5-10 min on 2 quiet CPU cores)
    python benchmarks/speed.py --quick      # short run (batch 16, T = 3 and 15; < 10 min)

Timing waits (up to ``--max-wait`` s) for the 1-minute load average to fall below
``--max-load`` and reports the load it measured under either way.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn
from torch.nn import functional as F

import fastsnn
from benchmarks import bench_utils as bu
from fastsnn.backbones import create_backbone
from fastsnn.convert import frozen_ann

ARCHS = ("vgg11", "resnet20")
SNN_VARIANTS = (
    "fastsnn_default",
    "fastsnn_compiled",
    "fastsnn_integer",
    "fastsnn_chunked",
    "fastsnn_eager",
    "fastsnn_streaming",
    "fastsnn_contiguous",
)
SJ_VARIANTS = ("sj_single_step", "sj_multi_step")
# the explicit variants pin the other options: multi-step, float32 synapses, whole batches
PLAIN = dict(mode="multistep", integer_kernels=False, chunk_size=None)
# SpikingJelly's STBIFNode (SpikeZIP's ST-BIF) simulating our own quantized ANN: the neuron closest to ours
STBIF_VARIANTS = ("stbif_single_step", "stbif_multi_step")
LABELS = {
    "ann_float": "float ANN",
    "ann_quant": "quantized ANN",
    "fastsnn_default": "Fast-SNN default, convert_to_snn(q) (every option 'auto')",
    "fastsnn_compiled": "Fast-SNN multi-step, fused neurons (compiled=True), float synapses, whole batches",
    "fastsnn_integer": "Fast-SNN multi-step, fused neurons + int8 synapses (integer_kernels=True)",
    "fastsnn_chunked": "Fast-SNN multi-step, fused neurons + int8 synapses, batch in chunks (chunk_size)",
    "fastsnn_eager": "Fast-SNN multi-step, eager neurons, float synapses, whole batches",
    "fastsnn_streaming": "Fast-SNN streaming (mode='streaming')",
    "fastsnn_contiguous": "Fast-SNN default with channels_last=False (contiguous tensors, the layout before)",
    "sj_single_step": "SpikingJelly single-step loop",
    "sj_multi_step": "SpikingJelly multi-step",
    "stbif_single_step": "SpikingJelly STBIFNode on our quantized ANN, single-step loop",
    "stbif_multi_step": "SpikingJelly STBIFNode on our quantized ANN, multi-step",
}


def bits_for(T: int) -> int:
    """Activation bits whose SNN runs at T = 2**bits - 1 (2 when T + 1 is not a power of two)."""
    b = int(round(math.log2(T + 1)))
    return b if 2**b - 1 == T and b >= 1 else 2


def weight_bits(args, bits: int) -> int | None:
    return bits if args.weight_bits == "same" else None


def fold_bn(model: nn.Module) -> nn.Module:
    """The model with its quantized weights frozen and eval batch norm folded into the convs."""
    return frozen_ann(model)


def build_float(arch: str, width: float, seed: int, device) -> nn.Module:
    torch.manual_seed(seed)
    model = create_backbone(arch, num_classes=10, in_channels=3, width=width)
    # random but non-trivial batch-norm statistics, as in a trained network
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.to(device).eval()


def inference(arch: str, args, device, log) -> tuple[list[dict], list[dict]]:
    """Timing and memory rows for one architecture; and the T-group raw timings."""
    fp = build_float(arch, args.width, args.seed, device)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    ann_float = fold_bn(fp)
    qmodels = {}
    for T in args.timesteps:
        b = bits_for(T)
        if b not in qmodels:
            qmodels[b] = fastsnn.quantize_model(
                copy.deepcopy(fp), b, weight_bits=weight_bits(args, b), alpha_init=2.0
            ).eval()
    ann_quant = fold_bn(qmodels[bits_for(args.timesteps[0])])
    sj_ok = not args.no_spikingjelly and bu.spikingjelly_version() is not None
    sj = {}
    if sj_ok:
        calib = [(x, None)]
        sj["sj_single_step"] = bu.SpikingJellySNN(fp, calib, mode="max", step_mode="s", device=device)
        sj["sj_multi_step"] = bu.SpikingJellySNN(fp, calib, mode="max", step_mode="m", device=device)

    rows, groups = [], []
    anns = {"ann_float": lambda: ann_float(x), "ann_quant": lambda: ann_quant(x)}
    first_call: dict[str, float] = {}
    with torch.no_grad():
        for name, fn in anns.items():  # warm-up
            t0 = time.perf_counter()
            fn()
            bu.synchronize(device)
            first_call[name] = time.perf_counter() - t0
        for T in args.timesteps:
            q = qmodels[bits_for(T)]
            snns = {}
            if "fastsnn_compiled" in args.variants:
                snns["fastsnn_compiled"] = fastsnn.convert_to_snn(q, timesteps=T, compiled=True, **PLAIN)
            if "fastsnn_integer" in args.variants:
                snns["fastsnn_integer"] = fastsnn.convert_to_snn(
                    q, timesteps=T, compiled=True, **dict(PLAIN, integer_kernels=True)
                )
            if "fastsnn_chunked" in args.variants:  # int8 synapses only where the weights are quantized
                snns["fastsnn_chunked"] = fastsnn.convert_to_snn(
                    q,
                    timesteps=T,
                    mode="multistep",
                    compiled=True,
                    integer_kernels=args.weight_bits == "same",
                    chunk_size=args.chunk_size,
                )
            if "fastsnn_default" in args.variants:
                snns["fastsnn_default"] = fastsnn.convert_to_snn(q, timesteps=T)
            if "fastsnn_contiguous" in args.variants:
                snns["fastsnn_contiguous"] = fastsnn.convert_to_snn(q, timesteps=T, channels_last=False)
            if "fastsnn_eager" in args.variants:
                snns["fastsnn_eager"] = fastsnn.convert_to_snn(q, timesteps=T, compiled=False, **PLAIN)
            if "fastsnn_streaming" in args.variants:
                snns["fastsnn_streaming"] = fastsnn.convert_to_snn(q, timesteps=T, **dict(PLAIN, mode="streaming"))
            fns = dict(anns)
            fns.update({k: (lambda m=m: m(x)) for k, m in snns.items()})
            fns.update({k: (lambda s=s, T=T: s(x, T)) for k, s in sj.items() if k in args.variants})
            peers = _stbif_peers(q, T, args, device) if sj_ok else {}
            fns.update({k: (lambda s=s: s(x)) for k, s in peers.items()})
            diffs = _diffs_from_ours(peers, snns, q, T, x)
            first = {}
            for name, fn in fns.items():
                if name in anns:
                    continue
                t0 = time.perf_counter()
                fn()
                bu.synchronize(device)
                first[name] = time.perf_counter() - t0
            log(f"{arch} T={T}: warm-up done ({', '.join(f'{k} {v:.1f}s' for k, v in first.items())}); timing")
            timed = bu.time_round_robin(fns, args.repeats, device)
            groups.append(
                {
                    "arch": arch,
                    "T": T,
                    "load_1min": bu.load_average(),
                    "times": {k: v["times_s"] for k, v in timed.items()},
                }
            )
            for name in fns:
                if name in anns:
                    continue
                mem = bu.peak_memory_bytes(fns[name], device)
                rows.append(_row(arch, name, T, args.batch, timed[name], mem, first[name], timed))
                if name in sj:
                    rows[-1]["backend"] = sj[name].backend
                if name in diffs:
                    rows[-1]["max_abs_diff_vs_fastsnn"] = diffs[name]
            for name in anns:
                if T == args.timesteps[0]:
                    mem = bu.peak_memory_bytes(anns[name], device)
                    rows.append(_row(arch, name, None, args.batch, timed[name], mem, first_call[name], timed))
                else:  # ANN times from every T group: keep all repeats
                    row = next(r for r in rows if r["arch"] == arch and r["method"] == name)
                    row["times_s"] += timed[name]["times_s"]
                    row["min_s"] = min(row["times_s"])
                    row["median_s"] = statistics.median(row["times_s"])
                    row["images_per_s"] = args.batch / row["min_s"]
                    row["images_per_s_median"] = args.batch / row["median_s"]
            log(f"{arch} T={T}: " + ", ".join(f"{k} {v['min_s'] * 1e3:.0f} ms" for k, v in timed.items()))
    return rows, groups


def _stbif_peers(q: nn.Module, T: int, args, device) -> dict:
    """The STBIF variants asked for, on the quantized ANN of this T (its threshold set for T steps)."""
    modes = {"stbif_single_step": "s", "stbif_multi_step": "m"}
    return {k: bu.STBIFSNN(q, timesteps=T, device=device, step_mode=m) for k, m in modes.items() if k in args.variants}


@torch.no_grad()
def _diffs_from_ours(peers: dict, snns: dict, q: nn.Module, T: int, x: torch.Tensor) -> dict[str, float]:
    """Largest absolute difference of each peer's output from our SNN's on the benchmark batch."""
    if not peers:
        return {}
    ours = snns.get("fastsnn_eager") or fastsnn.convert_to_snn(q, timesteps=T, compiled=False, **PLAIN)
    reference = ours(x)
    return {k: float((peer(x) - reference).abs().max()) for k, peer in peers.items()}


def _row(arch, name, T, batch, timed, mem, first, group) -> dict:
    row = {
        "arch": arch,
        "method": name,
        "label": LABELS[name],
        "T": T,
        "batch": batch,
        "times_s": list(timed["times_s"]),
        "min_s": timed["min_s"],
        "median_s": timed["median_s"],
        "images_per_s": batch / timed["min_s"],
        "images_per_s_median": batch / timed["median_s"],
        "peak_mem_mb": mem / 2**20,
        "first_call_s": first,
        "compile_or_warmup_s": max(first - timed["min_s"], 0.0),
    }
    if T is not None:  # ratios against measurements of the same round-robin group
        row["vs_T_x_quant_ann"] = timed["min_s"] / (T * group["ann_quant"]["min_s"])
        row["vs_T_x_quant_ann_median"] = timed["median_s"] / (T * group["ann_quant"]["median_s"])
    return row


def training(arch: str, args, device, log) -> list[dict]:
    """Training-step time (forward, backward, SGD step) of the float vs the quantized ANN."""
    fp = build_float(arch, args.width, args.seed, device).train()
    models = {
        "float": fp,
        "quant_a2": fastsnn.quantize_model(copy.deepcopy(fp), 2, alpha_init=2.0),
        "quant_a2_w2_apot": fastsnn.quantize_model(copy.deepcopy(fp), 2, weight_bits=2, alpha_init=2.0),
        "quant_a2_w2_apot_fused": fastsnn.quantize_model(
            copy.deepcopy(fp), 2, weight_bits=2, alpha_init=2.0, fused=True
        ),
    }
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4) for k, m in models.items()}

    def step(k):
        def run():
            loss = F.cross_entropy(models[k](x), y)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()

        return run

    fns = {k: step(k) for k in models}
    for fn in fns.values():
        fn()  # warm-up
    timed = bu.time_round_robin(fns, args.train_steps, device)
    rows = []
    for k, t in timed.items():
        rows.append(
            {
                "arch": arch,
                "model": k,
                "batch": args.batch,
                "times_s": t["times_s"],
                "min_s": t["min_s"],
                "median_s": t["median_s"],
                "vs_float": t["median_s"] / timed["float"]["median_s"],
                "vs_float_min": t["min_s"] / timed["float"]["min_s"],
            }
        )
    log(f"{arch} training step: " + ", ".join(f"{r['model']} {r['median_s'] * 1e3:.0f} ms" for r in rows))
    return rows


def finetune_timing(arch: str, args, device, log) -> list[dict]:
    """Wall time of each layer of layer-wise fine-tuning (1 epoch over ``--finetune-batches``)."""
    rows = []
    fp = build_float(arch, args.width, args.seed, device)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    batches = [
        (torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen).to(device),)
        for _ in range(args.finetune_batches)
    ]
    for T in args.finetune_timesteps:
        q = fastsnn.quantize_model(
            copy.deepcopy(fp), bits_for(T), weight_bits=weight_bits(args, bits_for(T)), alpha_init=2.0
        ).eval()
        snn = fastsnn.convert_to_snn(q, timesteps=T, compiled="fastsnn_compiled" in args.variants)
        with torch.no_grad():
            snn(batches[0][0])  # compile / warm up outside the timed stage
        stamps = [time.perf_counter()]
        reports = fastsnn.layerwise_finetune(
            q,
            snn,
            batches,
            epochs_per_layer=1,
            measure_batches=1,
            on_layer_end=lambda r, stamps=stamps: stamps.append(time.perf_counter()),
        )
        for r, t0, t1 in zip(reports, stamps, stamps[1:]):
            rows.append(
                {
                    "arch": arch,
                    "T": T,
                    "layer": r.path,
                    "seconds": t1 - t0,
                    "seconds_per_batch": (t1 - t0) / (len(batches) + 2),  # + MSE before / after
                    "batches": len(batches),
                    "batch": args.batch,
                }
            )
        total = stamps[-1] - stamps[0]
        log(f"{arch} fine-tuning T={T}: {len(reports)} layers, {total:.1f} s")
    return rows


# --------------------------------------------------------------------------- report


def targets(rows: list[dict], train_rows: list[dict], args) -> list[dict]:
    out = []

    def get(arch, method, T=None):
        return next((r for r in rows if r["arch"] == arch and r["method"] == method and r["T"] == T), None)

    for arch in args.archs:
        for T in args.timesteps:
            sjs = [r for r in (get(arch, m, T) for m in SJ_VARIANTS) if r is not None]
            # the default first: the targets are about what a user gets
            judged = ("fastsnn_default", "fastsnn_compiled", "fastsnn_integer", "fastsnn_chunked")
            methods = [m for m in judged if get(arch, m, T)] or ["fastsnn_eager"]
            for method in methods:
                ours = get(arch, method, T)
                if ours is None:
                    continue
                out.append(
                    {
                        "target": f"{arch} T={T}: SNN time <= 1.1 x T x quantized ANN ({method})",
                        "value": ours["vs_T_x_quant_ann"],
                        "limit": 1.1,
                        "met": ours["vs_T_x_quant_ann"] <= 1.1,
                        "note": f"{ours['label']}; median-based {ours['vs_T_x_quant_ann_median']:.2f}",
                    }
                )
                if sjs and T in (3, 15):
                    sj_best = min(sjs, key=lambda r: r["min_s"])
                    need = 1.5 if T == 3 else 1.2
                    speedup = sj_best["min_s"] / ours["min_s"]
                    out.append(
                        {
                            "target": f"{arch} T={T}: throughput >= {need} x SpikingJelly ({method})",
                            "value": speedup,
                            "limit": need,
                            "met": speedup >= need,
                            "note": f"vs the faster SpikingJelly mode ({sj_best['label']}); "
                            f"median-based {sj_best['median_s'] / ours['median_s']:.2f}",
                        }
                    )
            stream, ann = get(arch, "fastsnn_streaming", T), get(arch, "ann_quant")
            if stream is not None and ann is not None and ann["peak_mem_mb"] > 0:
                ratio = stream["peak_mem_mb"] / ann["peak_mem_mb"]
                out.append(
                    {
                        "target": f"{arch} T={T}: streaming peak memory <= 1.5 x quantized ANN",
                        "value": ratio,
                        "limit": 1.5,
                        "met": ratio <= 1.5,
                        "note": f"{stream['peak_mem_mb']:.1f} MiB vs {ann['peak_mem_mb']:.1f} MiB",
                    }
                )
    for r in train_rows:
        if r["model"].startswith("quant_a2_w2_apot"):
            fused = r["model"].endswith("_fused")
            out.append(
                {
                    "target": f"{r['arch']}: quantized ANN training step <= 1.3 x float ANN"
                    + (" (fused QuantReLU)" if fused else ""),
                    "value": r["vs_float"],
                    "limit": 1.3,
                    "met": r["vs_float"] <= 1.3,
                    "note": "2-bit activations + 2-bit APoT weights, median of interleaved steps"
                    + ("; quantize_model(..., fused=True)" if fused else ""),
                }
            )
    return out


def markdown(result: dict) -> str:
    env, cfg = result["environment"], result["config"]
    lines = [
        f"### Inference speed and memory ({result['device_label']}, batch {cfg['batch']}, "
        f"{cfg['image_size']}x{cfg['image_size']} input)",
        "",
        f"Load average (1 min) while measuring: {_loads(result)}; torch {env['torch']}, "
        f"SpikingJelly {env['spikingjelly'] or 'not installed (skipped)'}; best of {cfg['repeats']} "
        "interleaved runs (median in the JSON). `x T·qANN`: time / (T x quantized-ANN time); "
        "`SJ / ours`: the faster SpikingJelly mode's time / this row's time.",
        "",
        "| arch | method | T | images/s | ms / batch | x T·qANN | SJ / ours | peak MiB | warm-up / compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = result["inference"]
    for r in rows:
        sj = [s for s in rows if s["arch"] == r["arch"] and s["T"] == r["T"] and s["method"] in SJ_VARIANTS]
        sj_best = min((s["min_s"] for s in sj), default=None)
        speed = f"{sj_best / r['min_s']:.2f}" if sj_best and r["T"] is not None else "-"
        vs = f"{r['vs_T_x_quant_ann']:.2f}" if r["T"] is not None else "-"
        lines.append(
            f"| {r['arch']} | {r['label']} | {r['T'] if r['T'] is not None else '-'} "
            f"| {r['images_per_s']:.0f} | {r['min_s'] * 1e3:.1f} | {vs} | {speed} | {r['peak_mem_mb']:.1f} "
            f"| {r['compile_or_warmup_s']:.1f} |"
        )
    if result["training"]:
        lines += [
            "",
            f"### Training step (forward + backward + SGD, batch {cfg['batch']})",
            "",
            "| arch | model | ms / step (median) | vs float |",
            "|---|---|---|---|",
        ]
        for r in result["training"]:
            lines.append(f"| {r['arch']} | {r['model']} | {r['median_s'] * 1e3:.0f} | {r['vs_float']:.2f} |")
    if result["finetune"]:
        lines += [
            "",
            "### Layer-wise fine-tuning, time per layer",
            "",
            f"One epoch of {result['finetune'][0]['batches']} batches of {cfg['batch']} per layer "
            "(+ one batch each to measure the layer's MSE before and after).",
            "",
            "| arch | T | layers | s / layer (mean) | s / layer (min-max) | s / batch |",
            "|---|---|---|---|---|---|",
        ]
        keys = sorted({(r["arch"], r["T"]) for r in result["finetune"]}, key=lambda k: (cfg["archs"].index(k[0]), k[1]))
        for arch, T in keys:
            rs = [r for r in result["finetune"] if r["arch"] == arch and r["T"] == T]
            secs = [r["seconds"] for r in rs]
            lines.append(
                f"| {arch} | {T} | {len(rs)} | {statistics.mean(secs):.2f} | {min(secs):.2f}-{max(secs):.2f} "
                f"| {statistics.mean(r['seconds_per_batch'] for r in rs):.2f} |"
            )
    checks = [r for r in rows if "max_abs_diff_vs_fastsnn" in r]
    if checks:
        lines += [
            "",
            "### STBIF (SpikingJelly's STBIFNode on our quantized ANN) vs our SNN",
            "",
            "Largest absolute output difference on the benchmark batch (the same network and neuron rule; "
            "SpikeZIP's count bound of 2^b - 1 cannot bind in T = 2^b - 1 steps).",
            "",
            "| arch | method | T | max abs diff | ms / batch | ours (eager) ms / batch |",
            "|---|---|---|---|---|---|",
        ]
        for r in checks:
            ours = next(
                (o for o in rows if o["arch"] == r["arch"] and o["T"] == r["T"] and o["method"] == "fastsnn_eager"),
                None,
            )
            ours_ms = f"{ours['min_s'] * 1e3:.1f}" if ours else "-"
            lines.append(
                f"| {r['arch']} | {r['label']} | {r['T']} | {r['max_abs_diff_vs_fastsnn']:.2e} "
                f"| {r['min_s'] * 1e3:.1f} | {ours_ms} |"
            )
    if result["targets"]:
        lines += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in result["targets"]:
            lines.append(f"| {t['target']} | {t['value']:.2f} ({t['note']}) | {'yes' if t['met'] else 'no'} |")
    lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines)


def _loads(result) -> str:
    loads = [g["load_1min"] for g in result["groups"] if g["load_1min"] is not None]
    before = result["load"]["load_before"]
    if not loads:
        return "not available"
    return f"{before:.2f} at start, {min(loads):.2f}-{max(loads):.2f} during"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run: batch 16, T = 3 and 15, 3 repeats")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS) + ["resnet18"])
    p.add_argument("--batch", type=int, default=None, help="batch size (default 64, quick 16)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier of the backbones")
    p.add_argument("--timesteps", nargs="+", type=int, default=None, help="T values (default 3 7 15; quick 3 15)")
    p.add_argument(
        "--variants",
        nargs="+",
        default=list(SNN_VARIANTS + SJ_VARIANTS + STBIF_VARIANTS),
        choices=list(SNN_VARIANTS + SJ_VARIANTS + STBIF_VARIANTS),
        help="SNN simulations to measure",
    )
    p.add_argument("--chunk-size", type=int, default=8, help="samples per chunk of the fastsnn_chunked variant")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per method (default 7, quick 3)")
    p.add_argument("--train-steps", type=int, default=None, help="timed training steps per model (default 7, quick 3)")
    p.add_argument("--finetune-batches", type=int, default=None, help="batches per layer (default 8, quick 2)")
    p.add_argument(
        "--finetune-timesteps",
        nargs="*",
        type=int,
        default=None,
        help="T values for the fine-tuning timing (default 3; none to skip)",
    )
    p.add_argument(
        "--weight-bits",
        choices=("same", "none"),
        default="same",
        help="weights of our models: 'same' bits as the activations (APoT, 8-bit first/last layer; "
        "the project's default), or 'none' (float). The float ANN / SpikingJelly keep float weights",
    )
    p.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    p.add_argument("--no-spikingjelly", action="store_true", help="skip SpikingJelly even when installed")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 = torch's default)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load average below this")
    p.add_argument("--max-wait", type=float, default=None, help="seconds to wait for it (default 900, quick 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results/")
    p.add_argument("--name", default=None, help="output file stem (default speed / speed_quick)")
    args = p.parse_args(argv)
    q = args.quick
    args.batch = args.batch or (16 if q else 64)
    args.timesteps = args.timesteps or ([3, 15] if q else [3, 7, 15])
    args.repeats = args.repeats or (3 if q else 7)
    args.train_steps = args.train_steps or (3 if q else 7)
    args.finetune_batches = args.finetune_batches or (2 if q else 8)
    if args.finetune_timesteps is None:
        args.finetune_timesteps = [3]
    args.max_wait = args.max_wait if args.max_wait is not None else (60 if q else 900)
    args.name = args.name or ("speed_quick" if q else "speed")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = bu.resolve_device(args.device)
    log = bu.log
    sj_version = None if args.no_spikingjelly else bu.spikingjelly_version()
    if sj_version is None:
        log(
            "SpikingJelly "
            + (
                "skipped (--no-spikingjelly)"
                if args.no_spikingjelly
                else "not installed: skipped (pip install -e '.[bench]')"
            )
        )
        args.variants = [v for v in args.variants if v not in SJ_VARIANTS + STBIF_VARIANTS]
    log(f"device: {bu.device_label(device)}")
    start = time.perf_counter()
    load = bu.wait_for_quiet(args.max_load, args.max_wait, log=log)
    rows, groups, train_rows, ft_rows = [], [], [], []
    for arch in args.archs:
        r, g = inference(arch, args, device, log)
        rows += r
        groups += g
        if not args.no_train:
            train_rows += training(arch, args, device, log)
        if args.finetune_timesteps:
            ft_rows += finetune_timing(arch, args, device, log)
    result = {
        "benchmark": "speed",
        "command": bu.command_line(),
        "device_label": bu.device_label(device),
        "config": {k: v for k, v in vars(args).items()},
        "environment": bu.environment(device),
        "load": load | {"load_after": bu.load_average()},
        "inference": rows,
        "groups": groups,
        "training": train_rows,
        "finetune": ft_rows,
        "spikingjelly_skipped": sj_version is None,
        "seconds": time.perf_counter() - start,
    }
    result["targets"] = targets(rows, train_rows, args)
    bu.write_results(args.name, result, markdown(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
