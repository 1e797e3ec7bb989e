"""Timing and peak memory of callables.

* :func:`time_round_robin`: several callables timed in turns (a, b, c, a, b, c, ...), so that a
  change of machine load hits them all alike;
* :func:`peak_memory_bytes`: the memory PyTorch allocates during one call above what was
  allocated before it (CUDA: ``max_memory_allocated``; CPU: the high-water mark of the
  allocator's events recorded by ``torch.profiler``).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn`` (the device's queued work included)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_round_robin(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, dict]:
    """Call every function ``repeats`` times, in turns; per name ``{"times_s", "min_s", "median_s"}``."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed_call(fn, device))
    return {k: {"times_s": v, "min_s": min(v), "median_s": statistics.median(v)} for k, v in times.items()}


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory PyTorch allocates during ``fn()`` above what was allocated before it.

    Tensors only: allocator caches, library scratch buffers and the Python heap are not counted
    (the same rule for every method measured). The result of ``fn`` is released inside the
    measurement.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()  # the output is dropped here, inside the profiled region
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return int(peak)


@contextlib.contextmanager
def _stderr_silenced():
    """Mute file descriptor 2 (the profiler's C++ start / stop log lines), restored afterwards."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
