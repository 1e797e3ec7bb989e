"""Stage time of layer-wise fine-tuning, before and after carrying values from layer to layer.

"Before" is ``fastsnn/finetune.py`` as of ``--before-rev`` (read with ``git show`` into a
temporary module), which simulates the SNN from the input for every layer; "after" is the
current ``fastsnn.layerwise_finetune`` (``cache=None``: the list of batches is cached). Both
tune a copy of the same converted SNN on the same fixed list of batches; the per-layer
reports (MSE before / after, training loss, kept) and the tuned weights are compared.

Models: ResNet-20 (``fastsnn.backbones``, 2-bit, 32x32, batch 64) at T=3 and T=7, and the
default DeepLab-v3 of the segmentation task (``conf/model/deeplabv3.yaml``, 3-bit, 64x64,
batch 16, T=7), with random weights whose batch-norm statistics are calibrated on the random
inputs. No validation pass (``validate=None``): its cost is the same in both versions.

    python benchmarks/finetune_time.py            # the figures in benchmarks/results/finetune_time.*
    python benchmarks/finetune_time.py --quick    # a smoke run (ResNet-20, T=3, 2 batches)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastsnn  # noqa: E402
from benchmarks.bench_utils import REPO_ROOT, LoadSampler, command_line, environment, log, write_results  # noqa: E402
from fastsnn.backbones import create_backbone  # noqa: E402

DEEPLAB = {  # conf/model/deeplabv3.yaml
    "net": {
        "width": 0.25,
        "output_stride": 8,
        "aspp_channels": 256,
        "atrous_rates": [2, 4, 6],
        "dropout": 0.1,
        "stem": "small",
    },
    "quant": {"weight_bits": None, "weight_quant": "apot", "first_last_bits": 8, "alpha_init": 4.0},
    "num_classes": 6,  # conf/data/shapes_seg.yaml: background + 5 shapes
    "finetune_lr": 3e-2,  # conf/task/segmentation.yaml
}


def old_finetune_module(rev: str):
    """``fastsnn/finetune.py`` at git revision ``rev``, imported as a module of the fastsnn package."""
    source = subprocess.run(
        ["git", "show", f"{rev}:fastsnn/finetune.py"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "finetune_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fastsnn._finetune_before", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "fastsnn"
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def calibrate_bn(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    """Batch-norm running statistics of ``model`` on ``batches`` (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in batches:
        model(x)
    model.eval()


def build(name: str, seed: int):
    """``(quantized ANN, input shape, bits, fine-tuning lr)`` for a model name."""
    torch.manual_seed(seed)
    if name == "resnet20":
        fp, shape, lr = create_backbone("resnet20", num_classes=10, in_channels=3), (64, 3, 32, 32), 1e-3
        quant, bits = {"alpha_init": 2.0}, 2
    else:
        from tasks.segmentation.deeplab import DeepLabV3

        fp = DeepLabV3(DEEPLAB["num_classes"], 3, **DEEPLAB["net"])
        shape, lr, quant, bits = (16, 3, 64, 64), DEEPLAB["finetune_lr"], DEEPLAB["quant"], 3
    gen = torch.Generator().manual_seed(seed)
    calibrate_bn(fp, [torch.randn(*shape, generator=gen) for _ in range(4)])
    q = fastsnn.quantize_model(fp, bits, **quant).eval()
    calibrate_alpha(q, torch.randn(*shape, generator=gen))
    return q, shape, lr


@torch.no_grad()
def calibrate_alpha(q: torch.nn.Module, x: torch.Tensor) -> None:
    """Each QuantReLU's clip at the 99th percentile of its positive input on ``x``: spikes in every layer."""
    handles = []
    for m in q.modules():
        if isinstance(m, fastsnn.QuantReLU):

            def hook(m, inputs):
                pos = inputs[0][inputs[0] > 0]
                if pos.numel():
                    m.alpha.fill_(torch.quantile(pos.float()[:100000], 0.99).item())

            handles.append(m.register_forward_pre_hook(hook))
    q(x)
    for h in handles:
        h.remove()


def run_case(name: str, T: int, n_batches: int, before_batches: int, before, args) -> dict:
    q, shape, lr = build(name, args.seed)
    snn = fastsnn.convert_to_snn(q, timesteps=T)
    gen = torch.Generator().manual_seed(args.seed + 1)
    batches = [(torch.randn(*shape, generator=gen),) for _ in range(n_batches)]
    kwargs = {"lr": lr, "measure_batches": args.measure_batches}
    row = {"model": name, "T": T, "batch": shape[0], "image": shape[-1], "layers": None}
    runs = {}
    for label, fn, k in (
        ("before", before.layerwise_finetune, before_batches),
        ("after_same_batches", fastsnn.layerwise_finetune, before_batches),
        ("after", fastsnn.layerwise_finetune, n_batches),
    ):
        if label == "after_same_batches" and before_batches == n_batches:
            continue
        tuned = copy.deepcopy(snn)
        with LoadSampler(every_s=10) as load:
            t0 = time.perf_counter()
            reports = fn(q, tuned, batches[:k], **kwargs)
            seconds = time.perf_counter() - t0
        runs[label] = {
            "batches": k,
            "seconds": seconds,
            "load": load.summary(),
            "reports": [dataclasses.asdict(r) for r in reports],
            "state": tuned.state_dict(),
        }
        row["layers"] = len(reports)
        log(
            f"{name} T={T} {label}: {k} batches, {len(reports)} layers, {seconds:.1f} s, load {load.summary()['mean']:.2f}"
        )
    same = runs.get("after_same_batches", runs["after"])
    row["identical_reports"] = runs["before"]["reports"] == same["reports"]
    row["identical_weights"] = all(
        torch.equal(a, b) for a, b in zip(runs["before"]["state"].values(), same["state"].values())
    )
    for run in runs.values():
        del run["state"]
    row["runs"] = runs
    return row


def markdown(rows: list[dict], env: dict, args) -> str:
    lines = [
        "# Layer-wise fine-tuning: stage time before / after carrying values from layer to layer",
        "",
        f"Command: `{command_line()}`. Before: `fastsnn/finetune.py` at `{args.before_rev}` (simulates the SNN "
        "from the input for every layer); after: the current code (caches the list of batches). "
        f"1 epoch per layer, MSE measured on {args.measure_batches} batches, no validation pass.",
        "",
        f"Machine: {env['cpu']}, {env['threads']} torch thread(s), torch {env['torch']}, commit {env['commit']}. "
        "**The machine is shared with other jobs**: the load average during each run is given next to its "
        "time (1-minute average, sampled every 10 s: mean / max); times on a loaded machine are longer than on "
        "an idle one, for both versions alike.",
        "",
        "| model | T | layers | batch | version | batches | stage time (s) | s / batch | load mean / max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for label, run in r["runs"].items():
            ld = run["load"]
            lines.append(
                f"| {r['model']} | {r['T']} | {r['layers']} | {r['batch']}x{r['image']}px | {label} | {run['batches']} "
                f"| {run['seconds']:.1f} | {run['seconds'] / run['batches']:.2f} | {ld['mean']:.2f} / {ld['max']:.2f} |"
            )
    lines += ["", "Same results: before vs after on the same batches.", ""]
    lines += ["| model | T | identical LayerReports | identical tuned weights |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['T']} | {r['identical_reports']} | {r['identical_weights']} |")
    for r in rows:
        before = r["runs"]["before"]["reports"]
        after = r["runs"].get("after_same_batches", r["runs"]["after"])["reports"]
        lines += ["", f"Per-layer MSE, {r['model']} T={r['T']} ({r['runs']['before']['batches']} batches):", ""]
        lines += ["| layer | before: mse_before -> mse_after (kept) | after: mse_before -> mse_after (kept) |"]
        lines += ["|---|---|---|"]
        for a, b in zip(before, after):
            lines.append(
                f"| {a['path']} | {a['mse_before']:.6g} -> {a['mse_after']:.6g} ({a['kept']}) "
                f"| {b['mse_before']:.6g} -> {b['mse_after']:.6g} ({b['kept']}) |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-20 at T=3 on 2 batches; results not written")
    parser.add_argument("--before-rev", default="00e532d", help="git revision of the 'before' finetune.py")
    parser.add_argument("--resnet-timesteps", type=int, nargs="*", default=[3, 7])
    parser.add_argument("--resnet-batches", type=int, default=8)
    parser.add_argument("--deeplab-batches", type=int, default=16)
    parser.add_argument("--deeplab-before-batches", type=int, default=4, help="the 'before' version on fewer batches")
    parser.add_argument("--no-deeplab", action="store_true")
    parser.add_argument("--measure-batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = old_finetune_module(args.before_rev)
    cases = [("resnet20", T, args.resnet_batches, args.resnet_batches) for T in args.resnet_timesteps]
    if not args.no_deeplab:
        cases.append(("deeplabv3", 7, args.deeplab_batches, args.deeplab_before_batches))
    if args.quick:
        cases, args.measure_batches = [("resnet20", 3, 2, 2)], 1
    rows = [run_case(name, T, n, nb, before, args) for name, T, n, nb in cases]
    env = environment("cpu")
    for r in rows:
        log(f"{r['model']} T={r['T']}: identical reports {r['identical_reports']}, weights {r['identical_weights']}")
    md = markdown(rows, env, args)
    if args.quick:
        print(md)
        return
    write_results("finetune_time", {"environment": env, "args": vars(args), "rows": rows}, md)


if __name__ == "__main__":
    main()
