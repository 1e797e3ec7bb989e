"""Peak memory of SNN inference at detection and segmentation sizes (issue 14), and ResNet-20's.

Models (random weights; memory does not depend on them), batch 4 by default:

* YOLOv2 with the ResNet-34 trunk (``tasks.detection.yolo.YOLOv2R34``, ``conf/model/yolo_r34.yaml``)
  at 416 x 416;
* DeepLab-v3 with the ResNet-34 trunk (``tasks.segmentation.deeplab.DeepLabV3``, ImageNet stem,
  width 1.0, output stride 16, ASPP rates 6 / 12 / 18 as ``conf/experiment/voc_deeplabv3.yaml``)
  at 513 x 513;
* ResNet-20 (``fastsnn.backbones``) at 32 x 32, batch 64: what dominates its streaming memory.

Methods, at T = 7 and 15 (from 3- and 4-bit activation quantization, float weights as the
detection / segmentation recipes): the quantized ANN (weights frozen, batch norm folded); our
default ``convert_to_snn(q)``; ``mode="multistep"``; ``mode="streaming"``; multi-step and streaming
with ``chunk_size``; ``mode="auto"``; SpikingJelly's rate-coding conversion of the float ANN,
multi-step and single-step (``bench_utils.SpikingJellySNN``); SpikingJelly's STBIFNode on our
quantized ANN, multi-step and single-step (``bench_utils.STBIFSNN``).

How memory is measured. At these sizes several methods need tens of GiB (more than this shared
machine may use) and a single CPU pass takes minutes, so every method is run on the **meta
device** (shapes only, nothing computed or allocated) under
``fastsnn.planner.estimate.AllocationTracker``, which counts the bytes of every tensor storage the
run creates until its last tensor is collected: the high-water mark of tensor memory a real run
allocates (allocator caches and library scratch buffers excluded, as ``bench_utils.peak_memory_bytes``
excludes them on the CPU). The validation (skipped with ``--no-validate``) checks that count against real CPU runs
(``bench_utils.peak_memory_bytes``, the profiler's allocation events) of every method at a small
size, and records their times (measured under the load reported). Writes
``benchmarks/results/memory_large.{json,md}``.

    python benchmarks/memory_large.py                 # full sizes (meta device) + validation (~12 min, loaded CPU)
    python benchmarks/memory_large.py --quick         # smaller inputs, T = 7 only

SpikingJelly's rate-coding recipe refuses both large models (its step-mode adapters: YOLO's
``PixelUnshuffle``, DeepLab's tensor indexing); the refusal is reported in the row.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

import fastsnn
from benchmarks import bench_utils as bu
from fastsnn.convert import frozen_ann
from fastsnn.planner.estimate import AllocationTracker, meta_copy
from fastsnn.neuron import IFNeuron

LABELS = {
    "ann_quant": "quantized ANN",
    "fastsnn_default": "Fast-SNN, default convert_to_snn(q)",
    "fastsnn_multistep": "Fast-SNN multi-step (mode='multistep')",
    "fastsnn_streaming": "Fast-SNN streaming (mode='streaming')",
    "fastsnn_chunked": "Fast-SNN multi-step, chunk_size={chunk}",
    "fastsnn_streaming_chunked": "Fast-SNN streaming, chunk_size={chunk}",
    "fastsnn_auto": "Fast-SNN mode='auto' (chose {choice})",
    "sj_multi_step": "SpikingJelly rate coding, multi-step",
    "sj_single_step": "SpikingJelly rate coding, single-step loop",
    "stbif_multi_step": "SpikingJelly STBIFNode on our quantized ANN, multi-step",
    "stbif_single_step": "SpikingJelly STBIFNode on our quantized ANN, single-step loop",
}
OURS = ("fastsnn_default", "fastsnn_multistep", "fastsnn_streaming", "fastsnn_chunked", "fastsnn_streaming_chunked")
PEERS = ("sj_multi_step", "sj_single_step", "stbif_multi_step", "stbif_single_step")
METHODS = ("ann_quant", *OURS, "fastsnn_auto", *PEERS)


# --------------------------------------------------------------------------- models


def build_float(name: str, seed: int = 0) -> nn.Module:
    """The float ANN with random weights and non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    if name == "yolo_r34":
        from tasks.detection.yolo import YOLOv2R34

        model = YOLOv2R34(num_classes=20, width=1.0, head_channels=1024, passthrough=True, passthrough_channels=64)
    elif name == "deeplabv3":
        from tasks.segmentation.deeplab import DeepLabV3

        model = DeepLabV3(
            num_classes=21, width=1.0, output_stride=16, aspp_channels=256, atrous_rates=(6, 12, 18), stem="imagenet"
        )
    elif name == "resnet20":
        from fastsnn.backbones import create_backbone

        model = create_backbone("resnet20", num_classes=10, in_channels=3, width=1.0)
    else:
        raise ValueError(f"unknown model {name!r}")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def bits_for(T: int) -> int:
    b = (T + 1).bit_length() - 1
    if 2**b - 1 != T:
        raise ValueError(f"T must be 2**bits - 1, got {T}")
    return b


