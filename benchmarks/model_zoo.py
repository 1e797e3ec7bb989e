"""Model zoo: every torchvision classification model through quantize -> calibrate -> convert.

For each builder of ``torchvision.models`` (random weights, no download), as a user would:

1. ``quantize_model(model, bits)``; if the converter refuses it because of max pooling between
   spiking layers, again with ``quantize_model(model, bits, max_pool="avg")``. The row says
   whether the model converts *as-is*, *with max_pool='avg'*, or is *refused* (the converter's
   reason);
2. a short calibration on random data, so that the random network is not trivial: batch-norm
   statistics from a few forward passes in train mode (float ReLUs), then every clip
   ``alpha`` set to a high percentile of its input, layer after layer;
3. ``convert_to_snn`` at ``T = 2**bits - 1`` and, on a random batch: the number of spiking
   layers; streaming vs multi-step simulation (max abs difference of the outputs); the SNN's
   agreement with the quantized ANN (top-1 agreement, relative L2 error of the outputs); the
   SNN's time over the quantized ANN's (one multi-step batch vs one ANN batch).

Writes ``benchmarks/results/model_zoo.{json,md}`` (``model_zoo_quick`` with ``--quick``) after
every model, so a long run leaves its results so far.

    python benchmarks/model_zoo.py                          # every model
    python benchmarks/model_zoo.py --quick                  # one small model per family
    python benchmarks/model_zoo.py --models resnet18,vgg11_bn
    python benchmarks/model_zoo.py --families resnet,densenet --image-size 32
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torchvision
from torch import nn

import fastsnn
from benchmarks import bench_utils as bu
from fastsnn import ConversionError, QuantReLU

# longest prefix first: "resnext" before "resnet", "swin_v2" before "swin"
FAMILIES = (
    "wide_resnet",
    "resnext",
    "resnet",
    "vgg",
    "alexnet",
    "squeezenet",
    "densenet",
    "googlenet",
    "inception",
    "mobilenet_v2",
    "mobilenet_v3",
    "mnasnet",
    "shufflenet_v2",
    "regnet_x",
    "regnet_y",
    "efficientnet_v2",
    "efficientnet",
    "convnext",
    "vit",
    "swin_v2",
    "swin",
    "maxvit",
)
QUICK = (
    "resnet18",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "vgg11_bn",
    "alexnet",
    "squeezenet1_1",
    "densenet121",
    "googlenet",
    "inception_v3",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mnasnet0_5",
    "shufflenet_v2_x0_5",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "convnext_tiny",
    "vit_b_32",
    "swin_t",
    "swin_v2_t",
    "maxvit_t",
)
# builders whose defaults add auxiliary heads or warn about their initialisation
BUILDER_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
MIN_IMAGE_SIZE = {"inception_v3": 75}  # torchvision's documented minimum
AS_IS, WITH_AVG = "as-is", "max_pool='avg'"


def family(name: str) -> str:
    return next((f for f in FAMILIES if name.startswith(f)), name.split("_")[0])


def build(name: str, num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **BUILDER_KWARGS.get(name, {}))


def quantize_and_convert(name: str, args) -> tuple[str, nn.Module | None, list[str], str | None]:
    """(status, quantized model or None, activations left alone, refusal reason)."""
    attempts = [(AS_IS, None), (WITH_AVG, "avg")]
    reason = None
    for status, max_pool in attempts:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            net = build(name, args.num_classes, args.seed)
            # clips start at 8.0 (quantize_model's default before it became 2.0), as in results/model_zoo.md
            qmodel = fastsnn.quantize_model(net, args.bits, alpha_init=8.0, max_pool=max_pool)
        left_alone = sorted(
            {
                a.strip()
                for w in caught
                if "left these activations" in str(w.message)
                for a in str(w.message).split(": ", 1)[1].split(".")[0].split(",")
            }
        )
        try:
            fastsnn.convert_to_snn(qmodel.eval())  # structure only: refusals come before any run
            return status, qmodel, left_alone, None
        except ConversionError as err:
            reason = str(err)
            if "max pooling" not in reason:
                break  # average pooling would not help
        del qmodel
    return "refused", None, left_alone, reason


@torch.no_grad()
def calibrate(qmodel: nn.Module, size: int, batch: int, passes: int, percentile: float, seed: int) -> None:
    """Batch-norm statistics and clips from random data, so that the random network is not trivial."""
    g = torch.Generator().manual_seed(seed)
    relus = [m for m in qmodel.modules() if isinstance(m, QuantReLU)]
    bits = [m.bits for m in relus]
    for m in relus:  # float ReLUs while the statistics are gathered
        m.bits = None
        m.alpha.fill_(1e6)
    for m in qmodel.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes
    qmodel.train()
    for _ in range(passes):
        qmodel(torch.randn(batch, 3, size, size, generator=g))
    qmodel.eval()

    def set_clip(module, inputs):  # in forward order, each clip sees the clipped layers before it
        x = inputs[0].detach().flatten()
        positive = x[x > 0]
        if positive.numel():
            q = torch.quantile(positive[: 1 << 20].float(), percentile / 100)
            module.alpha.fill_(max(float(q), 1e-3))

    hooks = [m.register_forward_pre_hook(set_clip) for m in relus]
    qmodel(torch.randn(batch, 3, size, size, generator=g))
    for h in hooks:
        h.remove()
    for m, b in zip(relus, bits):
        m.bits = b


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@torch.no_grad()
def measure(qmodel: nn.Module, size: int, args) -> dict:
    snn = fastsnn.convert_to_snn(qmodel.eval())
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.batch, 3, size, size, generator=g)
    q = qmodel(x)
    spikes: dict[str, list[torch.Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: spikes.setdefault(n, []).append(o != 0)) for n, m in snn.neurons()
    ]
    out = snn(x)
    multi, spikes = spikes, {}
    snn.mode = "streaming"
    streamed = snn(x)
    snn.mode = "multistep"
    for h in hooks:
        h.remove()
    # the two modes compute the same sums in another order (T*N vs N samples per conv call): a
    # membrane within float rounding of the threshold can fire in one and not the other
    flips = sum(int((multi[n][0] != torch.stack(spikes[n]).flatten(0, 1)).sum()) for n in multi)
    events = sum(multi[n][0].numel() for n in multi)
    diff64 = None
    if float((streamed - out).abs().max()) > 1e-4:  # the same comparison in float64: no near-ties left
        snn64 = fastsnn.convert_to_snn(copy.deepcopy(qmodel).double().eval())
        out64 = snn64(x.double())
        snn64.mode = "streaming"
        diff64 = float((snn64(x.double()) - out64).abs().max())
        del snn64
    ann_s = best_time(lambda: qmodel(x), args.repeats)
    snn_s = best_time(lambda: snn(x), args.repeats)
    return {
        "spiking_layers": len(snn.layers),
        "timesteps": snn.timesteps,
        "streaming_max_abs_diff": float((streamed - out).abs().max()),
        "streaming_spike_mismatches": flips,
        "neuron_steps": events,
        "streaming_max_abs_diff_float64": diff64,
        "top1_agreement": float((out.argmax(1) == q.argmax(1)).float().mean()),
        "relative_error": float((out - q).norm() / q.norm().clamp_min(1e-12)),
        "ann_output_std": float(q.std()),
        "ann_time_s": ann_s,
        "snn_time_s": snn_s,
        "time_ratio": snn_s / ann_s,
    }


def run_model(name: str, args) -> dict:
    start = time.perf_counter()
    row = {"model": name, "family": family(name)}
    size = max(args.image_size, MIN_IMAGE_SIZE.get(name, 0))
    try:
        status, qmodel, left_alone, reason = quantize_and_convert(name, args)
        row.update(status=status, left_alone=left_alone, reason=reason, image_size=size)
        if qmodel is not None:
            row["params_m"] = sum(p.numel() for p in qmodel.parameters()) / 1e6
            calibrate(qmodel, size, args.calibration_batch, args.calibration_passes, args.percentile, args.seed)
            row.update(measure(qmodel, size, args))
            del qmodel
    except Exception as err:  # a model that breaks the script (not a refusal): reported, the run goes on
        row.update(status="error", reason=f"{type(err).__name__}: {err}")
    gc.collect()
    row["wall_s"] = time.perf_counter() - start
    return row


def short_reason(reason: str | None, limit: int = 160) -> str:
    if not reason:
        return ""
    reason = reason.replace("|", "/").replace("\n", " ")
    return reason if len(reason) <= limit else reason[: limit - 3].rstrip() + "..."


def markdown(result: dict) -> str:
    rows = result["models"]
    counts = {s: sum(r["status"] == s for r in rows) for s in (AS_IS, WITH_AVG, "refused", "error")}
    cfg = result["config"]
    lines = [
        "# Model zoo: torchvision classification models through quantize -> convert",
        "",
        f"Random weights (no download), {cfg['bits']}-bit activations, T = {2 ** cfg['bits'] - 1}, input "
        f"{cfg['image_size']} px (or the model's minimum), batch {cfg['batch']} of random images; batch-norm "
        f"statistics and clips calibrated on {cfg['calibration_passes']} random batches. {result['device']}. "
        f"{len(rows)} models in {result['wall_s'] / 60:.1f} min: {counts[AS_IS]} convert as-is, "
        f"{counts[WITH_AVG]} with max_pool='avg', {counts['refused']} refused"
        + (f", {counts['error']} errors" if counts["error"] else "")
        + ".",
        "",
        "Agreement: top-1 agreement of the SNN's and the quantized ANN's outputs and their relative L2 error "
        "on the batch. Random networks have no margin between classes, so these show how much error "
        "accumulates over depth, not a trained model's accuracy (see the fidelity benchmark for that). "
        "Time: one multi-step SNN batch over one quantized-ANN batch (best of "
        f"{cfg['repeats']}).",
        "",
        "Streaming vs multi-step: the max abs difference of the outputs and the number of neuron steps "
        "(of all) whose spike differs. The two modes sum the same terms in another order (a conv on T*N "
        "samples at once or on N per step); a membrane within float rounding of the threshold can fire in "
        "one and not the other, and such a spike changes the outputs after it. Where they differ, the same "
        "comparison in float64 is shown.",
        "",
        "| model | converts | spiking layers | streaming vs multi-step: max abs diff (spikes differing) "
        "| top-1 agreement | relative error | SNN time / ANN time | reason (refused) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] in (AS_IS, WITH_AVG):
            lines.append(
                f"| {r['model']} | {r['status']} | {r['spiking_layers']} | {r['streaming_max_abs_diff']:.1e} "
                f"({r['streaming_spike_mismatches']} of {r['neuron_steps']:.1e}"
                + (
                    f"; float64: {r['streaming_max_abs_diff_float64']:.1e}"
                    if r.get("streaming_max_abs_diff_float64") is not None
                    else ""
                )
                + ") "
                f"| {r['top1_agreement']:.2f} | {r['relative_error']:.3f} | {r['time_ratio']:.1f}x | |"
            )
        else:
            lines.append(f"| {r['model']} | {r['status']} | | | | | | {short_reason(r['reason'])} |")
    lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=None, help="comma-separated builder names (default: all)")
    p.add_argument("--families", default=None, help="comma-separated families (resnet, vgg, densenet, ...)")
    p.add_argument("--quick", action="store_true", help="one small model per family")
    p.add_argument("--bits", type=int, default=2, help="activation bits (T = 2^bits - 1)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="images in the measured batch")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--calibration-batch", type=int, default=8)
    p.add_argument("--calibration-passes", type=int, default=3)
    p.add_argument("--percentile", type=float, default=99.0, help="clip = this percentile of a layer's input")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per model (best kept)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results/")
    p.add_argument("--name", default=None, help="output file stem (default model_zoo / model_zoo_quick)")
    args = p.parse_args(argv)
    if args.name is None:
        args.name = "model_zoo_quick" if args.quick else "model_zoo"
    return args


def select(args) -> list[str]:
    names = torchvision.models.list_models(module=torchvision.models)
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"unknown models {unknown}; known: {', '.join(names)}")
        names = wanted
    if args.families:
        fams = {f.strip() for f in args.families.split(",")}
        names = [n for n in names if family(n) in fams]
    if args.quick:
        names = [n for n in names if n in QUICK]
    return names


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    names = select(args)
    start = time.perf_counter()
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": bu.environment("cpu"),
        "device": bu.device_label("cpu"),
        "command": bu.command_line(),
        "models": [],
    }
    for i, name in enumerate(names):
        bu.log(f"[{i + 1}/{len(names)}] {name}")
        row = run_model(name, args)
        bu.log(f"    {row['status']} ({row['wall_s']:.1f} s) {short_reason(row.get('reason'), 120)}")
        result["models"].append(row)
        result["wall_s"] = time.perf_counter() - start
        if i + 1 < len(names):  # the results so far, quietly
            with contextlib.redirect_stdout(io.StringIO()):
                bu.write_results(args.name, result, markdown(result), args.out_dir)
    result["wall_s"] = time.perf_counter() - start
    bu.write_results(args.name, result, markdown(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
