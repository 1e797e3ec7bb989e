"""Fidelity vs latency on real and toy data: Fast-SNN vs SpikingJelly's conversions.

``--data digits`` (default): scikit-learn's digits (the fixed split of
``benchmarks/digits_models.py``, 1x32x32). ``--data fashion_mnist``: Fashion-MNIST (the official
idx files, read by ``tasks.classification.data.FashionMNISTDataModule``: zero-padded to 32x32,
seeded train / val split of the official training set, test from the official test set; fixed
random subsets of each split, ``--train-images`` / ``--val-images`` / ``--test-images``, so that
the run fits a CPU). For a VGG-style and a ResNet-style net of the shared backbones
(``fastsnn.backbones``: VGG-11 and ResNet-20, the paper's CIFAR networks, at the widths in
``DATASETS``):

* the float ANN (plain ReLUs, batch norm; ``--float-clip``: clipped ReLUs with learned clips, as
  ``run.py bits=32``, and no SpikingJelly rate coding): its test accuracy;
* SpikingJelly's conversion of that float ANN (``ann2snn.RateCodingRecipe``, modes ``max`` and
  ``99.9%``, IF neurons with soft reset, analog input at every step) at
  T = 1, 3, 7, 15, 31, 63, 127, 255 (one simulation, read after each of those steps);
* our quantized ANN at 2 / 3 / 4 bits (trained progressively from the float ANN: 4, then 3, then
  2 bits; weights full precision on digits, quantized on Fashion-MNIST as the paper's CIFAR
  recipes and ``conf/model/*.yaml`` do: APoT, max(b, 2) bits, 8-bit first and last layer) and
  its SNN at T = 2**bits - 1 = 3 / 7 / 15: unsigned IF, signed IF, and signed IF after layer-wise
  fine-tuning at that T; each also read after every step up to ``--our-max-t``;
* with ``--stbif`` (default on Fashion-MNIST): SpikingJelly's signed ternary neuron
  ``STBIFNode`` (SpikeZIP's ST-BIF, ``bench_utils.STBIFSNN``) simulating the same quantized ANN;
* spike rates, synaptic operations and the energy estimate of our SNNs (``fastsnn.spike_stats``).

It reports, for every method, the smallest T at which it is within 1 point of its own ANN and
within 1 point of the float ANN, and the data set's targets (``targets``). Writes
``benchmarks/results/fidelity.{json,md}`` (digits) or ``fidelity_fashion_mnist.{json,md,png}``
(``_quick`` with ``--quick``) and prints the markdown tables. The PNG (Fashion-MNIST, or
``--plot``) shows accuracy vs time step for every method.

    python benchmarks/fidelity.py                          # digits, full run (~1 hour on a shared 2-core CPU)
    python benchmarks/fidelity.py --quick                  # digits, short run (< 10 min)
    python benchmarks/fidelity.py --data fashion_mnist     # Fashion-MNIST, full run
    python benchmarks/fidelity.py --data fashion_mnist --quick
    python benchmarks/fidelity.py --data fashion_mnist --models vgg11 --name part_vgg11 &   # one process
    python benchmarks/fidelity.py --data fashion_mnist --models resnet20 --name part_resnet20  # per model
    python benchmarks/fidelity.py --merge benchmarks/results/part_{vgg11,resnet20}.json --name fidelity_fashion_mnist
"""

from __future__ import annotations

import argparse
import copy
import json
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
# Per data set: the models' widths, the weight quantization, which extras run, the output stem,
# and the defaults of the options that depend on it as (full run, --quick).
DATASETS = {
    "digits": dict(
        label="scikit-learn digits at 32x32",
        widths={"vgg11": 0.25, "resnet20": 1.0},
        weight_bits="none",
        stbif=False,
        plot=False,
        stem="fidelity",
        fp_epochs=(20, 4),
        q_epochs=(8, 2),
        epochs_per_layer=({"vgg11": 1, "resnet20": 4}, {"vgg11": 1, "resnet20": 1}),
        sj_max_t=(255, 31),
        our_max_t=(63, 15),
        our_timesteps=(1, 2, 3, 4, 5, 7, 15, 31, 63),
        stats_images=(256, 128),
        images=dict(train=(None, None), val=(None, None), test=(None, None), ft=(None, None)),
    ),
    "fashion_mnist": dict(
        label="Fashion-MNIST, zero-padded to 32x32",
        widths={"vgg11": 0.25, "resnet20": 0.5},
        weight_bits="same",
        stbif=True,
        plot=True,
        stem="fidelity_fashion_mnist",
        fp_epochs=(6, 3),
        q_epochs=(3, 2),
        epochs_per_layer=({"vgg11": 1, "resnet20": 1}, {"vgg11": 1, "resnet20": 1}),
        sj_max_t=(255, 63),
        our_max_t=(15, 15),
        our_timesteps=(1, 2, 3, 4, 5, 7, 10, 15),
        stats_images=(256, 128),
        # training / validation / test images (fixed random subsets of the splits) and the
        # training images the layer-wise fine-tuning uses; SpikingJelly's test images
        images=dict(train=(5000, 3000), val=(500, 500), test=(1000, 1000), ft=(512, 512), sj=(500, 500)),
    ),
}
SJ_TIMESTEPS = (1, 3, 7, 15, 31, 63, 127, 255)
SJ_MODES = ("max", "99.9%")
VARIANTS = ("unsigned", "signed", "signed_ft")
VARIANT_LABELS = {
    "unsigned": "Fast-SNN unsigned IF",
    "signed": "Fast-SNN signed IF",
    "signed_ft": "Fast-SNN signed IF + layer-wise fine-tuning",
    "stbif": "SpikingJelly STBIFNode (SpikeZIP ST-BIF), same QANN",
}