def quantized(fp: nn.Module, T: int) -> nn.Module:
    """Activations at log2(T + 1) bits (first / last layer 8), float weights (the recipes' setting)."""
    return fastsnn.quantize_model(copy.deepcopy(fp), bits_for(T), weight_bits=None, alpha_init=8.0).eval()


def methods(fp, q, T: int, x: torch.Tensor, args, device) -> dict:
    """Callable ``run(model, x)`` and model per method: ``{name: (model, run, label)}``."""
    n = x.shape[0]
    chunk = args.chunk_size
    snn = lambda **kw: fastsnn.convert_to_snn(q, timesteps=T, **kw)  # noqa: E731
    call = lambda m, inp: m(inp)  # noqa: E731
    default = snn()
    auto = snn(mode="auto", chunk_size=None)
    on_device = torch.empty(x.shape, dtype=x.dtype, device=device)
    choice = auto.planner.mode(on_device)  # the choice on this device
    # the default's mode and chunks as it plans them on this device (the meta run itself takes whole batches)
    default_mode, default_chunk = default.planner.plan(on_device)
    out = {
        "ann_quant": (frozen_ann(q), call, LABELS["ann_quant"]),
        "fastsnn_default": (default, call, LABELS["fastsnn_default"] + f" (mode={default.mode!r})"),
        "fastsnn_multistep": (snn(mode="multistep", chunk_size=None), call, LABELS["fastsnn_multistep"]),
        "fastsnn_streaming": (snn(mode="streaming", chunk_size=None), call, LABELS["fastsnn_streaming"]),
        "fastsnn_chunked": (snn(mode="multistep", chunk_size=chunk), call, LABELS["fastsnn_chunked"]),
        "fastsnn_streaming_chunked": (
            snn(mode="streaming", chunk_size=chunk),
            call,
            LABELS["fastsnn_streaming_chunked"],
        ),
        "fastsnn_auto": (snn(mode=choice, chunk_size=None), call, LABELS["fastsnn_auto"].format(choice=choice)),
    }
    for k in ("fastsnn_chunked", "fastsnn_streaming_chunked"):
        out[k] = (*out[k][:2], out[k][2].format(chunk=chunk))
    if (default.mode, default.chunk_size) != (default_mode, default_chunk):  # measured as what it chooses here
        label = f"{LABELS['fastsnn_default']} (mode={default_mode}, chunk_size={default_chunk})"
        out["fastsnn_default"] = (snn(mode=default_mode, chunk_size=default_chunk), call, label)
    if not args.no_spikingjelly and bu.spikingjelly_version() is not None:
        calib = [(torch.randn(1, *x.shape[1:]), None)]  # thresholds do not change memory: a one-image calibration
        for name, step in (("sj_multi_step", "m"), ("sj_single_step", "s")):
            out[name] = _peer(lambda step=step: bu.SpikingJellySNN(fp, calib, step_mode=step).net, _sj_runner(step, T),
                              LABELS[name])  # fmt: skip
        for name, step in (("stbif_multi_step", "m"), ("stbif_single_step", "s")):
            out[name] = _peer(lambda step=step: bu.STBIFSNN(q, timesteps=T, step_mode=step), _stbif_runner(T),
                              LABELS[name])  # fmt: skip
    del n
    return out


class Refused(Exception):
    """A peer that cannot convert or run the model (its own error message kept)."""


def _peer(build, run, label):
    """A peer's (model, run, label); a conversion the peer refuses becomes a runner raising its error."""
    try:
        return build(), run, label
    except Exception as err:  # e.g. SpikingJelly's multi-step adapters refusing a layer type
        message = f"{type(err).__name__}: {err}"

        def refused(model, x):
            raise Refused(message)

        return None, refused, label


def _sj_runner(step_mode: str, T: int):
    """SpikingJellySNN.__call__ on a given network (its meta copy or itself)."""

    def run(net, x):
        from spikingjelly.activation_based import functional

        functional.reset_net(net)
        if step_mode == "m":
            out = net(x.unsqueeze(0).expand(T, *x.shape)).mean(0)
        else:
            out = None
            for _ in range(T):
                step = net(x)
                out = step if out is None else out + step
            out = out / T
        functional.reset_net(net)
        return out

    return run


