"""Every `python run.py ...` line of README.md's fenced blocks runs as written and exits 0.

Each command runs in a subprocess, as a user types it, with `debug=tiny` and a few size
overrides appended (a narrow model, tiny synthetic splits, no loader workers, one CPU
process for the recipes' GPU trainers). Commands on data sets that are not on this machine
run against fixtures written in the real formats; the placeholder `logs/...` is filled
in with the latest earlier run of the same block that has the file it names. A command that
asks for GPUs this machine does not have must stop at once, saying so and naming the CPU
override; it then runs with that override.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasks.hardware import gpus_wanted
from tests.classification.test_data import write_cifar10
from tests.classification.test_fashion_mnist import write_fashion
from tests.detection.conftest import VOC_IMAGES, write_voc
from tests.helpers import compose_config
from tests.segmentation.test_data import _write_voc as write_voc_segmentation

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# README lines that are not run here, and why
NOT_RUN = {
    "python run.py -m hydra/launcher=slurm timesteps=3,7,15 hydra.launcher.partition=gpu": (
        "submits jobs to a SLURM cluster (submitit); there is none here. Its config composes in "
        "tests/framework/test_configs.py::test_sweeper_and_slurm_launcher_configs_compose"
    ),
    "python run.py trainer=ddp_cpu": (
        "the same 2-process DDP run is tests/framework/test_cli.py::"
        "test_two_process_ddp_trains_converts_and_finetunes_with_the_carried_values_on_disk"
    ),
    "python run.py trainer=ddp_cpu finetune.cache=disk": (
        "the same 2-process DDP run is tests/framework/test_cli.py::"
        "test_two_process_ddp_trains_converts_and_finetunes_with_the_carried_values_on_disk"
    ),
}
CPU_TRAINER = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto", "trainer.precision=32-true"]
STAGE_KEYS = {
    "train": {"ann", "checkpoint"},
    "convert": {"ann", "snn", "snn_metrics", "snn_per_step", "spike_rate", "sops", "energy_ratio"},
    "compare": {
        "unsigned",
        "unsigned_per_step",
        "stbif",
        "stbif_per_step",
        "rate_max",
        "rate_max_per_step",
        "rate_p999",
        "rate_p999_per_step",
    },
    "finetune": {
        "snn_finetuned",
        "snn_finetuned_metrics",
        "snn_finetuned_per_step",
        "finetune_layers",
        "snn_checkpoint",
    },
    "evaluate": {"ann", "snn", "snn_per_step", "snn_path"},
}


def readme_blocks() -> list[list[str]]:
    """The `python run.py` commands of each fenced block of README.md, without their comments."""
    blocks, block, fenced = [], [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            if fenced and block:
                blocks.append(block)
            block, fenced = [], not fenced
            continue
        if fenced:
            code = line.split(" # ")[0].split("#", 1)[0] if line.lstrip().startswith("python") else line.split(" # ")[0]
            block += [part.strip() for part in code.split("&&") if part.strip().startswith("python run.py")]
    return blocks


def _write_fixtures(data_dir: Path) -> None:
    """The data sets the README's recipes read, as tiny fixtures in their real formats."""
    write_cifar10(data_dir / "cifar10")
    write_fashion(data_dir / "fashion_mnist")
    voc = data_dir / "voc"
    for split in ("test", "trainval"):
        write_voc(voc, "2007", split=split)
    write_voc(voc, "2012", {"2008_000001": VOC_IMAGES["000001"]}, split="trainval")
    write_voc_segmentation(voc, {"train": ["2007_000001", "2007_000002"], "val": ["2007_000003"]})


def _fill_placeholders(args: list[str], earlier: list[Path]) -> list[str]:
    """`key=logs/.../f` -> `key=<the latest earlier run of the block that has f>`."""

    def fill(arg: str) -> str:
        key, _, path = arg.partition("=")
        rest = path.split("logs/.../", 1)[1]
        return f"{key}={next(d / rest for d in reversed(earlier) if (d / rest).exists())}"

    return [fill(a) if "logs/.../" in a else a for a in args]


def _one_job(args: list[str]) -> list[str]:
    """A sweep's overrides with the first value of each swept key (for composing its config)."""
    return [a.split(",", 1)[0] if "=" in a and "," in a and "[" not in a else a for a in args if a != "-m"]


