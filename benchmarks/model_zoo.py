"""Model zoo: which torchvision classification models go through quantize -> calibrate -> convert.

For each builder of ``torchvision.models`` (random weights, no download), as a user would:

1. ``quantize_model(model, bits)``; when the converter refuses it for max pooling between spiking
   layers, again with ``max_pool="avg"``: the model converts *as-is*, *with max_pool='avg'*, or is
   *refused* (the converter's reason);
2. a short calibration on random data, so that the random network is not trivial: batch-norm
   statistics from a few passes in train mode (float ReLUs), then every clip set to a high
   percentile of its input, layer after layer;
3. ``convert_to_snn`` at T = 2**bits - 1 and, on a random batch: the spiking layers; streaming
   against multi-step (max abs difference, spikes that differ); the SNN's agreement with the
   quantized ANN (top-1 agreement, relative L2 error: how error accumulates over depth in a
   network without class margins, not an accuracy); the SNN's time over the quantized ANN's.

The result is written after every model, so a long run leaves what it has so far.

    python -m benchmarks.model_zoo                           # every model
    python -m benchmarks.model_zoo --quick                   # one small model per family
    python -m benchmarks.model_zoo --models resnet18,vgg11_bn --families resnet,densenet
"""

from __future__ import annotations

import copy
import gc
import time
import warnings

import torch
import torchvision
from torch import nn

import fastsnn
from benchmarks import cli
from benchmarks.measure import time_round_robin
from benchmarks.record import record, section
from fastsnn import ConversionError, QuantReLU

# longest prefix first: "resnext" before "resnet", "swin_v2" before "swin"
FAMILIES = (
    "wide_resnet resnext resnet vgg alexnet squeezenet densenet googlenet inception mobilenet_v2 mobilenet_v3 "
    "mnasnet shufflenet_v2 regnet_x regnet_y efficientnet_v2 efficientnet convnext vit swin_v2 swin maxvit"
).split()
QUICK = (
    "resnet18 resnext50_32x4d wide_resnet50_2 vgg11_bn alexnet squeezenet1_1 densenet121 googlenet inception_v3 "
    "mobilenet_v2 mobilenet_v3_small mnasnet0_5 shufflenet_v2_x0_5 regnet_x_400mf regnet_y_400mf efficientnet_b0 "
    "efficientnet_v2_s convnext_tiny vit_b_32 swin_t swin_v2_t maxvit_t"
).split()
BUILDER_KWARGS = {name: {"aux_logits": False, "init_weights": True} for name in ("googlenet", "inception_v3")}
MIN_IMAGE_SIZE = {"inception_v3": 75}  # torchvision's documented minimum
AS_IS, WITH_AVG = "as-is", "max_pool='avg'"


def family(name: str) -> str:
    return next((f for f in FAMILIES if name.startswith(f)), name.split("_")[0])