def _stbif_runner(T: int):
    def run(stbif, x):
        return stbif(x, T)

    return run


def _on_meta(model):
    """A meta-device copy of a method's model (an STBIFSNN: its network, the wrapper kept)."""
    if model is None:  # refused: its runner raises
        return None
    if isinstance(model, bu.STBIFSNN):
        twin = copy.copy(model)
        twin.net = meta_copy(model.net)
        twin.neurons = [m for m in twin.net.modules() if isinstance(m, bu._TimeFoldedNeuron)]
        twin.device = torch.device("meta")
        return twin
    return meta_copy(model)


# --------------------------------------------------------------------------- measuring


def meta_peak(model, run, x: torch.Tensor) -> int:
    """Peak tensor bytes of ``run(model, x)``, counted on the meta device."""
    twin = _on_meta(model)
    inp = torch.empty(x.shape, dtype=x.dtype, device="meta")
    with torch.no_grad(), AllocationTracker() as tracker:
        out = run(twin, inp)
        del out
    return tracker.peak


def real_peak_and_time(model, run, x: torch.Tensor) -> tuple[int, float]:
    with torch.no_grad():
        run(model, x)  # warm-up
        t0 = time.perf_counter()
        run(model, x)
        seconds = time.perf_counter() - t0
        peak = bu.peak_memory_bytes(lambda: run(model, x), torch.device("cpu"))
    return peak, seconds


def neuron_state_bytes(snn, x: torch.Tensor) -> dict:
    """Per-sample neurons of an SNN and the bytes of its streaming state (membrane float32 + int8 count)."""
    twin = meta_copy(snn)
    sizes = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: sizes.append(out[0].numel()))
        for m in twin.modules()
        if isinstance(m, IFNeuron)
    ]
    twin.mode = "multistep"
    with torch.no_grad():
        twin(torch.empty(x.shape, device="meta"))
    for h in hooks:
        h.remove()
    neurons = sum(sizes)  # one step of the whole batch
    per_neuron = 4 + (1 if snn.signed else 0)
    return {
        "neurons_per_sample": neurons // x.shape[0],
        "state_bytes": neurons * per_neuron,
        "bytes_per_neuron": per_neuron,
    }


# --------------------------------------------------------------------------- the benchmark


def measure_model(name: str, size: int, batch: int, timesteps, args, log) -> list[dict]:
    fp = build_float(name, args.seed)
    x = torch.randn(batch, 3, size, size)
    rows = []
    ann_done = False
    for T in timesteps:
        q = quantized(fp, T)
        for method, (model, run, label) in methods(fp, q, T, x, args, torch.device("cpu")).items():
            if method == "ann_quant" and ann_done:
                continue
            t0 = time.perf_counter()
            try:
                peak = meta_peak(model, run, x)
                error = None
            except Exception as err:  # report, do not hide
                peak, error = None, f"{type(err).__name__}: {err}"
            row = {
                "model": name,
                "size": size,
                "batch": batch,
                "method": method,
                "label": label,
                "T": None if method == "ann_quant" else T,
                "peak_mib": None if peak is None else peak / 2**20,
                "how": "meta-device allocation count",
            }
            if error:
                row["error"] = error[:300]
            rows.append(row)
            ann_done = ann_done or method == "ann_quant"
            peak_s = "failed: " + error if error else f"{peak / 2**20:.0f} MiB"
            log(f"{name} {size}px b{batch} T={T} {method}: {peak_s} ({time.perf_counter() - t0:.1f} s)")
        if name == "resnet20":
            rows.append({"model": name, "size": size, "batch": batch, "method": "neuron_state", "T": T,
                         **neuron_state_bytes(fastsnn.convert_to_snn(q, timesteps=T), x)})  # fmt: skip
    return rows


