"""The figure of ``python -m fastsnn.report``: each method's metric against the time step t.

One panel per row of the report (a setting of what differs between the runs), one line per method
(its mean over seeds, the min-max shaded), the quantized ANN as a dashed horizontal line.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

MAX_COLUMNS = 3


def plot_report(report, path: Path) -> None:
    """Draw ``report`` (a :class:`fastsnn.report.Report`) into the PNG ``path``, with the Agg backend
    (no display needed, and pyplot's global state is left alone)."""
    n = len(report.rows)
    cols = min(MAX_COLUMNS, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.2 * cols, 4.0 * rows + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()
    for ax, row in zip(axes, report.rows):
        _panel(ax, row, report.methods, report.metric)
        ax.set_title(_wrap(row.label if report.varying else report.common_label), fontsize=9)
    for ax in axes[n:]:
        ax.set_visible(False)
    title = f"{report.metric} against the time step t"
    if report.varying:
        title += "\n" + _wrap("common: " + report.common_label, 40 * cols)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)


def _panel(ax, row, methods: list[str], metric: str) -> None:
    """One row's curves; the method colours are the same in every panel."""
    for i, method in enumerate(methods):
        colour = f"C{i}"
        if method == "ann":
            if row.stats.get("ann"):
                ax.axhline(row.stats["ann"][0], color=colour, linestyle="--", label="ann (quantized)")
            continue
        curve = row.curves.get(method)
        if not curve:
            continue
        mean, low, high = curve
        steps = range(1, len(mean) + 1)
        ax.plot(steps, mean, marker="o", markersize=3, color=colour, label=method)
        if len(row.runs) > 1:  # the seeds' spread
            ax.fill_between(steps, low, high, color=colour, alpha=0.15, linewidth=0)
    lengths = [len(c[0]) for c in row.curves.values() if c]
    if lengths and max(lengths) > 16 and max(lengths) >= 4 * min(lengths):  # e.g. T=3 beside a rate code's 256
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))  # 1, 2, 4, ... rather than 2^0, 2^1, ...
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10], min_n_ticks=1))
        ax.set_xlim(0.5, max(lengths, default=1) + 0.5)  # also a one-step curve (T = 1): whole-number ticks
    ax.set_xlabel("time step t")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a run of stages=[train] without a test pass has none
        ax.legend(fontsize=8, loc="best", title=f"n={len(row.runs)}", title_fontsize=8)


def _wrap(text: str, width: int = 48) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text
