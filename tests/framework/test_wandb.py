"""`logger=wandb`: runs named, grouped and tagged from the resolved settings, the resolved config
logged, the per-step curves as metrics over T. The runs log offline and the tests read the run's
own record (``run-<id>.wandb``), as `wandb sync` would upload it."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2

from tasks.loggers import STEP_AXIS, _log_per_step_curves, run_tags
from tests.helpers import compose_config

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- reading an offline run

# the .wandb file is a LevelDB-style log: a 7-byte file header, then records in 32 KiB blocks, each
# record a 7-byte header (crc32, length, type) and its bytes; a record that does not fit in a block
# is split into FIRST, MIDDLE..., LAST pieces (wandb-core's store, which the Python package no
# longer reads itself)
BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _raw_records(path: Path):
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B run record"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # the tail of a block too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk, pos = data[pos + HEADER : pos + HEADER + length], pos + HEADER + length
        if kind in (FULL, FIRST):
            pending = chunk
        elif kind in (MIDDLE, LAST):
            pending += chunk
        if kind in (FULL, LAST):
            yield pending


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


@dataclass
class OfflineRun:
    """What an offline W&B run recorded: its run record, config updates, history rows, metric axes."""

    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    step_metrics: dict[str, str] = field(default_factory=dict)  # metric -> its x-axis (define_metric)


def read_offline_run(run_dir: Path) -> OfflineRun:
    (store,) = run_dir.glob("run-*.wandb")
    run = OfflineRun()
    for raw in _raw_records(store):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.name, run.group, run.tags = record.run.display_name, record.run.run_group, list(record.run.tags)
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "metric" and record.metric.name:
            run.step_metrics[record.metric.name] = record.metric.step_metric
    return run


def _offline_runs(out_dir: Path) -> list[OfflineRun]:
    return [read_offline_run(d) for d in sorted((out_dir / "wandb").glob("offline-run-*"))]


def _run(tmp_path: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python run.py ...` with W&B offline; its caches and settings under ``tmp_path``."""
    wandb_home = tmp_path / "wandb-home"
    env = {
        **os.environ,
        "FASTSNN_ROOT": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **{f"WANDB_{d}_DIR": str(wandb_home / d.lower()) for d in ("CACHE", "CONFIG", "DATA", "ARTIFACT")},
    }
    cmd = [sys.executable, str(ROOT / "run.py"), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- the tests


@pytest.mark.slow
def test_detection_run_is_named_configured_and_curved_from_the_resolved_settings(tmp_path):
    out = tmp_path / "run"
    proc = _run(
        tmp_path,
        *("task=detection", "model=yolo", "timesteps=7", "debug=tiny", "logger=wandb"),
        *("trainer.accelerator=cpu", f"hydra.run.dir={out}"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = _offline_runs(out)
    results = json.loads((out / "results.json").read_text())

    # bits comes from timesteps=7 (tasks/settings.py): filled in before the logger reads it
    assert run.name == "detection-yolo-b3-T7-s42"
    assert run.group == "detection-yolo"
    assert {"b3", "T7", "signed"} <= set(run.tags)
    assert run.config["bits"] == 3 and run.config["timesteps"] == 7 and run.config["signed"] is True
    assert run.config["snn"]["timesteps"] == 7  # resolved, not "${timesteps}"
    assert run.config["logger"]["wandb"]["name"] == run.name

    curves = {f"per_step/{label}/test_map_50": results[f"{label}_per_step"] for label in ("snn", "snn_finetuned")}
    rows = [row for row in run.history if STEP_AXIS in row]
    assert [row[STEP_AXIS] for row in rows] == list(range(1, 8))
    for key, curve in curves.items():
        assert run.step_metrics[key] == STEP_AXIS, key  # plotted against t, not the trainer's step
        assert [row[key] for row in rows] == pytest.approx(curve), key
    assert re.search(r"wandb sync \S*offline-run-", proc.stdout + proc.stderr)


@pytest.mark.slow
def test_the_jobs_of_a_multirun_share_one_group(tmp_path, tiny):
    sweep = tmp_path / "t_sweep"
    proc = _run(
        tmp_path,
        *("-m", "timesteps=1,3", *tiny, "logger=wandb", "stages=[train,convert]", f"hydra.sweep.dir={sweep}"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [run for job in ("0", "1") for run in _offline_runs(sweep / job)]
    assert [run.name for run in runs] == ["classification-vgg11-b1-T1-s42", "classification-vgg11-b2-T3-s42"]
    assert {run.group for run in runs} == {"classification-t_sweep"}
    assert [run.config["timesteps"] for run in runs] == [1, 3]


def test_group_and_tags_resolve_outside_a_hydra_run(tmp_path):
    """`compose` (no Hydra run): a single run's group; with Hydra's multirun mode, the sweep's."""
    single = compose_config(tmp_path / "a", "logger=wandb", "task=detection", "model=yolo", "tags=[ablation]")
    assert single.logger.wandb.group == "detection-yolo"
    assert list(single.logger.wandb.tags)[-1] == "ablation"
    multi = compose_config(tmp_path / "b", "logger=wandb", "hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}/bits")
    assert multi.logger.wandb.group == "classification-bits"


def test_tags_say_bits_steps_and_neuron():
    assert run_tags(3, 7, True, ["ablation"]) == ["b3", "T7", "signed", "ablation"]
    assert run_tags(32, None, False, []) == ["b32", "unsigned"]  # a full-precision training stage has no T


class _RecordingRun:
    def __init__(self):
        self.axes, self.rows = {}, []

    def define_metric(self, name, step_metric=None, hidden=None):
        self.axes[name] = step_metric

    def log(self, row):
        self.rows.append(row)


def test_per_step_curves_of_different_lengths_share_the_t_axis():
    """Rate coding (compare stage) may run 64 steps where the SNN runs T=3: one row per t."""
    results = {"metric": "acc", "snn_per_step": [0.1, 0.2, 0.3], "rate_max_per_step": [0.0, 0.1, 0.2, 0.25, 0.3]}
    run = _RecordingRun()
    _log_per_step_curves(run, results)
    assert run.axes == {STEP_AXIS: None, "per_step/snn/test_acc": STEP_AXIS, "per_step/rate_max/test_acc": STEP_AXIS}
    assert [r[STEP_AXIS] for r in run.rows] == [1, 2, 3, 4, 5]
    assert [r.get("per_step/snn/test_acc") for r in run.rows] == [0.1, 0.2, 0.3, None, None]
    assert run.rows[-1]["per_step/rate_max/test_acc"] == 0.3