def _size_overrides(args: list[str], out_dir: Path) -> list[str]:
    """What shrinks this command to seconds, read off its composed config."""
    cfg = compose_config(out_dir, *_one_job(args))
    extra = ["debug=tiny", *CPU_TRAINER]
    if "width" in cfg.model.net:
        extra.append("model.net.width=0.125")
    tiny = (("num_workers", 0), ("progress", "false"), ("splits", "{train:8,val:4,test:4}"), ("val_size", 8))
    for key, value in tiny:
        if key in cfg.data:
            extra.append(f"data.{key}={value}")
    if "image_size" in cfg.data and cfg.data.image_size > 64:
        extra.append("data.image_size=64")
    if "crop_size" in cfg.data and cfg.data.crop_size:
        extra.append("data.crop_size=32")
    if "hparams_search=optuna" in args:
        extra.append("hydra.sweeper.n_trials=2")
    return extra


def _expected_keys(args: list[str]) -> set[str]:
    stages = next((a.split("=", 1)[1].strip("[]").split(",") for a in args if a.startswith("stages=")), None)
    return set().union(*(STAGE_KEYS[s] for s in stages or ("train", "convert", "finetune")))


def _results(out_dir: Path, args: list[str]) -> list[tuple[dict, set[str]]]:
    """Each results.json the command wrote, with the keys it must have."""
    chain = next((a.split("=", 1)[1].strip("[]").split(",") for a in args if a.startswith("chain=")), None)
    if chain:  # one run per bit width; the full-precision one only trains
        files = [out_dir / f"b{b}" / "results.json" for b in chain]
        expected = [STAGE_KEYS["train"] if b == "32" else _expected_keys(args) for b in chain]
    else:
        files = sorted(out_dir.glob("*/results.json")) if "-m" in args else [out_dir / "results.json"]
        expected = [_expected_keys(args)] * len(files)
    return [(json.loads(f.read_text()), keys) for f, keys in zip(files, expected) if f.is_file()]


def _wants_gpus(args: list[str], out_dir: Path) -> bool:
    return not torch.cuda.is_available() and gpus_wanted(compose_config(out_dir, *_one_job(args)).trainer) > 0


def _run(argv: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "run.py"), *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_the_not_run_list_names_only_readme_commands():
    documented = {c for block in readme_blocks() for c in block}
    assert set(NOT_RUN) <= documented, set(NOT_RUN) - documented


@pytest.mark.slow
@pytest.mark.parametrize("block", range(len(readme_blocks())))
def test_readme_commands_run_as_written(tmp_path, block):
    _write_fixtures(tmp_path / "data")
    env = {**os.environ, "FASTSNN_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    earlier: list[Path] = []
    for i, command in enumerate(readme_blocks()[block]):
        if command in NOT_RUN:
            continue
        args = _fill_placeholders(shlex.split(command)[2:], earlier)
        out_dir = tmp_path / "runs" / str(i)
        where = f"hydra.sweep.dir={out_dir}" if "-m" in args else f"hydra.run.dir={out_dir}"
        if _wants_gpus(args, out_dir):  # as written: stops before any work, naming the CPU override
            proc = _run([*args, where], tmp_path, env)
            said = proc.stdout + proc.stderr
            assert proc.returncode == 2 and "GPU(s)" in said and "trainer=cpu" in said, said[-2000:]
        argv = [*args, *_size_overrides(args, out_dir), where]
        proc = _run(argv, tmp_path, env)
        print(f"exit {proc.returncode}: {command}")  # the list in a session's note (pytest -s)
        assert proc.returncode == 0, f"{command}\n(run as: {shlex.join(argv)})\n{proc.stderr[-3000:]}"
        results = _results(out_dir, args)
        assert results, f"{command}: no results.json in {out_dir}"
        for res, keys in results:
            missing = keys - {k for k, v in res.items() if v is not None}
            assert not missing, f"{command}: results.json lacks {sorted(missing)}"
        earlier.append(out_dir)


def test_the_python_api_example_runs_as_written():
    text = README.read_text()
    section = text[text.index("## The Python API") :]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md (The Python API)", "exec"), namespace)
    assert namespace["steps"].shape[0] == namespace["snn"].timesteps == 3