def quantize_and_convert(name: str, args) -> tuple[str, nn.Module | None, list[str], str | None]:
    """(status, quantized model or None, activations left alone, the converter's refusal)."""
    reason, left_alone = None, []
    for status, max_pool in ((AS_IS, None), (WITH_AVG, "avg")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.manual_seed(args.seed)
            net = torchvision.models.get_model(name, weights=None, num_classes=10, **BUILDER_KWARGS.get(name, {}))
            qmodel = fastsnn.quantize_model(net, args.bits, max_pool=max_pool)
        messages = [str(w.message) for w in caught if "left these activations" in str(w.message)]
        left_alone = sorted({a.strip() for m in messages for a in m.split(": ", 1)[1].split(".")[0].split(",")})
        try:
            fastsnn.convert_to_snn(qmodel.eval())  # structure only: refusals come before any run
            return status, qmodel, left_alone, None
        except ConversionError as err:
            reason = str(err)
            if "max pooling" not in reason:
                break  # average pooling would not help
    return "refused", None, left_alone, reason


@torch.no_grad()
def calibrate(qmodel: nn.Module, size: int, args, device: torch.device) -> None:
    """Batch-norm statistics and clips from random data, so that the random network is not trivial."""
    g = torch.Generator().manual_seed(args.seed)
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
    for _ in range(args.calibration_passes):
        qmodel(torch.randn(args.calibration_batch, 3, size, size, generator=g).to(device))
    qmodel.eval()

    def set_clip(module, inputs):  # in forward order, each clip sees the clipped layers before it
        positive = inputs[0].detach().flatten()
        positive = positive[positive > 0]
        if positive.numel():
            module.alpha.fill_(max(float(torch.quantile(positive[: 1 << 20].float(), args.percentile / 100)), 1e-3))

    hooks = [m.register_forward_pre_hook(set_clip) for m in relus]
    qmodel(torch.randn(args.calibration_batch, 3, size, size, generator=g).to(device))
    for h, m, b in zip(hooks, relus, bits):
        h.remove()
        m.bits = b


def streaming_vs_multistep(qmodel: nn.Module, snn, x: torch.Tensor) -> dict:
    """The two modes sum the same terms in another order (a conv on T*N samples or on N per step):
    a membrane within float rounding of a threshold may fire in one and not the other. Where the
    outputs differ, the same comparison in float64."""
    spikes: dict[str, list[torch.Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: spikes.setdefault(n, []).append(o != 0)) for n, m in snn.neurons()
    ]
    multi = snn(x)
    snn.mode = "streaming"
    streamed = snn(x)
    snn.mode = "multistep"
    for h in hooks:
        h.remove()
    flips = sum(int((s[0] != torch.stack(s[1:]).flatten(0, 1)).sum()) for s in spikes.values())
    row = {
        "streaming_max_abs_diff": float((streamed - multi).abs().max()),
        "streaming_spike_mismatches": flips,
        "neuron_steps": sum(s[0].numel() for s in spikes.values()),
        "streaming_max_abs_diff_float64": None,
    }
    if row["streaming_max_abs_diff"] > 1e-4:
        snn64 = fastsnn.convert_to_snn(copy.deepcopy(qmodel).double().eval(), mode="multistep")
        out64 = snn64(x.double())
        snn64.mode = "streaming"
        row["streaming_max_abs_diff_float64"] = float((snn64(x.double()) - out64).abs().max())
    return row


@torch.no_grad()
def measure(qmodel: nn.Module, size: int, args, device: torch.device) -> dict:
    snn = fastsnn.convert_to_snn(qmodel.eval(), mode="multistep")
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    q, out = qmodel(x), snn(x)
    times = time_round_robin({"ann": lambda: qmodel(x), "snn": lambda: snn(x)}, args.repeats, device)
    return {
        "spiking_layers": len(snn.layers),
        "timesteps": snn.timesteps,
        **streaming_vs_multistep(qmodel, snn, x),
        "top1_agreement": float((out.argmax(1) == q.argmax(1)).float().mean()),
        "relative_error": float((out - q).norm() / q.norm().clamp_min(1e-12)),
        "ann_output_std": float(q.std()),
        "time_ratio": times["snn"]["min_s"] / times["ann"]["min_s"],
    }


def run_model(name: str, args, device: torch.device) -> dict:
    start = time.perf_counter()
    size = max(args.image_size, MIN_IMAGE_SIZE.get(name, 0))
    row = {"model": name, "family": family(name), "image_size": size}
    try:
        status, qmodel, left_alone, reason = quantize_and_convert(name, args)
        row.update(status=status, left_alone=left_alone, reason=reason)
        if qmodel is not None:
            qmodel.to(device)
            row["params_m"] = sum(p.numel() for p in qmodel.parameters()) / 1e6
            calibrate(qmodel, size, args, device)
            row.update(measure(qmodel, size, args, device))
    except Exception as err:  # a model that breaks the benchmark (not a refusal): recorded, the run goes on
        row.update(status="error", reason=f"{type(err).__name__}: {err}")
    gc.collect()
    return row | {"wall_s": time.perf_counter() - start}


def _short(reason: str | None, limit: int = 120) -> str:
    reason = (reason or "").replace("\n", " ")
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def markdown(rows: list[dict], args) -> str:
    counts = ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in (AS_IS, WITH_AVG, "refused", "error"))
    note = (
        f"{args.bits}-bit activations, T = {2**args.bits - 1}, random {args.image_size} px images (or the model's "
        f"minimum), batch {args.batch}. {len(rows)} models: {counts}. `streaming_max_abs_diff`: streaming against "
        "multi-step outputs (`_float64`: the same in float64, where they differ), `streaming_spike_mismatches`: "
        "neuron steps whose spike differs; `time_ratio`: one multi-step SNN batch over one quantized-ANN batch "
        f"(best of {args.repeats})."
    )
    keys = ["model", "status", "spiking_layers", "streaming_max_abs_diff", "streaming_max_abs_diff_float64"]
    keys += ["streaming_spike_mismatches", "top1_agreement", "relative_error", "time_ratio", "reason"]
    return "\n".join(
        section("Model zoo: torchvision classification models through quantize -> convert", note, rows, keys)
    )


def parse_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--models", default=None, help="comma-separated builder names (default: all)")
    p.add_argument("--families", default=None, help="comma-separated families (resnet, vgg, densenet, ...)")
    p.add_argument("--bits", type=int, default=2, help="activation bits (T = 2**bits - 1)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="images in the measured batch")
    p.add_argument("--calibration-batch", type=int, default=8)
    p.add_argument("--calibration-passes", type=int, default=3)
    p.add_argument("--percentile", type=float, default=99.0, help="clip = this percentile of a layer's input")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per model (best kept)")
    return cli.parse(p, argv, "model_zoo")


def select(args) -> list[str]:
    names = torchvision.models.list_models(module=torchvision.models)
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        if unknown := sorted(set(wanted) - set(names)):
            raise SystemExit(f"unknown models {unknown}; known: {', '.join(names)}")
        names = wanted
    if args.families:
        names = [n for n in names if family(n) in {f.strip() for f in args.families.split(",")}]
    return [n for n in names if n in QUICK] if args.quick else names


def main(argv=None) -> dict:
    args = parse_args(argv)
    names, rows = select(args), []
    with cli.measuring(args) as measurement:
        for i, name in enumerate(names):
            cli.log(f"[{i + 1}/{len(names)}] {name}")
            rows.append(run_model(name, args, measurement.device))
            cli.log(f"    {rows[-1]['status']} ({rows[-1]['wall_s']:.1f} s) {_short(rows[-1].get('reason'))}")
            if i + 1 < len(names):  # the results so far, quietly
                record(args, measurement, {"models": rows}, markdown(rows, args), echo=False)
    return record(args, measurement, {"models": rows}, markdown(rows, args))


if __name__ == "__main__":
    main()
