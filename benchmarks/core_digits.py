"""Fast-SNN core on scikit-learn's digits: quantized ANN vs. converted SNNs at 2, 3 and 4 bits.

For the plain and the residual digits CNN (benchmarks/digits_models.py), trains a float model
(clipped ReLUs) once, then for each bit width b quantizes a copy to b bits, trains it, converts
it at T = 2**b - 1 and reports test accuracy of the quantized ANN, the unsigned SNN, the signed
SNN and the signed SNN after layer-wise fine-tuning (docs/method.md §4), with training and
fine-tuning times. Prints a markdown table; ``--out`` also writes the results as JSON.

    python -m benchmarks.core_digits            # full run (a few minutes on 2 CPU cores)
    python -m benchmarks.core_digits --quick    # a smoke run (fewer epochs, 2 bits only)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import fastsnn
from benchmarks.digits_models import MODELS, accuracy, digits_splits, float_model, loader, quantize_and_train


def run(
    model_name: str,
    data: dict,
    bits_list: list[int],
    fp_epochs: int,
    q_epochs: int,
    seed: int,
    width: int,
    alpha_init: float,
    epochs_per_layer: int,
    validate: bool,
) -> list[dict]:
    start = time.perf_counter()
    fp = float_model(model_name, data, fp_epochs, width=width, alpha_init=alpha_init, seed=seed)
    fp_s = time.perf_counter() - start
    fp_acc = accuracy(fp, data["test"])
    rows = []
    for bits in bits_list:
        T = 2**bits - 1
        start = time.perf_counter()
        ann = quantize_and_train(copy.deepcopy(fp), bits, data, q_epochs, seed=seed)
        train_s = fp_s + time.perf_counter() - start
        unsigned = fastsnn.convert_to_snn(ann, timesteps=T, signed=False)
        snn = fastsnn.convert_to_snn(ann, timesteps=T, signed=True)
        row = {
            "model": model_name,
            "bits": bits,
            "T": T,
            "float_ann": fp_acc,
            "quant_ann": accuracy(ann, data["test"]),
            "snn_unsigned": accuracy(unsigned, data["test"]),
            "snn_signed": accuracy(snn, data["test"]),
        }
        batches = list(loader(data["train"], batch_size=64, shuffle=True, seed=seed))
        start = time.perf_counter()
        reports = fastsnn.layerwise_finetune(
            ann,
            snn,
            batches,
            epochs_per_layer=epochs_per_layer,
            validate=(lambda s: accuracy(s, data["val"])) if validate else None,
        )
        row["finetune_s"] = time.perf_counter() - start
        row["snn_finetuned"] = accuracy(snn, data["test"])
        row["train_s"] = train_s
        row["layers"] = [
            {"path": r.path, "mse_before": r.mse_before, "mse_after": r.mse_after, "kept": r.kept} for r in reports
        ]
        stats = fastsnn.spike_stats(snn, data["test"][0][:256])
        row["spike_rate"] = stats["spike_rate"]
        row["neg_rate"] = stats["neg_rate"]
        row["energy_ratio_estimate"] = stats["energy"]["ratio"]
        rows.append(row)
        print(
            f"{model_name} {bits} bits (T={T}): ANN {row['quant_ann']:.2f}  unsigned {row['snn_unsigned']:.2f}  "
            f"signed {row['snn_signed']:.2f}  fine-tuned {row['snn_finetuned']:.2f}  "
            f"kept {sum(r.kept for r in reports)}/{len(reports)} layers",
            file=sys.stderr,
            flush=True,
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | bits | T | float ANN | quantized ANN | SNN unsigned | SNN signed | SNN signed + FT "
        "| layers kept | train (s) | fine-tune (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kept = f"{sum(layer['kept'] for layer in r['layers'])}/{len(r['layers'])}"
        lines.append(
            f"| {r['model']} | {r['bits']} | {r['T']} | {r['float_ann']:.2f} | {r['quant_ann']:.2f} "
            f"| {r['snn_unsigned']:.2f} | {r['snn_signed']:.2f} | {r['snn_finetuned']:.2f} | {kept} "
            f"| {r['train_s']:.1f} | {r['finetune_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run: 2+2 epochs, 2 bits only")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this path")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--bits", nargs="+", type=int, default=None, help="activation bit widths (default 2 3 4)")
    parser.add_argument("--fp-epochs", type=int, default=None, help="full-precision epochs (default 6, quick 2)")
    parser.add_argument(
        "--q-epochs", type=int, default=None, help="quantized epochs per bit width (default 6, quick 2)"
    )
    parser.add_argument("--epochs-per-layer", type=int, default=1, help="fine-tuning epochs per layer")
    parser.add_argument(
        "--validate", action="store_true", help="keep a layer's fine-tuning only if validation accuracy does not drop"
    )
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--alpha-init", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    bits_list = args.bits or ([2] if args.quick else [2, 3, 4])
    fp_epochs = args.fp_epochs if args.fp_epochs is not None else (2 if args.quick else 6)
    q_epochs = args.q_epochs if args.q_epochs is not None else (2 if args.quick else 6)
    torch.set_num_threads(args.threads)

    data = digits_splits(image_size=16, test_fraction=0.25, val_fraction=0.15, split_seed=0)
    start = time.perf_counter()
    rows = []
    for name in args.models:
        rows += run(
            name,
            data,
            bits_list,
            fp_epochs,
            q_epochs,
            args.seed,
            args.width,
            args.alpha_init,
            args.epochs_per_layer,
            args.validate,
        )
    table = markdown(rows)
    print(table)
    print(
        f"\ndigits 16x16, test split {len(data['test'][1])} images; activations quantized, weights "
        f"full precision; {fp_epochs} float + {q_epochs} quantized epochs; fine-tuning "
        f"{args.epochs_per_layer} epoch/layer, lr 1e-3{', validation-gated' if args.validate else ''}; "
        f"train (s) includes the shared float stage; total {time.perf_counter() - start:.0f} s"
    )
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"bits": bits_list, "fp_epochs": fp_epochs, "q_epochs": q_epochs},
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
        "splits": {k: len(v[1]) for k, v in data.items()},
        "rows": rows,
        "table": table,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
