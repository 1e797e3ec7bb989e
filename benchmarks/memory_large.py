"""Peak memory of SNN inference at detection and segmentation sizes, and ResNet-20's.

The networks of three ``run.py`` recipes, read from their configs with random weights (memory
does not depend on them), quantized as the recipe quantizes them at log2(T + 1) bits, at the
recipe's input size: YOLOv2 on ResNet-34 (``voc_yolo_r34``), DeepLab-v3 (``voc_deeplabv3``) and
ResNet-20 (``cifar10_resnet20``).

Methods at each T: the quantized ANN (weights frozen, batch norm folded); our default
``convert_to_snn(q)`` (as it plans on this device); ``mode="multistep"``; ``mode="streaming"``;
both with ``chunk_size``; ``mode="auto"`` (its choice); SpikingJelly's rate coding of the float
ANN and its ``STBIFNode`` on our quantized ANN, multi-step and single-step (``fastsnn.peers.spikingjelly``;
a model a peer refuses gets the peer's error).

How: at these sizes some methods need tens of GiB, so every method runs on the meta device
(shapes only, nothing allocated) under ``fastsnn.planner.estimate.AllocationTracker``, which counts
the bytes of every tensor storage until its last tensor is collected: the high-water mark of
tensor memory a real run allocates. The validation (``--no-validate`` skips it) checks the count
against real runs (``benchmarks.measure.peak_memory_bytes``) of every method at a small size.

    python -m benchmarks.memory_large            # the recipes' sizes, T = 7 15, and the validation
    python -m benchmarks.memory_large --quick    # inputs of at most 128 px, T = 7
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

import fastsnn
from benchmarks import cli
from benchmarks.measure import peak_memory_bytes, timed_call
from benchmarks.models import bits_for, recipe
from benchmarks.record import record, section, target
from fastsnn.convert import frozen_ann
from fastsnn.neuron import IFNeuron
from fastsnn.peers import spikingjelly as peers
from fastsnn.planner.estimate import AllocationTracker, meta_copy

PEERS = ("sj_multi_step", "sj_single_step", "stbif_multi_step", "stbif_single_step")
RECIPES = {  # this benchmark's batch and chunk_size per recipe, the methods its targets judge, and against what
    "voc_yolo_r34": dict(batch=4, chunk=1, judged=("fastsnn_default", "fastsnn_chunked"), vs_peers=True),
    "voc_deeplabv3": dict(batch=4, chunk=1, judged=("fastsnn_default", "fastsnn_chunked"), vs_peers=True),
    "cifar10_resnet20": dict(
        batch=64, chunk=32, judged=("fastsnn_streaming", "fastsnn_streaming_chunked"), vs_peers=False
    ),
}


class Refused:
    """A peer that cannot convert the model, with the peer's own error."""

    def __init__(self, err: Exception):
        self.message = f"Refused: {type(err).__name__}: {err}"[:300]


def _peer(build, *args, **kwargs):
    try:
        return build(*args, **kwargs)
    except Exception as err:  # e.g. SpikingJelly's multi-step adapters refusing a layer type
        return Refused(err)


def methods(fp: nn.Module, q: nn.Module, T: int, x: torch.Tensor, chunk: int, args) -> dict:
    """``{name: (model, label)}``; each model runs as ``model(x)`` (ours) or ``model(x, T)`` (peers)."""
    snn = lambda mode, chunk_size: fastsnn.convert_to_snn(q, timesteps=T, mode=mode, chunk_size=chunk_size)  # noqa: E731
    planned = fastsnn.convert_to_snn(q, timesteps=T).planner.plan(x)  # what the default chooses for this input
    auto = snn("auto", None).planner.mode(x)
    settings = {"fastsnn_default": planned, "fastsnn_multistep": ("multistep", None), "fastsnn_auto": (auto, None)}
    settings |= {"fastsnn_streaming": ("streaming", None), "fastsnn_chunked": ("multistep", chunk)}
    settings["fastsnn_streaming_chunked"] = ("streaming", chunk)
    out = {"ann_quant": (frozen_ann(q), "quantized ANN")}
    out |= {name: (snn(*s), f"mode={s[0]}, chunk_size={s[1]}") for name, s in settings.items()}
    calib = [(torch.randn(1, *x.shape[1:]), None)]  # thresholds do not change memory: one image
    for name in PEERS if args.spikingjelly else ():
        step = "m" if name.endswith("multi_step") else "s"
        if name.startswith("sj"):
            out[name] = (_peer(peers.SpikingJellySNN, fp, calib, step_mode=step), f"rate coding, {step}")
        else:
            out[name] = (_peer(peers.STBIFSNN, q, timesteps=T, step_mode=step), f"STBIFNode, {step}")
    return out


