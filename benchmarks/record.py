"""One result per benchmark run: ``<out_dir>/<name>.json`` and ``.md``, and where it was measured.

Every result holds the machine (CPU model and its int8 dot-product instructions, or the GPU),
torch's thread count, the 1-minute load average before and during the measurement, the library
versions, the exact command line and the date, beside the benchmark's own tables.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from fastsnn.planner.machine import cpu_name

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = RESULTS_DIR.parents[1]
TARGET_KEYS = ["target", "value", "limit", "met"]  # a benchmark's targets: measured value, limit, met or not
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo flags of int8 dot-product instructions


def load_average() -> float | None:
    """The 1-minute load average (None where the OS does not report one)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


class LoadSampler:
    """The load average every ``every_s`` seconds while in use (``with LoadSampler() as load:``)."""

    def __init__(self, every_s: float = 10.0):
        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        if (load := load_average()) is not None:
            self.samples.append(load)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> LoadSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def summary(self) -> dict:
        s = self.samples
        return {"mean": round(sum(s) / len(s), 2) if s else None, "max": max(s, default=None), "samples": s}


def int8_dot_instructions() -> list[str] | None:
    """The int8 dot-product instruction sets the CPU reports (None where /proc/cpuinfo is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in INT8_DOT_FLAGS if f in flags]


def machine(device: torch.device) -> dict:
    found = {"cpu": cpu_name(), "int8_dot_product": int8_dot_instructions(), "cpu_count": os.cpu_count()}
    found |= {"platform": platform.platform(), "device": str(device), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        found["gpu"] = torch.cuda.get_device_name(device)
    return found


def versions() -> dict:
    """Python, the libraries the figures depend on (None: not installed) and the code's commit."""
    found = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "spikingjelly"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found | {"fastsnn_commit": git_commit()}


def git_commit() -> str | None:
    """The short commit, ``+dirty`` when fastsnn/ or benchmarks/ have uncommitted changes."""
    git = ["git", "-C", str(REPO_ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "fastsnn", "benchmarks"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else None


def target(name: str, value: float, limit: float, at_least: bool = False) -> dict:
    """A benchmark's target: met when ``value <= limit`` (``at_least``: ``value >= limit``)."""
    return {"target": name, "value": value, "limit": limit, "met": value >= limit if at_least else value <= limit}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value).replace("|", "/").replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


def markdown_table(rows: list[dict], keys: list[str]) -> list[str]:
    """A markdown table of ``rows``, a column per key (numbers to 4 digits, long text cut short)."""
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return lines + ["| " + " | ".join(_cell(row.get(key)) for key in keys) + " |" for row in rows]


def section(title: str, note: str, rows: list[dict], keys: list[str]) -> list[str]:
    """``### title``, a paragraph and a table (nothing when there are no rows)."""
    return ["", f"### {title}", "", note, "", *markdown_table(rows, keys)] if rows else []


def _footer(result: dict) -> str:
    m, v, load = result["machine"], result["versions"], result["load"]
    where = m.get("gpu") or f"{m['cpu']} (int8 dot product: {', '.join(m['int8_dot_product'] or []) or 'none'})"
    during = load["during"]
    return (
        f"Measured on {where}, {m['torch_threads']} torch thread(s), {result['date']}; torch {v['torch']}, "
        f"torchvision {v['torchvision']}, SpikingJelly {v['spikingjelly'] or 'not installed'}, "
        f"commit {v['fastsnn_commit']}. Load average (1 min): {load['before']} before, mean {during['mean']} / "
        f"max {during['max']} during.\n\nCommand: `{result['command']}`"
    )


def record(args, measurement, results: dict, markdown: str, echo: bool = True) -> dict:
    """Write ``<args.out_dir>/<args.name>.{json,md}``: ``results`` and ``markdown`` (and a table of
    ``results["targets"]``, if any), with where and how they were measured; print the markdown and
    the paths (``echo``); return the whole result."""
    result = {
        "benchmark": args.benchmark,
        "command": shlex.join(["python", "-m", f"benchmarks.{args.benchmark}", *args.argv]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(measurement.device),
        "versions": versions(),
        "load": measurement.load(),
        "config": {k: v for k, v in vars(args).items() if k not in ("argv", "benchmark")},
        **results,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    goals = section("Targets", "Each measured value against its limit.", results.get("targets", []), TARGET_KEYS)
    text = "\n".join([markdown.strip(), *goals, "", _footer(result)]) + "\n"
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / f"{args.name}.md").write_text(text)
    if echo:
        print(text + f"\nresults: {out / args.name}.json, .md")
    return result
