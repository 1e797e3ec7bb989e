"""Fidelity vs latency on scikit-learn's digits: Fast-SNN vs SpikingJelly's rate-coding conversion.

For a VGG-style and a ResNet-style net of the shared backbones (``fastsnn.backbones``: VGG-11 at
width 0.25 and ResNet-20, 1x32x32 input), trained on the fixed digits split of
``benchmarks/digits_models.py``:

* the float ANN (plain ReLUs, batch norm): its test accuracy;
* SpikingJelly's conversion of that float ANN (``ann2snn.RateCodingRecipe``, modes ``max`` and
  ``99.9%``, IF neurons with soft reset, analog input at every step) at
  T = 1, 3, 7, 15, 31, 63, 127, 255 (one simulation, read after each of those steps);
* our quantized ANN at 2 / 3 / 4 bits (trained progressively from the float ANN: 4, then 3, then
  2 bits) and its SNN at T = 2**bits - 1 = 3 / 7 / 15: unsigned IF, signed IF, and signed IF
  after layer-wise fine-tuning at that T; each also read after every step up to ``--our-max-t``;
* spike rates, synaptic operations and the energy estimate of our SNNs (``fastsnn.spike_stats``).

It reports, for every method, the smallest T at which it is within 1 point of its own ANN and
within 1 point of the float ANN. Writes ``benchmarks/results/fidelity.{json,md}``
(``fidelity_quick`` with ``--quick``) and prints the markdown tables.

    python benchmarks/fidelity.py            # full run (~1 hour on a shared 2-core CPU)
    python benchmarks/fidelity.py --quick    # short run (fewer epochs, 2 bits, T <= 31; < 10 min)
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

import fastsnn
from benchmarks import bench_utils as bu
from benchmarks.digits_models import accuracy, digits_splits, loader, train
from fastsnn.backbones import create_backbone

MODELS = {"vgg11": dict(name="vgg11", width=0.25), "resnet20": dict(name="resnet20", width=1.0)}
SJ_TIMESTEPS = (1, 3, 7, 15, 31, 63, 127, 255)
SJ_MODES = ("max", "99.9%")
VARIANTS = ("unsigned", "signed", "signed_ft")
VARIANT_LABELS = {
    "unsigned": "Fast-SNN unsigned IF",
    "signed": "Fast-SNN signed IF",
    "signed_ft": "Fast-SNN signed IF + layer-wise fine-tuning",
}


def build(model: str, width_scale: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    spec = MODELS[model]
    return create_backbone(spec["name"], num_classes=10, in_channels=1, width=spec["width"] * width_scale)


@torch.no_grad()
def snn_curve(snn, data, timesteps: list[int], batch_size: int = 128) -> dict[int, float]:
    """Test accuracy (%) of ``snn`` after each step in ``timesteps`` (streaming simulation)."""
    x, y = data
    t_max = max(timesteps)
    old_t, old_mode = snn.timesteps, snn.mode
    snn.timesteps, snn.mode = t_max, "streaming"
    correct = {t: 0 for t in timesteps}
    try:
        for i in range(0, len(y), batch_size):
            _, steps = snn(x[i : i + batch_size], return_steps=True)
            for t in timesteps:
                correct[t] += int((steps[t - 1].argmax(1) == y[i : i + batch_size]).sum())
    finally:
        snn.timesteps, snn.mode = old_t, old_mode
    return {t: 100.0 * correct[t] / len(y) for t in timesteps}


@torch.no_grad()
def sj_curve(sj: bu.SpikingJellySNN, data, timesteps: list[int], batch_size: int = 256) -> dict[int, float]:
    x, y = data
    correct = {t: 0 for t in timesteps}
    for i in range(0, len(y), batch_size):
        outs = sj.running_outputs(x[i : i + batch_size], max(timesteps), set(timesteps))
        for t in timesteps:
            correct[t] += int((outs[t].argmax(1) == y[i : i + batch_size]).sum())
    return {t: 100.0 * correct[t] / len(y) for t in timesteps}


def smallest_t(curve: dict[int, float], reference: float, tolerance: float = 1.0) -> int | None:
    """The smallest T whose accuracy is within ``tolerance`` points of ``reference`` (None: never)."""
    return next((t for t in sorted(curve) if curve[t] >= reference - tolerance), None)


def run_model(model: str, data: dict, args, log) -> dict:
    t0 = time.perf_counter()
    fp = train(build(model, args.width_scale, args.seed), data["train"], args.fp_epochs, lr=args.lr, seed=args.seed)
    res = {
        "model": model,
        "width": MODELS[model]["width"] * args.width_scale,
        "epochs_per_layer": args.epochs_per_layer[model],
        "float_ann": accuracy(fp, data["test"]),
        "train_float_s": time.perf_counter() - t0,
        "spikingjelly": [],
        "ours": [],
    }
    log(f"{model}: float ANN {res['float_ann']:.2f}% ({res['train_float_s']:.0f} s)")

    if args.sj_modes:
        calib = loader(data["train"], batch_size=64)
        for mode in args.sj_modes:
            t0 = time.perf_counter()
            sj = bu.SpikingJellySNN(fp, calib, mode=mode, step_mode="s")
            curve = sj_curve(sj, data["test"], args.sj_timesteps)
            res["spikingjelly"].append({"mode": mode, "curve": curve, "seconds": time.perf_counter() - t0})
            log(f"{model}: SpikingJelly {mode}: " + " ".join(f"T{t}={a:.1f}" for t, a in curve.items()))

    qmodel = fp
    for bits in sorted(args.bits, reverse=True):  # progressive: 4 -> 3 -> 2 bits
        t0 = time.perf_counter()
        weight_bits = bits if args.weight_bits == "same" else None
        qmodel = fastsnn.quantize_model(
            copy.deepcopy(qmodel), bits, weight_bits=weight_bits, alpha_init=args.alpha_init
        )
        qmodel = train(qmodel, data["train"], args.q_epochs, lr=args.q_lr, seed=args.seed + bits)
        T = 2**bits - 1
        row = {
            "bits": bits,
            "T": T,
            "quant_ann": accuracy(qmodel, data["test"]),
            "train_s": time.perf_counter() - t0,
            "curves": {},
            "at_T": {},
            "stats": {},
        }
        grid = sorted({t for t in args.our_timesteps if t <= args.our_max_t} | {T})
        for variant in VARIANTS:
            snn = fastsnn.convert_to_snn(qmodel, timesteps=T, signed=variant != "unsigned", compiled=args.compiled)
            if variant == "signed_ft":
                batches = list(loader(data["train"], batch_size=64, shuffle=True, seed=args.seed))
                validate = (lambda s: accuracy(s, data["val"])) if args.validate else None
                t1 = time.perf_counter()
                reports = fastsnn.layerwise_finetune(
                    qmodel, snn, batches, validate=validate, epochs_per_layer=args.epochs_per_layer[model]
                )
                row["finetune_s"] = time.perf_counter() - t1
                row["finetune_layers"] = [
                    {
                        "path": r.path,
                        "mse_before": r.mse_before,
                        "mse_after": r.mse_after,
                        "kept": r.kept,
                        "val_acc": r.score,
                    }
                    for r in reports
                ]
            curve = snn_curve(snn, data["test"], grid)
            row["curves"][variant] = curve
            row["at_T"][variant] = curve[T]
            if variant in ("signed", "signed_ft"):
                stats = fastsnn.spike_stats(snn, data["test"][0][: args.stats_images])
                row["stats"][variant] = {
                    k: stats[k] for k in ("spike_rate", "pos_rate", "neg_rate", "sops", "first_layer_macs", "ann_macs")
                } | {
                    "energy_snn_uj": stats["energy"]["snn_uj"],
                    "energy_ann_uj": stats["energy"]["ann_uj"],
                    "energy_ratio": stats["energy"]["ratio"],
                    "energy_note": stats["energy"]["note"],
                }
        res["ours"].append(row)
        log(
            f"{model} {bits} bits: ANN {row['quant_ann']:.2f}  T={T}: "
            + "  ".join(f"{v} {row['at_T'][v]:.2f}" for v in VARIANTS)
            + f"  ({time.perf_counter() - t0:.0f} s)"
        )
    return res


def summary_rows(res: dict) -> list[dict]:
    """One row per method: its ANN, accuracy at the evaluated T, smallest T within 1 point."""
    rows = []
    for sj in res["spikingjelly"]:
        curve = {int(t): a for t, a in sj["curve"].items()}
        rows.append(
            {
                "model": res["model"],
                "method": f"SpikingJelly RateCoding ({sj['mode']})",
                "bits": None,
                "own_ann": res["float_ann"],
                "curve": curve,
                "t_within_own": smallest_t(curve, res["float_ann"]),
                "t_within_float": smallest_t(curve, res["float_ann"]),
            }
        )
    for row in res["ours"]:
        for v in VARIANTS:
            curve = {int(t): a for t, a in row["curves"][v].items()}
            rows.append(
                {
                    "model": res["model"],
                    "method": f"{VARIANT_LABELS[v]}, {row['bits']}-bit ANN",
                    "variant": v,
                    "bits": row["bits"],
                    "own_ann": row["quant_ann"],
                    "curve": curve,
                    "t_within_own": smallest_t(curve, row["quant_ann"]),
                    "t_within_float": smallest_t(curve, res["float_ann"]),
                }
            )
    return rows


def targets(results: list[dict], sj_max_t: int) -> list[dict]:
    out = []
    for res in results:
        rows = summary_rows(res)
        two_bit = next((r for r in res["ours"] if r["bits"] == 2), None)
        if two_bit is None:
            continue
        gap = two_bit["quant_ann"] - two_bit["at_T"]["signed_ft"]
        out.append(
            {
                "target": f"{res['model']}: signed + fine-tuned SNN within 1 point of the 2-bit ANN at T = 3",
                "value": gap,
                "met": gap <= 1.0,
                "note": f"ANN {two_bit['quant_ann']:.2f}, SNN {two_bit['at_T']['signed_ft']:.2f}",
            }
        )
        sj = [r for r in rows if r["method"].startswith("SpikingJelly")]
        if sj:
            best = min(r["t_within_own"] or 10**9 for r in sj)
            out.append(
                {
                    "target": f"{res['model']}: SpikingJelly needs >= 10x the time steps (>= 30) to come "
                    "within 1 point of its float ANN",
                    "value": best if best < 10**9 else None,
                    "met": best >= 30,
                    "note": "smallest T over both modes"
                    + ("" if best < 10**9 else f"; not within 1 point at any T <= {sj_max_t}"),
                }
            )
    return out


def fmt_t(t) -> str:
    return "-" if t is None else str(t)


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"### Fidelity vs latency (scikit-learn digits at 32x32, {result['splits']['test']} test images: "
        f"one image = {100 / result['splits']['test']:.2f} points)",
        "",
        f"Activations quantized to b bits, weights {'quantized (APoT, b bits)' if cfg['weight_bits'] == 'same' else 'full precision'}; "
        f"{cfg['fp_epochs']} float epochs, then {cfg['q_epochs']} epochs per bit width (4 -> 3 -> 2); fine-tuning "
        f"at T = 2^b - 1 ({', '.join(f'{m}: {n} epoch(s)/layer' for m, n in cfg['epochs_per_layer'].items() if m in cfg['models'])}"
        f"{', validation-gated' if cfg['validate'] else ''}). "
        "Accuracy in %.",
        "",
    ]
    for res in result["results"]:
        lines += [f"#### {res['model']} (width {res['width']:g}): float ANN {res['float_ann']:.2f}", ""]
        sj_ts = cfg["sj_timesteps"]
        if res["spikingjelly"]:
            lines += [
                "| SpikingJelly mode | " + " | ".join(f"T={t}" for t in sj_ts) + " |",
                "|---|" + "---|" * len(sj_ts),
            ]
            for sj in res["spikingjelly"]:
                curve = {int(t): a for t, a in sj["curve"].items()}
                lines.append(f"| {sj['mode']} | " + " | ".join(f"{curve[t]:.2f}" for t in sj_ts) + " |")
            lines.append("")
        lines += [
            "| bits | quantized ANN | T | SNN unsigned | SNN signed | SNN signed + FT | spike rate (neg) "
            "| SOPs / image | energy SNN / ANN (estimate) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in res["ours"]:
            st = row["stats"].get("signed_ft", {})
            lines.append(
                f"| {row['bits']} | {row['quant_ann']:.2f} | {row['T']} | {row['at_T']['unsigned']:.2f} "
                f"| {row['at_T']['signed']:.2f} | {row['at_T']['signed_ft']:.2f} "
                f"| {st.get('spike_rate', float('nan')):.3f} ({st.get('neg_rate', float('nan')):.4f}) "
                f"| {st.get('sops', float('nan')):.3g} | {st.get('energy_ratio', float('nan')):.3f} |"
            )
        grid = sorted({int(t) for row in res["ours"] for t in row["curves"]["signed_ft"]})
        lines += [
            "",
            "Our SNNs after t steps (the b-bit model's neurons realise a (t+1)-level quantizer at t != 2^b - 1):",
            "",
            "| method | " + " | ".join(f"t={t}" for t in grid) + " |",
            "|---|" + "---|" * len(grid),
        ]
        for row in res["ours"]:
            for v in VARIANTS:
                curve = {int(t): a for t, a in row["curves"][v].items()}
                lines.append(
                    f"| {VARIANT_LABELS[v]}, {row['bits']}-bit | "
                    + " | ".join(f"{curve[t]:.2f}" if t in curve else "" for t in grid)
                    + " |"
                )
        lines += [
            "",
            "Smallest T within 1 point:",
            "",
            "| method | own ANN | smallest T within 1 pt of own ANN | smallest T within 1 pt of float ANN |",
            "|---|---|---|---|",
        ]
        for r in summary_rows(res):
            lines.append(
                f"| {r['method']} | {r['own_ann']:.2f} | {fmt_t(r['t_within_own'])} | {fmt_t(r['t_within_float'])} |"
            )
        lines.append("")
    if result["targets"]:
        lines += ["### Fidelity targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in result["targets"]:
            val = (
                "-"
                if t["value"] is None
                else (f"{t['value']:.2f}" if isinstance(t["value"], float) else str(t["value"]))
            )
            lines.append(f"| {t['target']} | {val} ({t['note']}) | {'yes' if t['met'] else 'no'} |")
    lines += [
        "",
        "`-`: not within 1 point at any T evaluated. Energy: " + result["energy_note"],
        "",
        f"Command: `{result['command']}`",
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="short run: 4 + 2 epochs, 2 bits only, 1 fine-tuning epoch per layer, T <= 31 (< 10 min)",
    )
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--bits", nargs="+", type=int, default=None, help="activation bits (default 2 3 4; quick 2)")
    p.add_argument(
        "--weight-bits",
        choices=("none", "same"),
        default="none",
        help="'same': also quantize the weights to b bits (APoT, 8-bit first/last layer)",
    )
    p.add_argument("--fp-epochs", type=int, default=None, help="float ANN epochs (default 20, quick 6)")
    p.add_argument("--q-epochs", type=int, default=None, help="epochs per bit width (default 8, quick 3)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--q-lr", type=float, default=0.02)
    p.add_argument("--alpha-init", type=float, default=2.0)
    p.add_argument(
        "--epochs-per-layer",
        nargs="+",
        default=None,
        metavar="[MODEL=]N",
        help="fine-tuning epochs per layer, one number or per model (default vgg11=1 resnet20=4: "
        "METHOD.md gives 1 by default and up to 8 for deep nets; ResNet-20 has 19 neuron layers)",
    )
    p.add_argument(
        "--no-compile",
        dest="compiled",
        action="store_false",
        help="eager neuron loops (default: torch.compile-fused, faster fine-tuning)",
    )
    p.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        help="keep every layer's fine-tuning (default: only if validation accuracy does not drop)",
    )
    p.add_argument("--sj-modes", nargs="*", default=list(SJ_MODES), help="SpikingJelly modes (none to skip)")
    p.add_argument(
        "--sj-timesteps",
        nargs="+",
        type=int,
        default=None,
        help="T values for SpikingJelly (default 1 3 7 ... 255; quick up to 63)",
    )
    p.add_argument(
        "--our-timesteps",
        nargs="+",
        type=int,
        default=None,
        help="T values at which to read our SNNs (default 1 2 3 4 5 7 15 31 63)",
    )
    p.add_argument("--our-max-t", type=int, default=None, help="read our SNNs up to this T (default 63, quick 31)")
    p.add_argument("--stats-images", type=int, default=256, help="test images for spike statistics")
    p.add_argument("--width-scale", type=float, default=1.0, help="scale both nets' widths (tests use tiny nets)")
    p.add_argument("--subset", type=int, default=None, help="use only this many images of each split (tests)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results/")
    p.add_argument("--name", default=None, help="output file stem (default fidelity / fidelity_quick)")
    args = p.parse_args(argv)
    q = args.quick
    args.bits = args.bits or ([2] if q else [2, 3, 4])
    args.fp_epochs = args.fp_epochs if args.fp_epochs is not None else (4 if q else 20)
    args.q_epochs = args.q_epochs if args.q_epochs is not None else (2 if q else 8)
    args.sj_timesteps = sorted(args.sj_timesteps or [t for t in SJ_TIMESTEPS if not q or t <= 31])
    args.our_max_t = args.our_max_t or (15 if q else 63)
    if q:
        args.stats_images = min(args.stats_images, 128)
    args.our_timesteps = sorted(args.our_timesteps or [1, 2, 3, 4, 5, 7, 15, 31, 63])
    args.name = args.name or ("fidelity_quick" if q else "fidelity")
    epl = {"vgg11": 1, "resnet20": 1 if q else 4}
    for item in args.epochs_per_layer or []:
        if "=" in item:
            name, n = item.split("=", 1)
            if name not in MODELS:
                p.error(f"--epochs-per-layer: unknown model {name!r}")
            epl[name] = int(n)
        else:
            epl = {name: int(item) for name in MODELS}
    args.epochs_per_layer = epl
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = bu.log
    if args.sj_modes and bu.spikingjelly_version() is None:
        log("SpikingJelly not installed: skipped (pip install -e '.[bench]')")
        args.sj_modes = []
    start = time.perf_counter()
    data = digits_splits(image_size=32, test_fraction=0.25, val_fraction=0.15, split_seed=0)
    if args.subset:
        data = {k: (x[: args.subset], y[: args.subset]) for k, (x, y) in data.items()}
    results = [run_model(m, data, args, log) for m in args.models]
    from fastsnn.stats import ENERGY_NOTE

    result = {
        "benchmark": "fidelity",
        "command": bu.command_line(),
        "config": vars(args),
        "environment": bu.environment("cpu"),
        "splits": {k: len(v[1]) for k, v in data.items()},
        "results": results,
        "spikingjelly_skipped": not args.sj_modes,
        "energy_note": ENERGY_NOTE,
        "seconds": time.perf_counter() - start,
    }
    result["summary"] = [r for res in results for r in summary_rows(res)]
    result["targets"] = targets(results, max(args.sj_timesteps))
    bu.write_results(args.name, result, markdown(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
