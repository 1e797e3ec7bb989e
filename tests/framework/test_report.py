"""`python -m fastsnn.report`: one table and one figure over runs, multiruns and sweeps."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastsnn.report import main

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMES = ["train_s", "convert_s", "finetune_s"]


def write_run(path: Path, *, timesteps: int = 3, seed: int = 1, offset: float = 0.0, **extra) -> Path:
    """A results.json as a run writes it, with synthetic values (``offset`` shifts every metric)."""
    curve = [round(0.5 + offset + 0.1 * t / timesteps, 6) for t in range(1, timesteps + 1)]
    results = {
        "task": "classification",
        "model": "vgg11",
        "data": "digits",
        "bits": {3: 2, 7: 3}[timesteps],
        "timesteps": timesteps,
        "signed": True,
        "seed": seed,
        "overrides": ["debug=tiny", f"timesteps={timesteps}", f"seed={seed}", f"paths.output_dir={path}"],
        "metric": "acc",
        "ann": 0.7 + offset,
        "snn": curve[-1],
        "snn_per_step": curve,
        "snn_finetuned": curve[-1] + 0.05,
        "snn_finetuned_per_step": [v + 0.05 for v in curve],
        "spike_rate": 0.1 + offset,
        "time_s": {"train": 10.0 + seed, "test_ann": 1.0, "convert_and_test_snn": 2.0, "finetune": 5.0},
        **extra,
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results))
    return path / "results.json"


def table(markdown: str) -> list[dict]:
    """The rows of the Markdown table, as dicts of its header's cells."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def report(*paths: Path) -> tuple[list[dict], str]:
    """Report on ``paths``; the table and the Markdown written into the first."""
    assert main([str(p) for p in paths]) == 0
    markdown = (Path(paths[0]) / "report.md").read_text()
    return table(markdown), markdown


def test_rows_are_the_varying_settings_and_seeds_are_averaged(tmp_path):
    sweep = tmp_path / "multirun"
    for job, (t, seed, offset) in enumerate([(3, 1, 0.0), (3, 2, 0.1), (7, 1, 0.2), (7, 2, 0.2)]):
        write_run(sweep / str(job), timesteps=t, seed=seed, offset=offset)
    rows, markdown = report(sweep)
    # bits and timesteps differ (seed is averaged over); task, model, debug=... are common
    assert list(rows[0]) == ["bits", "timesteps", "n", "ann", "snn", "snn_finetuned", "spike_rate", *TIMES]
    assert "common: task=classification, model=vgg11, data=digits, signed=true, debug=tiny" in markdown
    assert "paths.output_dir" not in markdown  # where a run writes is not a setting
    assert [(r["bits"], r["timesteps"], r["n"]) for r in rows] == [("2", "3", "2"), ("3", "7", "2")]
    assert rows[0]["ann"] == "0.7500 (0.7000–0.8000)"  # mean (min–max) of the two seeds
    assert rows[1]["ann"] == "0.9000"  # equal seeds: no spread
    assert rows[0]["train_s"] == "11.5 (11.0–12.0)" and rows[0]["convert_s"] == "2.0"
    assert "runs read: 4" in markdown and "command: `python -m fastsnn.report " + str(sweep) + "`" in markdown
    assert "machine: " in markdown


def test_overrides_that_differ_are_columns_and_seed_alone_gives_one_row(tmp_path):
    write_run(tmp_path / "a", seed=1, overrides=["finetune.lr=0.01", "seed=1"])
    write_run(tmp_path / "b", seed=2, overrides=["finetune.lr=0.001", "seed=2"])
    write_run(tmp_path / "c", seed=3, overrides=["finetune.lr=0.01", "seed=3"])
    rows, _ = report(tmp_path)
    assert [(r["finetune.lr"], r["n"]) for r in rows] == [("0.001", "1"), ("0.01", "2")]
    only_seeds = tmp_path / "seeds"
    for seed in (1, 2, 3):
        write_run(only_seeds / str(seed), seed=seed, offset=seed / 100)
    rows, markdown = report(only_seeds)
    assert len(rows) == 1 and rows[0]["n"] == "3" and rows[0]["ann"] == "0.7200 (0.7100–0.7300)"
    assert "common: task=classification" in markdown and "seed=" not in markdown.split("common: ")[1].split("\n")[0]


