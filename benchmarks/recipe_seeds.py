"""Run-to-run noise of an experiment recipe: its progressive chain through ``run.py``, once per seed.

For each seed, the four commands of ``conf/experiment/<experiment>.yaml`` run in turn
(32-bit ``stages=[train]``, then 4, 3 and 2 bits, each from the previous run's last checkpoint),
and each run's ``results.json`` is read back: the quantized ANN's test accuracy at every bit width
and the signed SNN before and after layer-wise fine-tuning at T = 2^b - 1. The table puts the
seeds side by side with their spread (largest minus smallest), the run-to-run noise that a
reproduction of the fidelity table's rows is judged against.

    python benchmarks/recipe_seeds.py --experiment fashion_mnist_resnet20 --seeds 0 1

Needs the Fashion-MNIST files (``apt-get install dataset-fashion-mnist``). The runs go to
``--out-dir`` (default ``outputs/recipe_seeds``); an existing run with a ``results.json`` is
read, not repeated, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_utils import REPO_ROOT, LoadSampler, command_line, environment, log, write_results  # noqa: E402

FLOAT_STAGE = ["bits=32", "stages=[train]", "trainer.max_epochs=6", "task.module.optimizer.lr=0.05"]
BITS = (4, 3, 2)  # progressive, each from the previous bit width's last checkpoint
COLUMNS = [("ann", "quantized ANN"), ("snn", "signed SNN"), ("snn_finetuned", "signed + FT")]


def run_stage(experiment: str, seed: int, run_dir: Path, overrides: list[str], threads: int) -> dict:
    """One ``run.py`` call (skipped when ``run_dir`` already holds its results); its results.json."""
    results = run_dir / "results.json"
    if not results.exists():
        cmd = [sys.executable, "run.py", f"experiment={experiment}", f"seed={seed}", "logger=none"]
        cmd += [f"hydra.run.dir={run_dir}", *overrides]
        log(f"[seed {seed}] {' '.join(cmd[1:])}")
        start = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        log(f"[seed {seed}] done in {time.perf_counter() - start:.0f} s")
    return json.loads(results.read_text())


def stage_seconds(run_dir: Path) -> float:
    """Wall time of a finished run: from Hydra's config (written first) to its results.json (last)."""
    return (run_dir / "results.json").stat().st_mtime - (run_dir / ".hydra" / "config.yaml").stat().st_mtime


def run_chain(experiment: str, seed: int, out_dir: Path, threads: int) -> dict:
    """The recipe's progressive chain for one seed: {bits: results.json}."""
    runs, previous = {}, None
    for bits in (32, *BITS):
        run_dir = out_dir / f"seed{seed}" / f"bits{bits}"
        if previous is None:
            overrides = FLOAT_STAGE
        else:
            overrides = [
                f"bits={bits}",
                f"init_from={run_dir.parent / f'bits{previous}' / 'checkpoints' / 'last.ckpt'}",
            ]
        runs[bits] = run_stage(experiment, seed, run_dir, overrides, threads)
        runs[bits]["stage_seconds"] = stage_seconds(run_dir)
        previous = bits
    return runs


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown(experiment: str, seeds: list[int], chains: dict, env: dict, load: dict, minutes: float) -> str:
    lines = [
        f"### Run-to-run noise of `experiment={experiment}` ({len(seeds)} seeds)",
        "",
        f"Command: `{command_line()}`. Device: {env.get('device')}; load average {load['mean']:.2f} on average "
        f"(max {load['max']:.2f}) while this call ran ({minutes:.1f} min). Each seed's chain of four runs took "
        + ", ".join(f"{sum(r['stage_seconds'] for r in chains[s].values()) / 60:.0f} min (seed {s})" for s in seeds)
        + ". Test accuracy in % on the official test set (10,000 images: one image = 0.01 points).",
        "",
        "| bits | T | metric | " + " | ".join(f"seed {s}" for s in seeds) + " | spread |",
        "|---|---|---|" + "---|" * (len(seeds) + 1),
    ]
    lines.append(
        "| 32 | - | float ANN | "
        + " | ".join(percent(chains[s][32].get("ann")) for s in seeds)
        + f" | {spread([chains[s][32].get('ann') for s in seeds])} |"
    )
    for bits in BITS:
        for key, name in COLUMNS:
            values = [chains[s][bits].get(key) for s in seeds]
            row = f"| {bits} | {chains[seeds[0]][bits].get('timesteps')} | {name} | "
            lines.append(row + " | ".join(percent(v) for v in values) + f" | {spread(values)} |")
    return "\n".join(lines)


def spread(values: list) -> str:
    present = [v for v in values if v is not None]
    return f"{100 * (max(present) - min(present)):.2f}" if len(present) > 1 else "-"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="fashion_mnist_resnet20")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "outputs" / "recipe_seeds")
    parser.add_argument("--name", default=None, help="result name (default recipe_seeds_<experiment>)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with LoadSampler() as load:
        chains = {s: run_chain(args.experiment, s, args.out_dir / args.experiment, args.threads) for s in args.seeds}
    env = environment()
    env["device"] = f"CPU ({env.get('cpu')}, {args.threads} thread(s) per run)"
    minutes = (time.perf_counter() - start) / 60
    md = markdown(args.experiment, args.seeds, chains, env, load.summary(), minutes)
    result = {"environment": env, "args": vars(args), "load": load.summary(), "minutes": minutes, "runs": chains}
    write_results(args.name or f"recipe_seeds_{args.experiment}", result, md)


if __name__ == "__main__":
    main()
