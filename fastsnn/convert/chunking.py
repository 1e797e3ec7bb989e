"""``chunk_size="auto"``: how many samples a multi-step pass simulates at once on a CPU.

A multi-step pass holds T-times larger activations than the ANN. On a CPU it runs fastest when
one chunk's working set stays in the last-level cache, and a chunk also bounds the pass's memory.
So the chunk is derived from the layer sizes: the peak bytes of a multi-step pass over one sample
(estimated on the meta device) against the size of the CPU's largest cache, counted as at most
``MAX_CACHE_BYTES``; the number of samples is the power of two nearest to their ratio (at least
one). GPUs take whole batches.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

DEFAULT_CACHE_BYTES = 32 * 2**20  # assumed when the OS does not report the cache sizes
# A virtual machine sees the whole socket's last-level cache (480 MiB on one of ours), but its few
# cores use a slice of it: there, chunks sized to the full figure are whole batches, up to 1.6x
# slower than chunks sized to 32 MiB (benchmarks/results/speed_default_xeon.md).
MAX_CACHE_BYTES = 32 * 2**20
CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")


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


def samples_per_chunk(per_sample_bytes: int, cache_bytes: int) -> int:
    """The power of two nearest (on a log scale) to ``cache_bytes / per_sample_bytes``, at least 1."""
    ratio = cache_bytes / max(per_sample_bytes, 1)
    if ratio <= 1:
        return 1
    low = 1 << (int(ratio).bit_length() - 1)
    return 2 * low if ratio * ratio > 2 * low * low else low
