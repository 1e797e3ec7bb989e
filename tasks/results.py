"""The end of a run: what goes into ``results.json``, the console table, the sweeper's number."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tasks.settings import SettingsError

log = logging.getLogger(__name__)

SNN_LABELS = ("snn", "snn_finetuned")
PEER_LABELS = ("unsigned", "stbif", "rate_max", "rate_p999")  # the compare stage's methods (tasks/compare.py)
HEADLINES = ("snn_finetuned", "snn", "ann")  # the last stage's headline metric first
NUMERIC_KEYS = (*HEADLINES, "spike_rate", "sops", "energy_ratio")
STAT_KEYS = ("spike_rate", "sops", "energy_ratio")
# the compare stage's methods (tasks/compare.py), as the console table names them
PEER_NAMES = {"stbif": "SJ ST-BIF", "rate_max": "SJ rate, max", "rate_p999": "SJ rate, 99.9%"}


def per_step_key(label: str, metric: str, t: int) -> str:
    """The logged name of an SNN pass's metric after ``t`` time steps, e.g. ``snn/test_acc_t03``."""
    return f"{label}/test_{metric}_t{t:02d}"


def record_snn(results: dict, label: str, metrics: dict, metric: str, timesteps: int) -> None:
    """File an SNN test pass's logged ``metrics`` under ``label`` (``snn`` / ``snn_finetuned``)."""
    per_step_keys = [per_step_key(label, metric, t) for t in range(1, timesteps + 1)]
    results[label] = metrics.get(f"{label}/test_{metric}")
    results[f"{label}_metrics"] = {k: v for k, v in metrics.items() if k not in per_step_keys}
    per_step = [metrics.get(k) for k in per_step_keys]
    if all(v is not None for v in per_step):
        results[f"{label}_per_step"] = per_step  # each pass its own curve: snn_per_step, snn_finetuned_per_step
    for key in STAT_KEYS if label in SNN_LABELS else ():  # the top-level statistics: our own SNN's
        if f"{label}/{key}" in metrics:
            results[key] = metrics[f"{label}/{key}"]


def check_optimized_metric(name: str | None) -> None:
    """Refuse, before any work, an ``optimized_metric`` that no stage can produce (a typo)."""
    labels = ("ann", *SNN_LABELS, *PEER_LABELS)
    if not name or name in (*NUMERIC_KEYS, *PEER_LABELS) or name.split("/", 1)[0] in labels:
        return
    raise SettingsError(
        f"optimized_metric={name!r} is neither a results.json key ({', '.join(NUMERIC_KEYS)}) nor a test "
        "metric of the form ann/..., snn/... or snn_finetuned/... (e.g. snn_finetuned/test_acc)"
    )


def optimized_value(results: dict, name: str | None) -> float | None:
    """The number the run returns to a sweeper: ``results[name]`` or the logged test metric ``name``.

    When the run's stages did not produce it (``stages=[train]`` has no SNN), the last stage's
    headline metric is returned instead, with a warning that says which.
    """
    if not name:
        return None
    for source in (results, *(results.get(f"{label}_metrics", {}) for label in ("ann", *SNN_LABELS, *PEER_LABELS))):
        if source.get(name) is not None:
            return float(source[name])
    fallback = next(key for key in HEADLINES if results.get(key) is not None)
    log.warning(
        "optimized_metric=%s was not produced by stages=%s; returning %s=%.4f (the last stage's headline "
        "metric) instead",
        name,
        results.get("stages"),
        fallback,
        results[fallback],
    )
    return float(results[fallback])


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}f}"
    return str(value)


def print_results(results: dict) -> None:
    metric = results["metric"]
    neuron = "signed" if results["signed"] else "unsigned"
    table = Table(
        title=f"{results['task']} / {results['model']} / {results['data']}: "
        f"{results['bits']}-bit ANN -> {neuron} IF SNN, T={results['timesteps']}"
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
    _add_peer_rows(table, results)
    console = Console()
    console.print(table)
    for key, name in (("snn", "SNN"), ("snn_finetuned", "SNN fine-tuned")):
        if results.get(f"{key}_per_step"):
            curve = " ".join(f"{v:.3f}" for v in results[f"{key}_per_step"])
            console.print(f"{name} {metric} after t = 1..{results['timesteps']} steps: {curve}")
    _print_peer_curves(console, results, metric)
    # one line whatever the terminal width: users copy the path
    console.print(f"results: {results['output_dir']}/results.json", soft_wrap=True, highlight=False)


def _add_peer_rows(table: Table, results: dict) -> None:
    """The compare stage's rows (SpikingJelly's SNNs): their metric only, spike statistics being ours."""
    compared = results.get("compare")
    if not compared:
        return
    for key, name in PEER_NAMES.items():
        if key in results:
            table.add_row(name, _fmt(results.get(key)), "-", "-", "-")
    steps = compared.get("timesteps", {})
    about = [f"SJ: SpikingJelly {compared.get('spikingjelly')}"]
    if "stbif" in steps:
        about.append(f"ST-BIF: its neuron on the same quantized ANN, T={steps['stbif']}")
    rate_steps = steps.get("rate_max") or steps.get("rate_p999")
    if rate_steps:
        about.append(f"rate: rate coding of the {compared.get('float_model')}, T={rate_steps}")
    table.caption = "; ".join(about)


def _print_peer_curves(console: Console, results: dict, metric: str) -> None:
    """Each compare method's metric after 1, 2, 4, ... steps and after its last."""
    for key, name in PEER_NAMES.items():
        curve = results.get(f"{key}_per_step")
        if curve:
            at = sorted({t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t < len(curve)} | {len(curve)})
            values = " ".join(f"{curve[t - 1]:.3f}" for t in at)
            console.print(f"{name} {metric} after t = {','.join(map(str, at))}: {values}", soft_wrap=True)


def write_results(results: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, path)