def validate(name: str, size: int, batch: int, T: int, args, log) -> list[dict]:
    """Meta count vs a real CPU run (profiler allocation events) for every method, small inputs."""
    fp = build_float(name, args.seed)
    x = torch.randn(batch, 3, size, size)
    q = quantized(fp, T)
    rows = []
    for method, (model, run, label) in methods(fp, q, T, x, args, torch.device("cpu")).items():
        try:
            counted = meta_peak(model, run, x)
            measured, seconds = real_peak_and_time(model, run, x)
        except Refused as err:
            rows.append({"model": name, "size": size, "batch": batch, "T": T, "method": method, "label": label,
                         "error": str(err)[:300]})  # fmt: skip
            log(f"validate {name} {size}px T={T} {method}: refused ({err})")
            continue
        rows.append(
            {
                "model": name,
                "size": size,
                "batch": batch,
                "T": T,
                "method": method,
                "label": label,
                "meta_mib": counted / 2**20,
                "measured_mib": measured / 2**20,
                "ratio": counted / measured if measured else float("nan"),
                "seconds": seconds,
                "load_1min": bu.load_average(),
            }
        )
        log(f"validate {name} {size}px T={T} {method}: meta {counted / 2**20:.1f} MiB, real {measured / 2**20:.1f} "
            f"MiB, {seconds:.2f} s")  # fmt: skip
    return rows


def targets(rows: list[dict], args) -> list[dict]:
    def get(model, method, T=None):
        r = next((r for r in rows if r["model"] == model and r["method"] == method and r["T"] == T), None)
        return None if r is None else r.get("peak_mib")

    out = []
    for model in ("yolo_r34", "deeplabv3"):
        ann = get(model, "ann_quant")
        for method, what in (("fastsnn_default", "our default"), ("fastsnn_chunked", f"chunk_size={args.chunk_size}")):
            ours = get(model, method, 15)
            if ann and ours:
                out.append(_target(f"{model} T=15: {what}'s peak <= 2 x quantized ANN", ours / ann, 2.0,
                                   f"{ours:.0f} MiB vs {ann:.0f} MiB"))  # fmt: skip
            for peer in ("sj_multi_step", "stbif_multi_step"):  # rate coding when SpikingJelly converts the model
                sj = get(model, peer, 15)
                if sj and ours:
                    out.append(_target(f"{model} T=15: {what}'s peak <= 1/4 of {LABELS[peer]}", ours / sj, 0.25,
                                       f"{ours:.0f} MiB vs {sj:.0f} MiB"))  # fmt: skip
    for T in args.timesteps:
        ann, stream = get("resnet20", "ann_quant"), get("resnet20", "fastsnn_streaming", T)
        chunked = get("resnet20", "fastsnn_streaming_chunked", T)
        if ann and stream:
            out.append(_target(f"resnet20 T={T}: streaming peak <= 2 x quantized ANN", stream / ann, 2.0,
                               f"{stream:.1f} MiB vs {ann:.1f} MiB"))  # fmt: skip
        if ann and chunked:
            out.append(_target(f"resnet20 T={T}: streaming with chunk_size={args.resnet_chunk} <= 2 x quantized ANN",
                               chunked / ann, 2.0, f"{chunked:.1f} MiB vs {ann:.1f} MiB"))  # fmt: skip
    return out


def _target(name, value, limit, note) -> dict:
    return {"target": name, "value": value, "limit": limit, "met": value <= limit, "note": note}


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"### Peak memory at detection and segmentation sizes ({result['device_label']})",
        "",
        "Peak tensor memory of one batch, counted on the meta device (`fastsnn.planner.estimate.AllocationTracker`: "
        "every storage an operation creates, until its last tensor is collected; no run needs the memory, so "
        "methods that would not fit this machine are counted too). Random weights, float weights with "
        "3-bit (T = 7) / 4-bit (T = 15) activations. The validation table below compares the count with real "
        f"CPU runs. Load average (1 min): {result['load']['start']:.2f} at start, {result['load']['end']:.2f} "
        f"at the end; torch {result['environment']['torch']}, SpikingJelly {result['environment']['spikingjelly']}.",
        "",
        "| model | input | batch | method | T | peak MiB | x quantized ANN |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = result["rows"]
    for r in rows:
        if r["method"] == "neuron_state":
            continue
        ann = next((a["peak_mib"] for a in rows if a["model"] == r["model"] and a["method"] == "ann_quant"), None)
        peak = r.get("peak_mib")
        ratio = f"{peak / ann:.2f}" if peak and ann else "-"
        peak_s = f"{peak:,.0f}" if peak and peak >= 100 else (f"{peak:.1f}" if peak else f"failed ({r.get('error')})")
        lines.append(
            f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {r['label']} | {r['T'] or '-'} "
            f"| {peak_s} | {ratio} |"
        )
    states = [r for r in rows if r["method"] == "neuron_state"]
    for s in states:
        lines += [
            "",
            f"ResNet-20 ({s['size']} px, batch {s['batch']}, T={s['T']}): {s['neurons_per_sample']:,} neurons per "
            f"sample; the streaming state (membrane float32 + signed count int8, {s['bytes_per_neuron']} bytes per "
            f"neuron) is {s['state_bytes'] / 2**20:.1f} MiB of the batch.",
        ]
    if result["targets"]:
        lines += ["", "### Targets", "", "| target | value | met |", "|---|---|---|"]
        for t in result["targets"]:
            lines.append(f"| {t['target']} | {t['value']:.2f} ({t['note']}) | {'yes' if t['met'] else 'no'} |")
    if result["validation"]:
        lines += [
            "",
            "### Validation: meta-device count vs real CPU runs (small inputs)",
            "",
            "Real: the CPU allocator's high-water mark from `torch.profiler` memory events "
            "(`bench_utils.peak_memory_bytes`), 1 thread. Times: one run each, **measured under load** "
            "(the load average in the JSON); not a speed comparison. Where real exceeds meta by a fixed amount "
            "(multi-step passes of the wide models), the difference is oneDNN's reordered copy of a conv weight "
            "for batches > 1, which the meta device does not make: at most the largest weight "
            f"({_largest(result)}), independent of batch and T, so it matters at these small sizes only.",
            "",
            "| model | input | batch | T | method | meta MiB | real MiB | meta / real | s (under load) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["validation"]:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {r['T']} | {r['label']} "
                             f"| refused: {r['error']} | | | |")  # fmt: skip
                continue
            lines.append(
                f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {r['T']} | {r['label']} "
                f"| {r['meta_mib']:.1f} | {r['measured_mib']:.1f} | {r['ratio']:.2f} | {r['seconds']:.2f} |"
            )
    lines += ["", f"Command: `{result['command']}` ({cfg['seconds']:.0f} s)"]
    return "\n".join(lines)