def variants_of(row: dict) -> list[str]:
    """The SNN variants a bit width's row holds: ours, then SpikingJelly's ST-BIF when it ran."""
    return [v for v in (*VARIANTS, "stbif") if v in row["curves"]]


def build(model: str, width: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_backbone(MODELS[model]["name"], num_classes=10, in_channels=1, width=width)


def float_net(model: str, width: float, args) -> nn.Module:
    """The untrained float ANN: plain ReLUs, or with ``--float-clip`` clipped ReLUs whose clip is
    learned at full precision (``QuantReLU(bits=None)``, as run.py's bits=32 stage)."""
    net = build(model, width, args.seed)
    return fastsnn.quantize_model(net, None, alpha_init=args.alpha_init) if args.float_clip else net


def _subset(split: tuple[torch.Tensor, torch.Tensor], n: int | None, seed: int):
    """A fixed random subset of ``n`` samples of ``split`` (all of it when ``n`` is None or larger)."""
    x, y = split
    if n is None or n >= len(y):
        return x, y
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx].contiguous(), y[idx].contiguous()


def _tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.int64)


def fashion_mnist_splits(root: Path | None, sizes: dict[str, int | None], seed: int = 0, val_size: int = 5000) -> dict:
    """``{"train"|"val"|"test": (images [N, 1, 32, 32], labels [N])}`` from the data module of
    ``conf/data/fashion_mnist.yaml`` (its defaults: ``val_size`` = 5000 validation images of the official
    training set with split_seed 0, test = the official test set, zero-padded to 32x32, the
    training set's mean / std; no augmentation), each split a fixed random subset of
    ``sizes[split]`` images drawn with ``seed``."""
    from torch.utils.data import Subset

    from tasks.classification.data import FashionMNISTDataModule

    root = Path(root) if root is not None else bu.REPO_ROOT / "data" / "fashion_mnist"
    dm = FashionMNISTDataModule(root, image_size=32, num_workers=0, augment=False, val_size=val_size)
    out = {}
    for i, split in enumerate(("train", "val", "test")):
        dataset = dm.dataset(split)
        n = sizes.get(split)
        if n is not None and n < len(dataset):
            pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + i))[:n].sort().values
            dataset = Subset(dataset, pick.tolist())
        out[split] = _tensors(dataset)
    out["folder"] = str(dm.folder)
    return out


def load_data(args) -> tuple[dict, dict]:
    """The splits of ``args.data`` and a description of where they came from."""
    if args.data == "digits":
        data = digits_splits(image_size=32, test_fraction=0.25, val_fraction=0.15, split_seed=0)
        if args.subset:
            data = {k: (x[: args.subset], y[: args.subset]) for k, (x, y) in data.items()}
        return data, {"source": "sklearn.datasets.load_digits"}
    sizes = {k: args.subset or getattr(args, f"{k}_images") for k in ("train", "val", "test")}
    data = fashion_mnist_splits(args.data_root, sizes, seed=args.subset_seed, val_size=args.val_size)
    return data, {"source": "Fashion-MNIST idx files", "folder": data.pop("folder"), "subset_seed": args.subset_seed}


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


@torch.no_grad()
def stbif_curve(stbif: bu.STBIFSNN, data, timesteps: list[int], batch_size: int = 64) -> dict[int, float]:
    """Test accuracy (%) of SpikingJelly's ST-BIF simulation after each step in ``timesteps``."""
    x, y = data
    correct = {t: 0 for t in timesteps}
    for i in range(0, len(y), batch_size):
        outs = stbif.running_outputs(x[i : i + batch_size], max(timesteps), set(timesteps))
        for t in timesteps:
            correct[t] += int((outs[t].argmax(1) == y[i : i + batch_size]).sum())
    return {t: 100.0 * correct[t] / len(y) for t in timesteps}


