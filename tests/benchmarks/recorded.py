"""What every benchmark result must say about where and how it was measured (benchmarks.record)."""

import json
from pathlib import Path

import torch


def check_recorded(out_dir: Path, name: str, benchmark: str) -> dict:
    """The saved ``<out_dir>/<name>.json`` after checking its machine, versions, load, command and
    date, and that the markdown beside it says the same."""
    saved = json.loads((out_dir / f"{name}.json").read_text())
    md = (out_dir / f"{name}.md").read_text()
    assert saved["benchmark"] == benchmark
    assert saved["command"].startswith(f"python -m benchmarks.{benchmark} ") and saved["command"] in md
    machine, versions, load = saved["machine"], saved["versions"], saved["load"]
    assert machine["cpu"] and machine["cpu"] in md and machine["device"] == "cpu"
    assert machine["torch_threads"] >= 1 and isinstance(machine["int8_dot_product"], (list, type(None)))
    assert versions["torch"] == torch.__version__.split("+")[0] and versions["torchvision"]
    assert "spikingjelly" in versions and f"torch {versions['torch']}" in md
    assert set(load) >= {"before", "during", "waited_s"} and {"mean", "max", "samples"} <= set(load["during"])
    assert saved["date"][:4].isdigit() and saved["date"] in md
    return saved