def largest_weight_mib(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)]
    return max(w.numel() * w.element_size() for w in weights) / 2**20


def _largest(result: dict) -> str:
    sizes = result.get("largest_weight_mib", {})
    return ", ".join(f"{k} {v:.1f} MiB" for k, v in sizes.items()) or "not recorded"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller inputs (yolo 128, deeplab 129, T = 7)")
    p.add_argument("--models", nargs="+", default=["yolo_r34", "deeplabv3", "resnet20"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--timesteps", nargs="+", type=int, default=None, help="default 7 15 (quick: 7)")
    p.add_argument("--chunk-size", type=int, default=1, help="chunk_size of the chunked variants")
    p.add_argument("--resnet-batch", type=int, default=64)
    p.add_argument("--resnet-chunk", type=int, default=32, help="chunk_size of ResNet-20's chunked variants")
    p.add_argument("--no-validate", action="store_true", help="skip the real-run validation")
    p.add_argument("--validate-size", type=int, default=96)
    p.add_argument("--no-spikingjelly", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--name", default=None, help="output stem (default memory_large / memory_large_quick)")
    args = p.parse_args(argv)
    args.timesteps = args.timesteps or ([7] if args.quick else [7, 15])
    args.name = args.name or ("memory_large_quick" if args.quick else "memory_large")
    return args


SIZES = {"yolo_r34": (416, 128), "deeplabv3": (513, 129), "resnet20": (32, 32)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.getLogger("fastsnn").setLevel(logging.WARNING)  # mode='auto' choices: recorded in the rows
    log = bu.log
    start, load_start = time.perf_counter(), bu.load_average()
    rows, checks = [], []
    for name in args.models:
        full, quick = SIZES[name]
        size = quick if args.quick else full
        resnet = name == "resnet20"
        chunk = args.chunk_size
        if resnet:
            args.chunk_size = args.resnet_chunk
        rows += measure_model(name, size, args.resnet_batch if resnet else args.batch, args.timesteps, args, log)
        if not args.no_validate:
            vsize, vbatch = (32, args.resnet_batch) if resnet else (args.validate_size, 1)
            checks += validate(name, vsize, vbatch, 3, args, log)
        args.chunk_size = chunk
    result = {
        "benchmark": "memory_large",
        "command": bu.command_line(),
        "device_label": bu.device_label(torch.device("cpu")) + ", memory counted on the meta device",
        "config": {k: v for k, v in vars(args).items()} | {"seconds": time.perf_counter() - start},
        "environment": bu.environment("cpu"),
        "load": {"start": load_start, "end": bu.load_average()},
        "rows": rows,
        "validation": checks,
        "largest_weight_mib": {name: largest_weight_mib(build_float(name, args.seed)) for name in args.models},
    }
    result["targets"] = targets(rows, args)
    bu.write_results(args.name, result, markdown(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