def weight_bits_for(bits: int, setting: str) -> int | None:
    """``--weight-bits``: ``none`` keeps float weights; ``same`` quantizes them to the activation
    bits with a floor of 2 (a sign and one magnitude bit), as ``tasks/pipeline.py:quantize_net``."""
    return max(bits, 2) if setting == "same" else None


def next_bit_width(model: nn.Module, bits: int, data: dict, args) -> nn.Module:
    """One step of the progressive training: a copy of ``model`` quantized to ``bits`` (weights as
    ``--weight-bits``), trained ``--q-epochs`` at ``--q-lr``."""
    q = fastsnn.quantize_model(
        copy.deepcopy(model), bits, weight_bits=weight_bits_for(bits, args.weight_bits), alpha_init=args.alpha_init
    )
    return train(q, data["train"], args.q_epochs, lr=args.q_lr, seed=args.seed + bits)


def smallest_t(curve: dict[int, float], reference: float, tolerance: float = 1.0) -> int | None:
    """The smallest T whose accuracy is within ``tolerance`` points of ``reference`` (None: never)."""
    return next((t for t in sorted(curve) if curve[t] >= reference - tolerance), None)


def run_model(model: str, data: dict, args, log) -> dict:
    t0 = time.perf_counter()
    width = args.widths[model] * args.width_scale
    fp = train(float_net(model, width, args), data["train"], args.fp_epochs, lr=args.lr, seed=args.seed)
    res = {
        "model": model,
        "width": width,
        "epochs_per_layer": args.epochs_per_layer[model],
        "float_ann": accuracy(fp, data["test"]),
        "train_float_s": time.perf_counter() - t0,
        "spikingjelly": [],
        "ours": [],
    }
    log(f"{model}: float ANN {res['float_ann']:.2f}% ({res['train_float_s']:.0f} s)")

    if args.sj_modes:
        calib = loader(data["train"], batch_size=64)
        sj_test = _subset(data["test"], args.sj_images, args.seed)
        if args.sj_images is not None and args.sj_images < len(data["test"][1]):
            res["sj_test_images"] = len(sj_test[1])
            res["float_ann_sj_images"] = accuracy(fp, sj_test)
        for mode in args.sj_modes:
            t0 = time.perf_counter()
            sj = bu.SpikingJellySNN(fp, calib, mode=mode, step_mode="s")
            curve = sj_curve(sj, sj_test, args.sj_timesteps)
            res["spikingjelly"].append({"mode": mode, "curve": curve, "seconds": time.perf_counter() - t0})
            log(f"{model}: SpikingJelly {mode}: " + " ".join(f"T{t}={a:.1f}" for t, a in curve.items()))

    ft_split = _subset(data["train"], args.ft_images, args.seed)
    qmodel = fp
    for bits in sorted(args.bits, reverse=True):  # progressive: 4 -> 3 -> 2 bits
        t0 = time.perf_counter()
        qmodel = next_bit_width(qmodel, bits, data, args)
        T = 2**bits - 1
        row = {
            "bits": bits,
            "weight_bits": weight_bits_for(bits, args.weight_bits),
            "T": T,
            "quant_ann": accuracy(qmodel, data["test"]),
            "train_s": time.perf_counter() - t0,
            "curves": {},
            "at_T": {},
            "stats": {},
            "seconds": {},
        }
        grid = sorted({t for t in args.our_timesteps if t <= args.our_max_t} | {T})
        for variant in VARIANTS:
            t1 = time.perf_counter()
            snn = fastsnn.convert_to_snn(qmodel, timesteps=T, signed=variant != "unsigned", compiled=args.compiled)
            if variant == "signed_ft":
                batches = list(loader(ft_split, batch_size=64, shuffle=True, seed=args.seed))
                validate = (lambda s: accuracy(s, data["val"])) if args.validate else None
                reports = fastsnn.layerwise_finetune(
                    qmodel,
                    snn,
                    batches,
                    validate=validate,
                    epochs_per_layer=args.epochs_per_layer[model],
                    lr=args.ft_lr,
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
            row["seconds"][variant] = time.perf_counter() - t1
        if args.stbif:
            t1 = time.perf_counter()
            curve = stbif_curve(bu.STBIFSNN(qmodel, timesteps=T), data["test"], grid)
            row["curves"]["stbif"] = curve
            row["at_T"]["stbif"] = curve[T]
            row["seconds"]["stbif"] = time.perf_counter() - t1
        res["ours"].append(row)
        log(
            f"{model} {bits} bits: ANN {row['quant_ann']:.2f}  T={T}: "
            + "  ".join(f"{v} {a:.2f}" for v, a in row["at_T"].items())
            + f"  ({time.perf_counter() - t0:.0f} s)"
        )
    return res


def summary_rows(res: dict) -> list[dict]:
    """One row per method: its ANN, accuracy at the evaluated T, smallest T within 1 point."""
    rows = []
    float_ann = res.get("float_ann_sj_images", res["float_ann"])  # on the images SpikingJelly ran on
    for sj in res["spikingjelly"]:
        curve = {int(t): a for t, a in sj["curve"].items()}
        rows.append(
            {
                "model": res["model"],
                "method": f"SpikingJelly RateCoding ({sj['mode']})",
                "bits": None,
                "own_ann": float_ann,
                "curve": curve,
                "t_within_own": smallest_t(curve, float_ann),
                "t_within_float": smallest_t(curve, float_ann),
            }
        )
    for row in res["ours"]:
        for v in variants_of(row):
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


def targets(results: list[dict], sj_max_t: int, data: str = "digits") -> list[dict]:
    """The data set's fidelity targets: ``met`` True / False, or None for a value only reported."""
    return (fashion_mnist_targets if data == "fashion_mnist" else digits_targets)(results, sj_max_t)


def fashion_mnist_targets(results: list[dict], sj_max_t: int) -> list[dict]:
    """Issue 12: the 2-bit quantized ANN within 1.5 points of the float ANN; the signed +
    fine-tuned SNN within 0.5 points of its quantized ANN at T = 2^b - 1; SpikingJelly's smallest
    T within 1 point of the float ANN (reported)."""
    out = []
    for res in results:
        m = res["model"]
        two_bit = next((r for r in res["ours"] if r["bits"] == 2), None)
        if two_bit is not None:
            gap = res["float_ann"] - two_bit["quant_ann"]
            out.append(
                {
                    "target": f"{m}: 2-bit quantized ANN within 1.5 points of the float ANN",
                    "value": gap,
                    "met": gap <= 1.5,
                    "note": f"float {res['float_ann']:.2f}, 2-bit {two_bit['quant_ann']:.2f}",
                }
            )
        for row in sorted(res["ours"], key=lambda r: r["bits"]):
            gap = row["quant_ann"] - row["at_T"]["signed_ft"]
            out.append(
                {
                    "target": f"{m}: signed + fine-tuned SNN within 0.5 points of the {row['bits']}-bit ANN "
                    f"at T = {row['T']}",
                    "value": gap,
                    "met": gap <= 0.5,
                    "note": f"ANN {row['quant_ann']:.2f}, SNN {row['at_T']['signed_ft']:.2f} (signed without "
                    f"fine-tuning {row['at_T']['signed']:.2f}, unsigned {row['at_T']['unsigned']:.2f})",
                }
            )
        for r in summary_rows(res):
            if r["method"].startswith("SpikingJelly RateCoding"):
                t = r["t_within_own"]
                out.append(
                    {
                        "target": f"{m}: {r['method']}: smallest T within 1 point of its float ANN (reported)",
                        "value": t,
                        "met": None,
                        "note": f"float ANN {r['own_ann']:.2f}"
                        + (f", T={t}: {r['curve'][t]:.2f}" if t is not None else f"; none up to {sj_max_t}"),
                    }
                )
    return out


def digits_targets(results: list[dict], sj_max_t: int) -> list[dict]:
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


def _header(result: dict) -> list[str]:
    cfg = result["config"]
    n_test = result["splits"]["test"]
    fine_tuning = (
        f"fine-tuning at T = 2^b - 1 ({', '.join(f'{m}: {n} epoch(s)/layer' for m, n in cfg['epochs_per_layer'].items() if m in cfg['models'])}"
        f"{', validation-gated' if cfg['validate'] else ''}, lr {cfg.get('ft_lr', 1e-3):g}"
    )
    if cfg["data"] == "digits":
        return [
            f"### Fidelity vs latency (scikit-learn digits at 32x32, {n_test} test images: "
            f"one image = {100 / n_test:.2f} points)",
            "",
            f"Activations quantized to b bits, weights {'quantized (APoT, b bits)' if cfg['weight_bits'] == 'same' else 'full precision'}; "
            f"{cfg['fp_epochs']} float epochs, then {cfg['q_epochs']} epochs per bit width (4 -> 3 -> 2); "
            f"{fine_tuning}). Accuracy in %.",
            "",
        ]
    sp = result["splits"]
    env = result["environment"]
    sj_images = next((r["sj_test_images"] for r in result["results"] if "sj_test_images" in r), None)
    return [
        f"### Fidelity vs latency on Fashion-MNIST (zero-padded to 32x32; {n_test} test images: "
        f"one image = {100 / n_test:.2f} points)",
        "",
        f"Data: fixed random subsets (seed {cfg['subset_seed']}) of the splits of `data=fashion_mnist`: "
        f"{sp['train']} training and {sp['val']} validation images of the official training set, {n_test} of the "
        f"official test set; no augmentation. Activations quantized to b bits, weights "
        + (
            "quantized (APoT, max(b, 2) bits; first conv and last layer 8-bit, max-scaled)"
            if cfg["weight_bits"] == "same"
            else "full precision"
        )
        + f"; {cfg['fp_epochs']} float epochs (lr {cfg['lr']}), then {cfg['q_epochs']} epochs per bit width "
        f"(lr {cfg['q_lr']}, progressive: {' -> '.join(str(b) for b in sorted(cfg['bits'], reverse=True))}), SGD + "
        f"cosine, batch 64; {fine_tuning}, on {cfg['ft_images']} training images). "
        + (
            f"SpikingJelly RateCoding on a fixed random subset of {sj_images} of these test images. "
            if sj_images
            else ""
        )
        + "Accuracy in %.",
        "",
        f"Device: {env['cpu']}, {env['threads']} torch thread(s); load average (1 min) {result['load']['start']:.2f} "
        f"at the start, {result['load']['end']:.2f} at the end, {result['load']['mean']:.2f} on average "
        f"(sampled every {result['load']['every_s']:g} s); run time {result['seconds'] / 60:.1f} min.",
        "",
    ]


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = _header(result)
    for res in result["results"]:
        lines += [f"#### {res['model']} (width {res['width']:g}): float ANN {res['float_ann']:.2f}", ""]
        sj_ts = cfg["sj_timesteps"]
        if res["spikingjelly"]:
            if "sj_test_images" in res:
                lines += [
                    f"SpikingJelly on {res['sj_test_images']} test images (float ANN on them: "
                    f"{res['float_ann_sj_images']:.2f}):",
                    "",
                ]
            lines += [
                "| SpikingJelly mode | " + " | ".join(f"T={t}" for t in sj_ts) + " |",
                "|---|" + "---|" * len(sj_ts),
            ]
            for sj in res["spikingjelly"]:
                curve = {int(t): a for t, a in sj["curve"].items()}
                lines.append(f"| {sj['mode']} | " + " | ".join(f"{curve[t]:.2f}" for t in sj_ts) + " |")
            lines.append("")
        stbif = any("stbif" in row["at_T"] for row in res["ours"])
        lines += [
            "| bits | quantized ANN | T | SNN unsigned | SNN signed | SNN signed + FT "
            + ("| SJ STBIFNode " if stbif else "")
            + "| spike rate (neg) | SOPs / image | energy SNN / ANN (estimate) |",
            "|---|---|---|---|---|---|" + ("---|" if stbif else "") + "---|---|---|",
        ]
        for row in res["ours"]:
            st = row["stats"].get("signed_ft", {})
            lines.append(
                f"| {row['bits']} | {row['quant_ann']:.2f} | {row['T']} | {row['at_T']['unsigned']:.2f} "
                f"| {row['at_T']['signed']:.2f} | {row['at_T']['signed_ft']:.2f} "
                + (f"| {row['at_T']['stbif']:.2f} " if stbif else "")
                + f"| {st.get('spike_rate', float('nan')):.3f} ({st.get('neg_rate', float('nan')):.4f}) "
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
            for v in variants_of(row):
                curve = {int(t): a for t, a in row["curves"][v].items()}
                lines.append(
                    f"| {VARIANT_LABELS[v]}, {row['bits']}-bit | "
                    + " | ".join(f"{curve[t]:.2f}" if t in curve else "" for t in grid)
                    + " |"
                )
        if any("finetune_layers" in row for row in res["ours"]) and cfg["data"] != "digits":
            lines += [
                "",
                "Layer-wise fine-tuning, per layer: MSE to the quantized ANN's activation before -> after "
                "(undone: the update was reverted, by the validation gate or because the MSE went up):",
                "",
                "| bits | " + " | ".join(f"L{i + 1}" for i in range(len(res["ours"][0]["finetune_layers"]))) + " |",
                "|---|" + "---|" * len(res["ours"][0]["finetune_layers"]),
            ]
            for row in res["ours"]:
                lines.append(
                    f"| {row['bits']} | "
                    + " | ".join(
                        f"{r['mse_before']:.2g} -> {r['mse_after']:.2g}{'' if r['kept'] else ' (undone)'}"
                        for r in row["finetune_layers"]
                    )
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
            met = "reported" if t["met"] is None else ("yes" if t["met"] else "no")
            lines.append(f"| {t['target']} | {val} ({t['note']}) | {met} |")
    lines += [
        "",
        "`-`: not within 1 point at any T evaluated. Energy: " + result["energy_note"],
        "",
        f"Command: `{result['command']}`",
    ]
    if result.get("figure"):
        lines += ["", f"Figure: `{result['figure']}`"]
    return "\n".join(lines)


PLOT_STYLES = {
    "unsigned": dict(linestyle=":", marker="v"),
    "signed": dict(linestyle="--", marker="s"),
    "signed_ft": dict(linestyle="-", marker="o"),
    "stbif": dict(linestyle="-.", marker="x"),
}
PLOT_COLORS = {"unsigned": "tab:orange", "signed": "tab:blue", "signed_ft": "tab:green", "stbif": "tab:purple"}
SJ_COLORS = {"max": "tab:gray", "99.9%": "tab:brown"}


def plot_curves(result: dict, path: Path) -> bool:
    """Accuracy vs time step: one panel per model and bit width, one line per method (our SNNs,
    SpikingJelly's ST-BIF on the same quantized ANN, SpikingJelly's rate coding of the float ANN),
    the float and the quantized ANN as horizontal lines; one legend for all panels. Returns False
    when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        bu.log("matplotlib not installed: no figure (pip install -e '.[bench]')")
        return False
    results = result["results"]
    n_cols = max(len(res["ours"]) for res in results)
    fig, axes = plt.subplots(
        len(results), n_cols, figsize=(max(4.8 * n_cols, 7.5), 3.6 * len(results) + 1.4), squeeze=False
    )
    handles = {}
    for i, res in enumerate(results):
        rows = sorted(res["ours"], key=lambda r: r["bits"])
        for j in range(n_cols):
            ax = axes[i][j]
            if j >= len(rows):
                ax.axis("off")
                continue
            row = rows[j]
            for v in variants_of(row):
                curve = sorted((int(t), a) for t, a in row["curves"][v].items())
                ts, accs = zip(*curve, strict=True)
                label = VARIANT_LABELS[v].replace("Fast-SNN ", "ours: ")
                handles[label] = ax.plot(
                    ts, accs, color=PLOT_COLORS[v], label=label, markersize=4, linewidth=1.4, **PLOT_STYLES[v]
                )[0]
            for sj in res["spikingjelly"]:
                curve = sorted((int(t), a) for t, a in sj["curve"].items())
                ts, accs = zip(*curve, strict=True)
                label = f"SpikingJelly RateCoding ({sj['mode']}) of the float ANN"
                handles[label] = ax.plot(
                    ts, accs, color=SJ_COLORS.get(sj["mode"], "tab:red"), marker="d", markersize=4, linewidth=1.2
                )[0]
            handles["float ANN"] = ax.axhline(res["float_ann"], color="black", linewidth=1.0, linestyle=(0, (5, 3)))
            handles["quantized ANN (b bits)"] = ax.axhline(
                row["quant_ann"], color="tab:red", linewidth=1.0, linestyle=(0, (1, 2))
            )
            ax.axvline(row["T"], color="0.8", linewidth=0.8, zorder=0)
            ax.set_xscale("log", base=2)
            t_max = max([max(int(t) for t in row["curves"]["signed_ft"])] + [max(result["config"]["sj_timesteps"])])
            ax.set_xlim(0.8, t_max * 1.25)
            ours_at_t = [row["at_T"][v] for v in ("signed", "signed_ft") if v in row["at_T"]]
            tops = [res["float_ann"], row["quant_ann"]] + [a for c in row["curves"].values() for a in c.values()]
            bottom = min([row["quant_ann"], *ours_at_t]) - 12.0
            ax.set_ylim(max(0.0, bottom), min(100.0, max(tops) + 1.5))
            ax.set_title(
                f"{res['model']} (width {res['width']:g}), {row['bits']}-bit, T = {row['T']}\n"
                f"float ANN {res['float_ann']:.2f}, {row['bits']}-bit ANN {row['quant_ann']:.2f}",
                fontsize=9,
            )
            ax.set_xlabel("time step t (log scale)", fontsize=8)
            ax.set_ylabel("accuracy after t steps (%)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="major", linewidth=0.4, alpha=0.6)
    data = "Fashion-MNIST" if result["data"] == "fashion_mnist" else "digits"
    fig.suptitle(f"{data}, {result['splits']['test']} test images: accuracy vs time step", fontsize=11)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=7.5, frameon=False)
    fig.tight_layout(rect=(0, 1.1 / (3.6 * len(results) + 1.4), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    bu.log(f"figure: {path}")
    return True


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=list(DATASETS), default="digits", help="data set (default digits)")
    p.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="Fashion-MNIST: folder of the idx files (default data/fashion_mnist, else Debian's "
        "/usr/share/datasets/fashion-mnist, as conf/data/fashion_mnist.yaml)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short run: fewer epochs, 2 bits only, 1 fine-tuning epoch per layer, shorter curves "
        "(digits < 10 min; Fashion-MNIST: smaller subsets, < 15 min)",
    )
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--bits", nargs="+", type=int, default=None, help="activation bits (default 2 3 4; quick 2)")
    p.add_argument(
        "--weight-bits",
        choices=("none", "same"),
        default=None,
        help="'same': also quantize the weights to max(b, 2) bits (APoT, 8-bit first/last layer); "
        "'none': float weights (default: none on digits, same on Fashion-MNIST)",
    )
    p.add_argument("--fp-epochs", type=int, default=None, help="float ANN epochs (default 20 / 6, quick 4 / 3)")
    p.add_argument("--q-epochs", type=int, default=None, help="epochs per bit width (default 8 / 3, quick 2)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--q-lr", type=float, default=0.02)
    p.add_argument("--alpha-init", type=float, default=2.0)
    p.add_argument(
        "--float-clip",
        action="store_true",
        help="train the float ANN with clipped ReLUs whose clip is learned (QuantReLU(bits=None), as "
        "run.py bits=32 and docs/method.md's progressive training), so the quantized ANNs start from learned clips "
        "(default: plain ReLUs, clips start at --alpha-init; SpikingJelly's rate coding needs plain ReLUs)",
    )
    p.add_argument(
        "--epochs-per-layer",
        nargs="+",
        default=None,
        metavar="[MODEL=]N",
        help="fine-tuning epochs per layer, one number or per model (digits: vgg11=1 resnet20=4: "
        "docs/method.md gives 1 by default and up to 8 for deep nets; ResNet-20 has 19 neuron layers; "
        "Fashion-MNIST: 1)",
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
        help="T values for SpikingJelly (default 1 3 7 ... 255; quick up to 31 / 63)",
    )
    p.add_argument(
        "--sj-images",
        type=int,
        default=None,
        help="SpikingJelly runs on N of the test images, a fixed random subset (default: all; Fashion-MNIST 500)",
    )
    stbif = p.add_mutually_exclusive_group()
    stbif.add_argument(
        "--stbif",
        dest="stbif",
        action="store_true",
        default=None,
        help="also simulate each quantized ANN with SpikingJelly's STBIFNode (default on Fashion-MNIST)",
    )
    stbif.add_argument("--no-stbif", dest="stbif", action="store_false")
    p.add_argument(
        "--our-timesteps",
        nargs="+",
        type=int,
        default=None,
        help="T values at which to read our SNNs (digits: 1 2 3 4 5 7 15 31 63; Fashion-MNIST: 1 2 3 4 5 7 10 15)",
    )
    p.add_argument("--our-max-t", type=int, default=None, help="read our SNNs up to this T (default 63 / 15, quick 15)")
    p.add_argument("--stats-images", type=int, default=None, help="test images for spike statistics (256, quick 128)")
    p.add_argument("--width-scale", type=float, default=1.0, help="scale both nets' widths (tests use tiny nets)")
    p.add_argument("--subset", type=int, default=None, help="use only this many images of each split (tests)")
    for split, full, quick in (("train", 5000, 3000), ("val", 500, 500), ("test", 1000, 1000)):
        p.add_argument(
            f"--{split}-images",
            type=int,
            default=None,
            help=f"Fashion-MNIST: {split} images, a fixed random subset (default {full}, quick {quick}; 0: all)",
        )
    p.add_argument(
        "--ft-images",
        type=int,
        default=None,
        help="training images for the layer-wise fine-tuning (digits: all; Fashion-MNIST 512)",
    )
    p.add_argument("--ft-lr", type=float, default=1e-3, help="fine-tuning learning rate (docs/method.md: 1e-3)")
    p.add_argument("--subset-seed", type=int, default=0, help="Fashion-MNIST: seed of the fixed subsets")
    p.add_argument(
        "--val-size",
        type=int,
        default=5000,
        help="Fashion-MNIST: images of the official training set held out for validation (data.val_size)",
    )
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=None, help="write the PNG figure")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results/")
    p.add_argument(
        "--name", default=None, help="output file stem (default fidelity[_fashion_mnist], with _quick for --quick)"
    )
    args = p.parse_args(argv)
    ds = DATASETS[args.data]
    q = int(args.quick)  # index into the (full, quick) defaults

    def pick(value, key):
        return value if value is not None else ds[key][q]

    args.widths = dict(ds["widths"])
    args.bits = args.bits or ([2] if args.quick else [2, 3, 4])
    args.weight_bits = args.weight_bits or ds["weight_bits"]
    args.fp_epochs = pick(args.fp_epochs, "fp_epochs")
    args.q_epochs = pick(args.q_epochs, "q_epochs")
    args.sj_timesteps = sorted(args.sj_timesteps or [t for t in SJ_TIMESTEPS if t <= ds["sj_max_t"][q]])
    args.our_max_t = args.our_max_t or ds["our_max_t"][q]
    args.stats_images = pick(args.stats_images, "stats_images")
    args.our_timesteps = sorted(args.our_timesteps or ds["our_timesteps"])
    for split in ("train", "val", "test", "ft"):
        value = getattr(args, f"{split}_images")
        setattr(args, f"{split}_images", ds["images"][split][q] if value is None else (value or None))
    if args.sj_images is None and "sj" in ds["images"]:
        args.sj_images = ds["images"]["sj"][q]
    args.stbif = ds["stbif"] if args.stbif is None else args.stbif
    if args.float_clip and args.sj_modes:
        p.error("--float-clip trains clipped ReLUs, which SpikingJelly's rate coding does not convert: add --sj-modes")
    args.plot = ds["plot"] if args.plot is None else args.plot
    args.name = args.name or (ds["stem"] + ("_quick" if args.quick else ""))
    epl = dict(ds["epochs_per_layer"][q])
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


def merge(paths: list[Path], name: str | None, out_dir: Path | None, plot: bool | None) -> dict:
    """One result from several runs of the same configuration on different ``--models`` (e.g. one
    process per model on a shared machine): their results in order, the longest run time, the load
    samples of all of them, recomputed summary, targets, markdown and figure."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    keys = ("data", "splits", "data_source")
    for other in parts[1:]:
        if any(other.get(k) != first.get(k) for k in keys):
            raise SystemExit(f"--merge: {other['command']!r} ran on other data than {first['command']!r}")
    result = dict(first)
    result["results"] = [res for part in parts for res in part["results"]]
    result["config"] = dict(first["config"], models=[res["model"] for res in result["results"]])
    result["merged_from"] = [{"command": p["command"], "seconds": p["seconds"], "load": p["load"]} for p in parts]
    result["command"] = " ; ".join(p["command"] for p in parts) + " ; " + bu.command_line()
    result["seconds"] = max(p["seconds"] for p in parts)
    samples = [x for p in parts for x in p["load"]["samples"]]
    result["load"] = dict(
        first["load"],
        samples=samples,
        start=max(p["load"]["start"] for p in parts),
        end=parts[-1]["load"]["end"],
        mean=sum(samples) / len(samples) if samples else float("nan"),
        max=max(samples) if samples else float("nan"),
    )
    result["summary"] = [r for res in result["results"] for r in summary_rows(res)]
    result["targets"] = targets(result["results"], max(first["config"]["sj_timesteps"]), first["data"])
    name = name or first["config"]["name"]
    out = Path(out_dir) if out_dir is not None else bu.RESULTS_DIR
    result["figure"] = None
    if plot if plot is not None else first["config"].get("plot"):
        png = out / f"{name}.png"
        if plot_curves(result, png):
            result["figure"] = str(png.relative_to(bu.REPO_ROOT)) if png.is_relative_to(bu.REPO_ROOT) else str(png)
    bu.write_results(name, result, markdown(result), out)
    return result


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--replot" in argv:  # redraw the figure of a saved result
        p = argparse.ArgumentParser(description="redraw the figure of a saved result")
        p.add_argument("--replot", type=Path, required=True, help="a result JSON; the PNG goes next to it")
        m = p.parse_args(argv)
        result = json.loads(m.replot.read_text())
        plot_curves(result, m.replot.with_suffix(".png"))
        return result
    if "--merge" in argv:
        p = argparse.ArgumentParser(description="merge results of several --models runs")
        p.add_argument("--merge", nargs="+", type=Path, required=True)
        p.add_argument("--name", default=None)
        p.add_argument("--out-dir", type=Path, default=None)
        p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=None)
        m = p.parse_args(argv)
        return merge(m.merge, m.name, m.out_dir, m.plot)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = bu.log
    if (args.sj_modes or args.stbif) and bu.spikingjelly_version() is None:
        log("SpikingJelly not installed: skipped (pip install -e '.[bench]')")
        args.sj_modes, args.stbif = [], False
    start = time.perf_counter()
    with bu.LoadSampler() as load:
        data, source = load_data(args)
        results = [run_model(m, data, args, log) for m in args.models]
    from fastsnn.stats import ENERGY_NOTE

    result = {
        "benchmark": "fidelity",
        "data": args.data,
        "data_source": source,
        "command": bu.command_line(),
        "config": vars(args),
        "environment": bu.environment("cpu"),
        "splits": {k: len(v[1]) for k, v in data.items()},
        "results": results,
        "spikingjelly_skipped": not args.sj_modes,
        "energy_note": ENERGY_NOTE,
        "seconds": time.perf_counter() - start,
        "load": load.summary(),
    }
    result["summary"] = [r for res in results for r in summary_rows(res)]
    result["targets"] = targets(results, max(args.sj_timesteps), args.data)
    if args.plot:
        out_dir = Path(args.out_dir) if args.out_dir is not None else bu.RESULTS_DIR
        png = out_dir / f"{args.name}.png"
        if plot_curves(result, png):
            result["figure"] = str(png.relative_to(bu.REPO_ROOT)) if png.is_relative_to(bu.REPO_ROOT) else str(png)
    bu.write_results(args.name, result, markdown(result), args.out_dir)
    return result


if __name__ == "__main__":
    main()
