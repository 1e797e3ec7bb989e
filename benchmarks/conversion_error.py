"""Where a converted SNN's error comes from, layer by layer, on Fashion-MNIST.

Trains a net as ``benchmarks/fidelity.py`` does (same data subsets, epochs and progressive
4 -> 3 -> 2 bits), converts each quantized ANN to a signed SNN at T = 2**bits - 1 and splits the
error of every neuron layer into two parts:

* *added*: the neuron's own error given its input, the SNN's output rate against the quantized
  ANN's quantizer applied to the neuron's mean input current. It is zero exactly when the
  neuron's final membrane lies in [0, theta) or its count is clamped at 0 or T (docs/method.md
  section 1); otherwise the neuron either fired too few spikes (*late*: input that arrived in
  the last steps left the membrane at theta or above, and one spike per step could not catch up)
  or too many (*early*: the membrane ended below 0 while the count was positive, a negative
  spike that came too late to be emitted);
* *inherited*: the quantizer of the SNN's mean input against the quantized ANN's activation, the
  error the layers before it passed on.

Without any added error the SNN would be the quantized ANN (every layer between neurons is
linear per step), so the added errors are the whole story; the table shows where they appear
and which kind they are. Optionally also after layer-wise fine-tuning (``--finetune``).

    python benchmarks/conversion_error.py --model resnet20 --bits 4 3 2
    python benchmarks/conversion_error.py --model vgg11 --bits 2 --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import fastsnn
from benchmarks import bench_utils as bu
from benchmarks import fidelity
from benchmarks.digits_models import accuracy, loader, train
from fastsnn.convert import GraphNeuron, trace
from fastsnn.finetune import run_until


def _neuron_layers(snn) -> list[tuple[str, GraphNeuron]]:
    """The spike-fed neuron layers (the first one, fed the static image, is exact)."""
    return [(name, m) for name, m in snn.neurons() if not m.constant_input]


@torch.no_grad()
def _ann_activations(qmodel, x: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
    """The quantized ANN's value at each of the trace nodes ``names`` (run up to the last of them)."""
    gm = trace(qmodel)
    last = [n.name for n in gm.graph.nodes if n.name in names][-1]
    return run_until(gm, x, last, names)


@torch.no_grad()
def layer_errors(qmodel, snn, x: torch.Tensor) -> list[dict]:
    """Per spike-fed neuron layer: total, added and inherited MSE, and the late / early neuron shares."""
    T = snn.timesteps
    layers = _neuron_layers(snn)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, (inp[0], out)))
        for name, m in layers
    ]
    old = snn.mode, snn.chunk_size
    snn.mode, snn.chunk_size = "multistep", None  # one T-fold pass: every layer's whole input at once
    try:
        snn(x)
    finally:
        snn.mode, snn.chunk_size = old
        for h in hooks:
            h.remove()
    targets = _ann_activations(qmodel, x, {m.source for _, m in layers})
    rows = []
    for name, m in layers:
        current, out = (v.reshape(T, -1, *v.shape[1:]) for v in seen[name])
        theta = m.neuron.threshold.to(current.dtype)
        count = torch.round(out.sum(0) / theta)  # net spikes per neuron (an integer, up to float round-off)
        total_in = current.sum(0) / theta  # input in units of theta
        ideal = torch.clamp(torch.floor(total_in + 0.5), 0, T)  # the quantizer of the mean input
        target = targets[m.source]
        rate, ideal_rate = count * theta / T, ideal * theta / T
        rows.append(
            {
                "layer": m.path,
                "theta": float(theta),
                "mse_total": float(((rate - target) ** 2).mean()),
                "mse_added": float(((rate - ideal_rate) ** 2).mean()),
                "mse_inherited": float(((ideal_rate - target) ** 2).mean()),
                "late": float((count < ideal).float().mean()),
                "early": float((count > ideal).float().mean()),
                "missing_spikes": float((ideal - count).clamp(min=0).sum() / (count < ideal).sum().clamp(min=1)),
            }
        )
    return rows


def _snn(qmodel, T: int):
    return fastsnn.convert_to_snn(qmodel, timesteps=T, signed=True, chunk_size=None, integer_kernels=False)


def run(args, log) -> dict:
    data, source = fidelity.load_data(args)
    width = args.widths[args.model] * args.width_scale
    fp = train(fidelity.float_net(args.model, width, args), data["train"], args.fp_epochs, lr=args.lr, seed=args.seed)
    res = {"model": args.model, "width": width, "data": source, "float_ann": accuracy(fp, data["test"]), "bits": []}
    log(f"{args.model}: float ANN {res['float_ann']:.2f}%")
    x = data["test"][0][: args.images]
    ft_split = fidelity._subset(data["train"], args.ft_images, args.seed)
    qmodel = fp
    for bits in sorted(args.bits, reverse=True):  # progressive, as fidelity.py
        qmodel = fidelity.next_bit_width(qmodel, bits, data, args)
        T = 2**bits - 1
        snn = _snn(qmodel, T)
        row = {"bits": bits, "T": T, "quant_ann": accuracy(qmodel, data["test"]), "snn": accuracy(snn, data["test"])}
        row["layers"] = layer_errors(qmodel, snn, x)
        if args.finetune is not None and (not args.finetune or bits in args.finetune):
            batches = list(loader(ft_split, batch_size=64, shuffle=True, seed=args.seed))
            validate = (lambda s: accuracy(s, data["val"])) if args.validate else None
            fastsnn.layerwise_finetune(
                qmodel, snn, batches, validate=validate, epochs_per_layer=args.ft_epochs, lr=args.ft_lr
            )
            row["snn_ft"] = accuracy(snn, data["test"])
            row["layers_ft"] = layer_errors(qmodel, snn, x)
        res["bits"].append(row)
        log(f"{args.model} {bits} bits: ANN {row['quant_ann']:.2f}, SNN T={T} {row['snn']:.2f}")
    return res


