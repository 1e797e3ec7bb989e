"""What the automatic choices know of the machine: free memory, the CPU's cache, its name.

Every reading is cheap and has a stated fallback, so a choice never fails for want of one:
the callers log which figure they used.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

import torch

# the part of a device's free memory that an automatic choice may plan to use when no budget is
# given: a simulation (mode="auto") or the values fine-tuning carries from layer to layer
DEFAULT_MEMORY_FRACTION = 0.5

DEFAULT_CACHE_BYTES = 32 * 2**20  # assumed when the OS does not report the cache sizes
# A virtual machine reports the whole socket's last-level cache, but its few cores use a slice of
# it; chunks sized to the full figure become whole batches and run slower (benchmarks/results/).
MAX_CACHE_BYTES = 32 * 2**20
CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")


def available_memory(device: torch.device | str) -> int | None:
    """Bytes free for new tensors on ``device``: ``torch.cuda.mem_get_info`` on CUDA, the kernel's
    ``MemAvailable`` (``/proc/meminfo``) on the CPU; None where neither is known."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def budget_bytes(budget: float | None, device: torch.device) -> tuple[int | None, str]:
    """A memory budget in bytes on ``device`` and where it comes from.

    ``budget``: bytes (an int, or a float > 1), a fraction (a float in (0, 1]) of the memory
    available on ``device``, or None: ``DEFAULT_MEMORY_FRACTION`` of it. None bytes when the
    available memory is unknown.
    """
    if budget is not None and (isinstance(budget, int) or float(budget) > 1):
        return int(budget), "memory_budget"
    fraction = DEFAULT_MEMORY_FRACTION if budget is None else float(budget)
    free = available_memory(device)
    name = "memory_budget" if budget is not None else "default"
    if free is None:
        return None, f"the available memory of {device} is unknown ({name} fraction {fraction:g})"
    return int(fraction * free), f"{name}: {fraction:g} of the {free / 2**30:.1f} GiB available on {device}"


@lru_cache(maxsize=1)
def last_level_cache() -> tuple[int, str]:
    """Bytes of the CPU's largest cache (Linux sysfs), at most ``MAX_CACHE_BYTES``, and a
    description; an assumed size elsewhere."""
    sizes = []
    for entry in CACHE_DIR.glob("index*"):
        try:
            text = (entry / "size").read_text().strip()
            level = (entry / "level").read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        value = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
        sizes.append((value, f"the {value / 2**20:g} MiB L{level} cache"))
    if not sizes:
        return DEFAULT_CACHE_BYTES, f"an assumed {DEFAULT_CACHE_BYTES // 2**20} MiB cache"
    value, what = max(sizes)
    if value > MAX_CACHE_BYTES:
        return MAX_CACHE_BYTES, f"{what}, counted as {MAX_CACHE_BYTES // 2**20} MiB"
    return value, what


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(device: torch.device) -> str:
    """What measured timings depend on: processor, torch version and threads, or the GPU's name."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.machine()} {cpu_name()} threads={torch.get_num_threads()}"
    return f"{where} | torch {torch.__version__}"
