"""What layer-wise fine-tuning will cost, and where the carried values will live (``cache``).

Before the first layer: a dry run of the carried values on the first batch gives their bytes
per sample after every layer; scaled by the samples of one pass, that is what carrying them
needs. ``cache="auto"`` then keeps them in memory when they fit the memory budget, else on disk
(``cache_dir``) when they fit its free space, else recomputes them (the SNN simulated from the
input for every layer: quadratic in depth), and says which and why in one plan line. Under
data-parallel fine-tuning every process takes the same choice (the largest need, the smallest
budget).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

from ..planner.machine import budget_bytes
from .ranks import Ranks
from .store import CacheWriteError, check_writable

logger = logging.getLogger(__name__)

MODES = ("auto", "memory", "disk", "off")
DISK_FRACTION = 0.9  # of the free disk space that cache="auto" may fill


@dataclass
class CachePlan:
    """Where the carried values live (``memory``, ``disk`` or ``off``: recomputed), and why."""

    mode: str
    why: str
    batches: int | None = None  # per process
    samples: int | None = None  # per process
    per_sample: float | None = None  # bytes per sample at the widest cut (the input included)
    need: float | None = None  # bytes of one pass's carried values, per process (the largest)
    warn: bool = False  # the plan is not what was asked for, or risks running out of memory

    def line(self, layers: int, epochs: int, ranks: Ranks) -> str:
        """The plan in one line: layers, batches, bytes and where, processes, expected SNN passes."""
        data = f"{self.batches} batches ({self.samples} samples)" if self.batches is not None else "a loader"
        size = f", {_size(self.per_sample)} per sample, {_size(self.need)} per process" if self.need else ""
        carried = epochs + 2  # fill, every layer's own part once per epoch, advance: SNN passes' worth
        recomputed = epochs * (layers + 1) / 2  # each layer simulates the SNN up to itself
        passes = f"about {carried if self.mode != 'off' else recomputed:g} SNN passes over the batches"
        other = f"recomputing: {recomputed:g}" if self.mode != "off" else f"carried: {carried:g}"
        return (
            f"fine-tuning plan: {layers} layers x {epochs} epoch(s) on {data} per process, {ranks.size} "
            f"process(es); carried values{size}: {self.where()} ({self.why}); {passes} ({other})"
        )

    def where(self) -> str:
        return {"memory": "in memory", "disk": "on disk", "off": "recomputed for every layer"}[self.mode]


def _size(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return ""


def _memory_budget(device, budget: float | None) -> tuple[float, str]:
    if budget is not None:
        return budget, "cache_budget"
    free, what = budget_bytes(None, device)  # the simulation planner's default budget
    return float("inf") if free is None else free, what


def _free_disk(cache_dir, need: float, ranks: Ranks) -> float:
    """Free bytes in ``cache_dir`` (the smallest over the processes); every process stops when one
    cannot write there."""
    error = None
    try:
        free = check_writable(cache_dir, need)
    except CacheWriteError as e:
        error, free = e, 0.0
    (failed,) = ranks.max(float(error is not None))
    if error is not None:
        raise error
    if failed:
        raise CacheWriteError(errno.EIO, f"another fine-tuning process cannot write its cache directory ({cache_dir})")
    return -ranks.max(-free)[0]


def choose(cache: str, why_not: str | None, plan: CachePlan, device, budget, cache_dir, ranks: Ranks) -> CachePlan:
    """Set ``plan.mode`` / ``plan.why`` from ``cache``, the reason values cannot be carried
    (``why_not``) and the need against the memory budget and the free disk."""
    if cache not in MODES:
        raise ValueError(f"cache must be one of {list(MODES)}, got {cache!r}")
    if cache == "disk" and cache_dir is None:
        raise ValueError("cache='disk' needs cache_dir: the directory for the carried values' files")
    if cache == "off" or why_not is not None:
        plan.mode, plan.why, plan.warn = "off", "cache='off'" if cache == "off" else why_not, cache != "off"
        return plan
    if plan.need is None:  # a loader without a length: only an explicit choice holds one pass
        plan.mode, plan.warn = "off" if cache == "auto" else cache, cache == "auto"
        plan.why = "the size of one pass is unknown: the data loader has no length"
        return plan
    memory, memory_what = _memory_budget(device, budget)
    (plan.need, neg_memory) = ranks.max(plan.need, -memory)
    memory = -neg_memory
    use_disk = cache == "disk" or (cache == "auto" and plan.need > memory and cache_dir is not None)
    disk = _free_disk(cache_dir, plan.need, ranks) if use_disk else 0.0
    fits = f"{_size(plan.need)} within {_size(memory)}, {memory_what}"
    if cache == "memory" or (cache == "auto" and plan.need <= memory):
        plan.mode, plan.warn = "memory", plan.need > memory
        plan.why = fits if plan.need <= memory else f"asked for, though over {_size(memory)}, {memory_what}"
    elif cache == "disk" and plan.need > disk:
        raise CacheWriteError(
            errno.ENOSPC,
            f"the carried values need about {_size(plan.need)} in {cache_dir}, {_size(disk)} are free there: "
            "choose another cache_dir",
        )
    elif use_disk and plan.need <= DISK_FRACTION * disk:
        plan.mode, plan.why = "disk", f"{_size(plan.need)} of {_size(disk)} free in {cache_dir}"
    else:
        where = f"nor {DISK_FRACTION:g} of the {_size(disk)} free in {cache_dir}" if use_disk else "no cache_dir"
        plan.mode, plan.warn = "off", True
        plan.why = f"{_size(plan.need)} exceed {_size(memory)} ({memory_what}), {where}"
    return plan
