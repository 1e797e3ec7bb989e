"""The end of a run: the console table and ``results.json``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}f}"
    return str(value)


def print_results(results: dict) -> None:
    metric = results["metric"]
    table = Table(
        title=f"{results['task']} / {results['model']} / {results['data']}: "
        f"{results['bits']}-bit ANN -> {'signed' if results['signed'] else 'unsigned'} IF SNN, "
        f"T={results['timesteps']}"
    )
    for col in ("model", f"test {metric}", "spike rate", "SOPs / image", "energy vs ANN (estimate)"):
        table.add_column(col, justify="right" if col != "model" else "left")
    table.add_row("quantized ANN", _fmt(results.get("ann")), "-", "-", "1")
    for key, name in (("snn", "SNN"), ("snn_finetuned", "SNN fine-tuned")):
        if key in results:
            m = results.get(f"{key}_metrics", {})
            table.add_row(
                name,
                _fmt(results.get(key)),
                _fmt(m.get(f"{key}/spike_rate")),
                _fmt(m.get(f"{key}/sops"), 3),
                _fmt(m.get(f"{key}/energy_ratio"), 3),
            )
    console = Console()
    console.print(table)
    if results.get("snn_per_step"):
        curve = " ".join(f"{v:.3f}" for v in results["snn_per_step"])
        console.print(f"SNN {metric} after t = 1..{results['timesteps']} steps: {curve}")
    console.print(f"results: {results['output_dir']}/results.json")


def write_results(results: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, path)