def test_other_methods_are_columns_in_a_stable_order_and_curves_in_the_figure(tmp_path):
    stbif = [min(1.0, t / 100) for t in range(1, 65)]  # a peer method's curve may be far longer than T
    extra = {"stbif": 0.61, "stbif_per_step": stbif, "rate_max": 0.4, "rate_max_per_step": [0.1, 0.3, 0.4]}
    times = {"train": 1.0, "compare": 30.0, "test_stbif": 2.0}
    write_run(tmp_path / "0", **extra, time_s=times)
    write_run(tmp_path / "1", seed=2, **extra, time_s={**times, "compare": 40.0})
    rows, _ = report(tmp_path)
    assert list(rows[0]) == [
        "n",
        "ann",
        "snn",
        "snn_finetuned",
        "rate_max",
        "stbif",
        "spike_rate",
        "train_s",
        "compare_s",
    ]
    assert (
        rows[0]["stbif"] == "0.6100" and rows[0]["rate_max"] == "0.4000" and rows[0]["compare_s"] == "35.0 (30.0–40.0)"
    )
    png = (tmp_path / "report.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


def test_the_csv_has_the_rows_of_the_markdown(tmp_path):
    for job, (t, seed) in enumerate([(3, 1), (3, 2), (7, 1)]):
        write_run(tmp_path / "sweep" / str(job), timesteps=t, seed=seed, offset=seed / 10)
    rows, _ = report(tmp_path / "sweep")
    with (tmp_path / "sweep" / "report.csv").open() as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows) == 2
    for md, row in zip(rows, written):
        assert (md["timesteps"], md["n"]) == (row["timesteps"], row["n"])
        for column in ("ann", "snn", "snn_finetuned", "spike_rate"):
            assert md[column].split(" ")[0] == f"{float(row[column]):.4f}"
    assert float(written[0]["ann_min"]) == pytest.approx(0.8) and float(written[0]["ann_max"]) == pytest.approx(0.9)


def test_out_and_metric_pick_where_and_what(tmp_path):
    run = write_run(tmp_path / "run", ann_metrics={"ann/test_acc_top5": 0.99})
    out = tmp_path / "elsewhere"
    assert main([str(run), "--out", str(out), "--metric", "acc_top5"]) == 0
    rows = table((out / "report.md").read_text())
    assert rows[0]["ann"] == "0.9900" and rows[0]["snn"] == "-"  # the SNN passes logged no top-5 here
    assert {p.name for p in out.iterdir()} == {"report.md", "report.csv", "report.png"}


def test_a_path_without_results_is_a_clear_error_and_bad_json_is_skipped(tmp_path, capsys, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert f"no results.json found under {empty}" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    write_run(tmp_path / "runs" / "0")
    (tmp_path / "runs" / "1").mkdir()
    (tmp_path / "runs" / "1" / "results.json").write_text('{"task": ')  # a job killed while writing
    assert main([str(tmp_path / "runs")]) == 0
    assert "skipping" in caplog.text and str(tmp_path / "runs" / "1" / "results.json") in caplog.text
    assert "runs read: 1" in capsys.readouterr().out


@pytest.mark.slow
def test_a_real_multirun_is_reported_with_its_own_values(tmp_path, tiny):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "FASTSNN_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "run.py"), "-m", *tiny, "seed=1,2", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert [r["seed"] for r in runs] == [1, 2] and all(f"seed={r['seed']}" in r["overrides"] for r in runs)

    command = [sys.executable, "-m", "fastsnn.report", str(sweep)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    markdown = (sweep / "report.md").read_text()
    assert proc.stdout.strip() == markdown.strip()
    (row,) = table(markdown)
    assert row["n"] == "2" and "runs read: 2" in markdown
    for key in ("ann", "snn", "snn_finetuned"):
        values = [r[key] for r in runs]
        assert row[key].split(" ")[0] == f"{sum(values) / 2:.4f}", key
    with (sweep / "report.csv").open() as f:
        (written,) = list(csv.DictReader(f))
    assert float(written["snn_finetuned"]) == pytest.approx(sum(r["snn_finetuned"] for r in runs) / 2)
    assert (sweep / "report.png").read_bytes().startswith(PNG_MAGIC)
