"""`python run.py ...` as users type it: multiruns and 2-process DDP (subprocesses)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, *args, timeout=600):
    env = {**os.environ, "FASTSNN_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_multirun_runs_one_job_per_value_and_survives_a_failing_job(tmp_path, tiny):
    sweep = tmp_path / "sweep"
    proc = _run(tmp_path, "-m", "timesteps=1,5,3", *tiny, "stages=[train,convert]", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/results.json")}
    # job 1 (T=5) is refused with a clear error; the jobs before and after it still ran
    assert sorted(results) == [0, 2]
    assert results[0]["timesteps"] == 1 and results[0]["bits"] == 1
    assert results[2]["timesteps"] == 3 and results[2]["bits"] == 2
    assert "timesteps=5 is not 2**b - 1" in proc.stderr + proc.stdout


def test_two_process_ddp_trains_converts_and_finetunes_with_the_carried_values_on_disk(tmp_path, tiny):
    out = tmp_path / "ddp"
    args = "trainer=ddp_cpu", "finetune.cache=disk", "trainer.enable_progress_bar=false", "logger=csv"
    args = *args, f"hydra.run.dir={out}"
    proc = _run(tmp_path, *tiny, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["snn_finetuned"] is not None and len(results["snn_per_step"]) == 3
    assert results["finetune_world_size"] == 2  # both processes fine-tuned, each on its shard
    log = proc.stderr + proc.stdout + (out / "run.log").read_text()
    assert "2 process(es); carried values" in log and ": on disk (" in log and str(out / "finetune_cache") in log
    assert not [f for f in (out / "finetune_cache").rglob("*") if f.is_file()]  # the files are removed at the end
    assert "world_size: 2" in proc.stderr + proc.stdout or "distributed_backend=gloo" in proc.stderr + proc.stdout
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")  # every stage's processes wrote it
    assert {"ann/test_acc", "snn/test_acc", "snn_finetuned/test_acc"} <= set(header)


def test_user_errors_exit_with_a_message_not_a_traceback(tmp_path, tiny):
    proc = _run(tmp_path, *tiny, "bits=3", "timesteps=15", f"hydra.run.dir={tmp_path / 'bad'}")
    assert proc.returncode == 2
    assert "SettingsError: bits=3 gives T=7" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