def markdown(res: dict, args) -> str:
    lines = [
        f"### Where the SNN's error comes from: {res['model']} (width {res['width']:g}), Fashion-MNIST",
        "",
        f"Per spike-fed neuron layer, on {args.images} test images; MSE in activation units squared. "
        "*added*: SNN rate vs the quantizer of the layer's own mean input (the neuron's timing error); "
        "*inherited*: that quantizer vs the quantized ANN's activation; *late* / *early*: share of the "
        "layer's neurons that fired fewer / more spikes than their mean input asks for; *missing*: "
        "spikes a late neuron lacks, on average. Float ANN "
        f"{res['float_ann']:.2f}%.",
    ]
    for row in res["bits"]:
        lines += [
            "",
            f"#### {row['bits']} bits, T = {row['T']}: quantized ANN {row['quant_ann']:.2f}%, signed SNN "
            f"{row['snn']:.2f}%" + (f", after fine-tuning {row['snn_ft']:.2f}%" if "snn_ft" in row else ""),
            "",
            "| layer | theta | MSE total | added | inherited | late | early | missing |"
            + (" MSE total after FT | added after FT |" if "layers_ft" in row else ""),
            "|---|---|---|---|---|---|---|---|" + ("---|---|" if "layers_ft" in row else ""),
        ]
        after = row.get("layers_ft", [None] * len(row["layers"]))
        for r, a in zip(row["layers"], after, strict=True):
            line = (
                f"| {r['layer']} | {r['theta']:.3g} | {r['mse_total']:.3g} | {r['mse_added']:.3g} | "
                f"{r['mse_inherited']:.3g} | {r['late']:.3f} | {r['early']:.3f} | {r['missing_spikes']:.2f} |"
            )
            if a is not None:
                line += f" {a['mse_total']:.3g} | {a['mse_added']:.3g} |"
            lines.append(line)
    lines += ["", f"Device: {bu.cpu_name()}, 1 torch thread; run time {res['seconds'] / 60:.1f} min.", ""]
    lines += [f"Command: `python benchmarks/conversion_error.py {' '.join(args.argv)}`", ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=list(fidelity.MODELS), default="resnet20")
    p.add_argument("--bits", nargs="+", type=int, default=[4, 3, 2])
    p.add_argument("--quick", action="store_true", help="fidelity.py --quick's training (fewer images and epochs)")
    p.add_argument("--images", type=int, default=256, help="test images the errors are measured on")
    p.add_argument(
        "--finetune",
        nargs="*",
        type=int,
        default=None,
        metavar="BITS",
        help="also measure after layer-wise fine-tuning, at these bit widths (none named: all)",
    )
    p.add_argument("--ft-epochs", type=int, default=1)
    p.add_argument("--ft-lr", type=float, default=1e-3)
    p.add_argument("--ft-images", type=int, default=None, help="fine-tuning images (default fidelity.py's 512; 0: all)")
    p.add_argument(
        "--train-images",
        type=int,
        default=None,
        help="training images of the ANNs, also the fine-tuning pool (default fidelity.py's 5000; 0: all 55,000)",
    )
    p.add_argument("--width-scale", type=float, default=None, help="scale fidelity.py's widths (default 1)")
    p.add_argument("--no-validate", dest="validate", action="store_false")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--out-dir", type=Path, default=bu.REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--name", default=None, help="output stem (default conversion_error_<model>)")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(raw)
    # the rest of the training settings: fidelity.py's Fashion-MNIST defaults
    base_argv = ["--data", "fashion_mnist", "--sj-modes", *(["--quick"] if args.quick else [])]
    for flag, value in (("--train-images", args.train_images), ("--width-scale", args.width_scale)):
        if value is not None:
            base_argv += [flag, str(value)]
    base = fidelity.parse_args(base_argv)
    for key in (
        *("widths", "weight_bits", "fp_epochs", "q_epochs", "lr", "q_lr", "alpha_init", "float_clip", "seed"),
        *("width_scale", "subset", "train_images", "val_images", "test_images", "subset_seed", "val_size"),
    ):
        setattr(args, key, getattr(base, key))
    args.ft_images = base.ft_images if args.ft_images is None else (args.ft_images or None)  # None: all
    args.data, args.argv = "fashion_mnist", raw
    args.name = args.name or f"conversion_error_{args.model}" + ("_quick" if args.quick else "")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = run(args, lambda msg: print(msg, flush=True))
    res["seconds"] = time.perf_counter() - t0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(res, args)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    (args.out_dir / f"{args.name}.md").write_text(text)
    print(text)
    return res


if __name__ == "__main__":
    main()
