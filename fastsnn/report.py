"""One table and one figure over runs, multiruns and sweeps, from the ``results.json`` every run writes.

Usage::

    python run.py -m seed=1,2 timesteps=3,7 hydra.sweep.dir=logs/sweep
    python -m fastsnn.report logs/sweep                     # -> logs/sweep/report.md, .csv, .png
    python -m fastsnn.report logs/a logs/b/results.json --out reports --metric acc_top5

Each path is a run directory, a multirun or sweep directory (its job directories, at any depth) or
a ``results.json``. The table has one row per setting of what differs between the runs read
(``task``, ``model``, ``data``, ``bits``, ``timesteps``, ``signed`` and the jobs' command-line
overrides); what is equal everywhere is written once, above it. Runs that differ only by ``seed``
share a row: each value is their mean, with its min-max and the number of runs ``n``. The metric
columns are the methods the runs recorded (``ann``, ``snn``, ``snn_finetuned``, then any other
``<method>`` that has a ``<method>_per_step`` curve), the spike rate and the stages' seconds.
``--metric`` picks another test metric the runs logged (default: each run's own, e.g. acc, map_50).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fastsnn.planner.machine import cpu_name
from fastsnn.report_figure import plot_report

log = logging.getLogger(__name__)

SETTING_KEYS = ("task", "model", "data", "bits", "timesteps", "signed", "seed")
FIRST_METHODS = ("ann", "float_ann", "snn", "snn_finetuned")  # float_ann: what rate coding converts
# a stage's seconds (results.json's time_s), named by stage; test passes are left out
TIME_COLUMNS = {"train": "train_s", "convert_and_test_snn": "convert_s", "finetune": "finetune_s"}
IGNORED_OVERRIDES = ("paths.", "hydra.")  # where a run writes, not what it is
MISSING = None


class ReportError(Exception):
    """A path with nothing to report on."""


@dataclass
class Row:
    """The runs of one setting (all seeds) and their statistics."""

    settings: dict  # the varying settings, seed left out
    runs: list[dict]
    stats: dict = field(default_factory=dict)  # column -> (mean, min, max)
    curves: dict = field(default_factory=dict)  # method -> (mean, min, max) per time step, lists

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={show(v)}" for k, v in self.settings.items())


@dataclass
class Report:
    common: dict  # the settings equal in every run
    varying: list[str]  # the settings that differ, seed left out
    columns: list[str]  # the metric columns
    methods: list[str]
    metric: str
    rows: list[Row]
    n_runs: int

    @property
    def common_label(self) -> str:
        return ", ".join(f"{k}={show(v)}" for k, v in self.common.items()) or "-"


# ----------------------------------------------------------------------------- reading


def find_results(paths: list[str]) -> list[Path]:
    """Every ``results.json`` under ``paths`` (directories searched at any depth), each once."""
    found: dict[Path, None] = {}
    for given in paths:
        path = Path(given)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(path.rglob("results.json"))
        else:
            raise ReportError(f"{given}: no such file or directory")
        if not files:
            raise ReportError(f"no results.json found under {given} (is it a run or multirun directory?)")
        found.update((f.resolve(), None) for f in files)
    return list(found)


def load_runs(files: list[Path]) -> list[dict]:
    """The results of ``files``; one that is not a run's results is skipped with a warning."""
    runs = []
    for path in files:
        try:
            run = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            log.warning("skipping %s: not valid JSON (%s)", path, err)
            continue
        if not isinstance(run, dict) or "metric" not in run:
            log.warning("skipping %s: not the results.json of a run (no 'metric' key)", path)
            continue
        runs.append(run)
    if not runs:
        raise ReportError(f"none of {', '.join(map(str, files))} could be read")
    return runs


def settings_of(run: dict) -> dict:
    """What the run was: its resolved settings, then its other command-line overrides."""
    settings = {key: run[key] for key in SETTING_KEYS if key in run}
    for text in run.get("overrides") or []:
        key, sep, value = text.lstrip("+~").partition("=")
        if key not in settings and not key.startswith(IGNORED_OVERRIDES):
            settings[key] = value if sep else "(deleted)"  # `~key` removes it from the config
    return settings


def methods_of(runs: list[dict]) -> list[str]:
    """The methods the runs recorded: ann, snn, snn_finetuned, then the others (with a curve), sorted."""
    found = {m for m in FIRST_METHODS if any(r.get(m) is not None for r in runs)}
    found |= {k.removesuffix("_per_step") for r in runs for k in r if k.endswith("_per_step")}
    found = {m for m in found if any(m in r for r in runs)}
    return [m for m in FIRST_METHODS if m in found] + sorted(found - set(FIRST_METHODS))


def value_of(run: dict, column: str, methods: list[str], metric: str | None) -> float | None:
    """A run's value of ``column``: a method's test metric, the spike rate or a stage's seconds."""
    if column in methods:
        if metric in (None, run.get("metric")):
            return run.get(column)
        return (run.get(f"{column}_metrics") or {}).get(f"{column}/test_{metric}")
    if column.endswith("_s"):
        source = next((k for k, v in TIME_COLUMNS.items() if v == column), column.removesuffix("_s"))
        return (run.get("time_s") or {}).get(source)
    return run.get(column)


# ----------------------------------------------------------------------------- grouping