def _run(model, x: torch.Tensor, T: int):
    return model(x) if isinstance(model, nn.Module) else model(x, T)


def _on_meta(model):
    """A meta-device copy of a method's model (a peer: its wrapper, with its network on meta)."""
    if isinstance(model, nn.Module):
        return meta_copy(model)
    twin = copy.copy(model)
    twin.net, twin.device = meta_copy(model.net), torch.device("meta")
    if isinstance(model, peers.STBIFSNN):
        twin.neurons = [m for m in twin.net.modules() if isinstance(m, peers.TimeFoldedNeuron)]
    return twin


@torch.no_grad()
def meta_peak(model, x: torch.Tensor, T: int) -> int:
    """Peak tensor bytes of one run, counted on the meta device."""
    twin, inp = _on_meta(model), torch.empty(x.shape, dtype=x.dtype, device="meta")
    with AllocationTracker() as tracker:
        out = _run(twin, inp, T)
        del out
    return tracker.peak


@torch.no_grad()
def neuron_state(snn, x: torch.Tensor) -> dict:
    """Neurons per sample, and the bytes of the streaming state (float32 membrane + int8 count)."""
    twin, sizes = meta_copy(snn), []
    hooks = [
        m.register_forward_hook(lambda m, i, o: sizes.append(o[0].numel()))
        for m in twin.modules()
        if isinstance(m, IFNeuron)
    ]
    twin.mode = "multistep"
    twin(torch.empty(x.shape, device="meta"))
    for h in hooks:
        h.remove()
    per_neuron = 4 + (1 if snn.signed else 0)
    return {"neurons_per_sample": sum(sizes) // x.shape[0], "state_mib": sum(sizes) * per_neuron / 2**20}


def measure_recipe(name: str, args) -> list[dict]:
    """Meta-device peaks of every method at every T, at the recipe's (or --quick's) size."""
    fp, quantize, size = recipe(name)
    size = min(size, 128) if args.quick else size
    batch, chunk = RECIPES[name]["batch"], RECIPES[name]["chunk"]
    x, rows = torch.randn(batch, 3, size, size), []
    for T in args.timesteps:
        q = quantize(copy.deepcopy(fp), bits=bits_for(T)).eval()
        for method, (model, label) in methods(fp, q, T, x, chunk, args).items():
            if method == "ann_quant" and T != args.timesteps[0]:
                continue
            row = {"recipe": name, "size": size, "batch": batch, "method": method, "label": label}
            row["T"] = None if method == "ann_quant" else T
            try:
                if isinstance(model, Refused):
                    row["peak_mib"], row["error"] = None, model.message
                else:
                    row["peak_mib"] = meta_peak(model, x, T) / 2**20
            except Exception as err:  # recorded, not hidden
                row["peak_mib"], row["error"] = None, f"{type(err).__name__}: {err}"[:300]
            rows.append(row)
            cli.log(f"{name} {size}px T={T} {method}: {row['peak_mib'] or row.get('error')}")
        rows.append(
            {"recipe": name, "size": size, "batch": batch, "method": "neuron_state", "T": T}
            | neuron_state(fastsnn.convert_to_snn(q, timesteps=T), x)
        )
    return rows


def validate(name: str, args, T: int = 3) -> list[dict]:
    """The meta count against a real run of every method (small input), and the run's seconds."""
    fp, quantize, size = recipe(name)
    batch = RECIPES[name]["batch"] if size <= 32 else 1  # a small network at its own size, a large one at one image
    size = min(size, args.validate_size)
    x = torch.randn(batch, 3, size, size)
    q, rows = quantize(copy.deepcopy(fp), bits=bits_for(T)).eval(), []
    for method, (model, label) in methods(fp, q, T, x, RECIPES[name]["chunk"], args).items():
        row = {"recipe": name, "size": size, "batch": batch, "T": T, "method": method, "label": label}
        if isinstance(model, Refused):
            rows.append(row | {"error": model.message})
            continue
        with torch.no_grad():
            run = lambda model=model: _run(model, x, T)  # noqa: E731
            seconds = min(timed_call(run, torch.device("cpu")) for _ in range(2))  # warm-up, then timed
            measured = peak_memory_bytes(run, torch.device("cpu"))
        counted = meta_peak(model, x, T)
        rows.append(
            row
            | {
                "meta_mib": counted / 2**20,
                "measured_mib": measured / 2**20,
                "seconds": seconds,
                "ratio": counted / measured if measured else float("nan"),
            }
        )
        cli.log(f"validate {name} {size}px {method}: meta {counted / 2**20:.1f} MiB, real {measured / 2**20:.1f} MiB")
    return rows


def targets(rows: list[dict], args) -> list[dict]:
    """At the largest T: the judged methods' peak <= 2 x the quantized ANN's and, for the large
    networks, <= 1/4 of each multi-step peer's that has a figure."""
    T, out = max(args.timesteps), []
    peak = {(r["recipe"], r["method"], r["T"]): r.get("peak_mib") for r in rows}
    for name in args.recipes:
        ann = peak.get((name, "ann_quant", None))
        for method in RECIPES[name]["judged"]:
            if not (ours := peak.get((name, method, T))) or not ann:
                continue
            out.append(target(f"{name} T={T}: {method} <= 2 x quantized ANN", ours / ann, 2.0))
            for peer in ("sj_multi_step", "stbif_multi_step") if RECIPES[name]["vs_peers"] else ():
                if theirs := peak.get((name, peer, T)):
                    out.append(target(f"{name} T={T}: {method} <= 1/4 of {peer}", ours / theirs, 0.25))
    return out


def markdown(rows: list[dict], checks: list[dict]) -> str:
    ann = {r["recipe"]: r.get("peak_mib") for r in rows if r["method"] == "ann_quant"}
    for r in rows:
        r["x_quant_ann"] = r["peak_mib"] / ann[r["recipe"]] if r.get("peak_mib") and ann[r["recipe"]] else None
    peaks = [r for r in rows if r["method"] != "neuron_state"]
    note = (
        "Peak tensor memory of one batch, counted on the meta device; SpikingJelly's settings: m(ulti) / s(ingle) step."
    )
    keys = ["recipe", "size", "batch", "method", "label", "T", "peak_mib", "x_quant_ann", "error"]
    lines = section("Peak memory at detection and segmentation sizes", note, peaks, keys)
    note = "Neurons per sample and the streaming state of the batch (float32 membrane + int8 count per neuron)."
    lines += section(
        "Streaming state",
        note,
        [r for r in rows if r["method"] == "neuron_state"],
        ["recipe", "size", "batch", "T", "neurons_per_sample", "state_mib"],
    )
    note = "The meta-device count against real CPU runs at small inputs (`peak_memory_bytes`), and their seconds."
    keys = ["recipe", "size", "batch", "T", "method", "meta_mib", "measured_mib", "ratio", "seconds", "error"]
    return "\n".join(lines + section("Validation: the count against real runs", note, checks, keys))


def parse_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--timesteps", nargs="+", type=int, default=None, help="T = 2**b - 1 (default 7 15, quick 7)")
    p.add_argument("--no-validate", action="store_true", help="skip the real-run validation")
    p.add_argument("--validate-size", type=int, default=96, help="input size of the validation runs")
    p.add_argument("--no-spikingjelly", action="store_true", help="skip SpikingJelly even when installed")
    args = cli.parse(p, argv, "memory_large")
    if args.device not in ("auto", "cpu"):
        p.error("memory_large counts on the meta device and checks the counts on the CPU: leave --device out")
    args.device = "cpu"
    args.timesteps = args.timesteps or ([7] if args.quick else [7, 15])
    args.spikingjelly = not args.no_spikingjelly and peers.spikingjelly_version() is not None
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.getLogger("fastsnn").setLevel(logging.WARNING)  # the planner's choices are in the labels
    with cli.measuring(args) as measurement:
        rows = [row for name in args.recipes for row in measure_recipe(name, args)]
        checks = [] if args.no_validate else [row for name in args.recipes for row in validate(name, args)]
    text = markdown(rows, checks)
    return record(args, measurement, {"rows": rows, "validation": checks, "targets": targets(rows, args)}, text)


if __name__ == "__main__":
    main()