def build_report(runs: list[dict], metric: str | None = None) -> Report:
    """Group ``runs`` by the settings that differ between them; mean, min and max over the rest."""
    settings = [settings_of(r) for r in runs]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    differs = {k for k in keys if len({json.dumps(s.get(k, MISSING)) for s in settings}) > 1}
    varying = [k for k in keys if k in differs and k != "seed"]  # seeds are averaged over
    common = {k: settings[0][k] for k in keys if k not in differs}
    methods = methods_of(runs)
    columns = [*methods, *_present(runs, ["spike_rate", *_time_columns(runs)], methods, metric)]
    groups: dict[str, Row] = {}
    for run, setting in zip(runs, settings):
        values = {k: setting.get(k, MISSING) for k in varying}
        groups.setdefault(json.dumps(values), Row(values, [])).runs.append(run)
    rows = sorted(groups.values(), key=lambda row: [_sort_key(row.settings[k]) for k in varying])
    for row in rows:
        row.stats = {c: _spread([value_of(r, c, methods, metric) for r in row.runs]) for c in columns}
        row.curves = {m: _curve_spread(row.runs, m, metric) for m in methods}
    label = metric or "/".join(dict.fromkeys(str(r["metric"]) for r in runs))
    return Report(common, varying, columns, methods, label, rows, len(runs))


def _time_columns(runs: list[dict]) -> list[str]:
    """train_s, convert_s, finetune_s, then any other stage's (e.g. compare_s), sorted."""
    stages = {k for r in runs for k in (r.get("time_s") or {}) if not k.startswith("test_")}
    others = sorted(f"{k}_s" for k in stages - TIME_COLUMNS.keys())
    return [*TIME_COLUMNS.values(), *others]


def _present(runs: list[dict], columns: list[str], methods: list[str], metric: str | None) -> list[str]:
    return [c for c in columns if any(value_of(r, c, methods, metric) is not None for r in runs)]


def _spread(values: list) -> tuple[float, float, float] | None:
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return None
    return sum(values) / len(values), min(values), max(values)


def _curve_spread(runs: list[dict], method: str, metric: str | None) -> tuple[list, list, list] | None:
    """Mean, min and max per time step of the runs' ``<method>_per_step`` curves (of their own metric)."""
    curves = [r.get(f"{method}_per_step") for r in runs if metric in (None, r.get("metric"))]
    curves = [c for c in curves if c]
    if not curves:
        return None
    steps = [_spread(list(values)) for values in zip(*curves)]  # equal T within a row
    return tuple([s[i] if s else math.nan for s in steps] for i in range(3))


def _sort_key(value) -> tuple:
    """Numbers in numeric order (also when they came as override strings), then text."""
    if value is None:
        return (2, "")
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


def show(value) -> str:
    """A setting as a command line writes it."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


# ----------------------------------------------------------------------------- writing


def _cell(stat: tuple | None, digits: int) -> str:
    if stat is None:
        return "-"
    mean, low, high = stat
    if low == high:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def _digits(column: str) -> int:
    return 1 if column.endswith("_s") else 4


def to_markdown(report: Report, command: str, machine: str, figure: str = "report.png") -> str:
    """The report as Markdown: the common settings, the table, the figure and how it was made."""
    header = [*report.varying, "n", *report.columns]
    lines = [
        f"# {report.metric} over {report.n_runs} runs",
        "",
        f"common: {report.common_label}",
        "",
        f"{report.metric} of each method: the mean over a row's runs (seeds), (min–max) when they differ; "
        "n: the number of runs; *_s: a stage's seconds",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in report.rows:
        cells = [show(row.settings[k]) for k in report.varying]
        cells += [str(len(row.runs))] + [_cell(row.stats[c], _digits(c)) for c in report.columns]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", f"![{report.metric} against the time step t]({figure})", ""]
    lines += [f"command: `{command}`  ", f"machine: {machine}  ", f"runs read: {report.n_runs}", ""]
    return "\n".join(lines)


def write_csv(report: Report, path: Path) -> None:
    """The table's rows, with the mean, min and max of each value in columns of their own."""
    header = [*report.varying, "n"]
    for column in report.columns:
        header += [column, f"{column}_min", f"{column}_max"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in report.rows:
            cells = [show(row.settings[k]) for k in report.varying] + [len(row.runs)]
            for column in report.columns:
                cells += list(row.stats[column] or ("", "", ""))
            writer.writerow(cells)


def machine_of(runs: list[dict]) -> str:
    """The GPU(s) the runs name, else this machine's processor."""
    gpus = sorted({str(r["gpu"]) for r in runs if r.get("gpu")})
    if gpus:
        return ", ".join(gpus)
    return cpu_name()


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastsnn.report",
        description="One table (report.md, report.csv) and one figure (report.png) over runs, multiruns, sweeps.",
    )
    parser.add_argument("paths", nargs="+", help="run or multirun directories, or results.json files")
    parser.add_argument("--out", help="where to write report.*; default: the first path if a directory, else .")
    parser.add_argument("--metric", help="a test metric the runs logged (default: each run's own, e.g. acc)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    try:
        runs = load_runs(find_results(args.paths))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = build_report(runs, args.metric)
    first = Path(args.paths[0])
    out = Path(args.out) if args.out else first if first.is_dir() else Path.cwd()
    out.mkdir(parents=True, exist_ok=True)
    plot_report(report, out / "report.png")
    write_csv(report, out / "report.csv")
    markdown = to_markdown(report, shlex.join(["python", "-m", "fastsnn.report", *argv]), machine_of(runs))
    (out / "report.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
