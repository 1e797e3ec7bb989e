"""``chunk_size="auto"``: how many samples a multi-step pass simulates at once on a CPU.

A multi-step pass holds T-times larger activations than the ANN. On a CPU it runs fastest when
one chunk's working set stays in the last-level cache, and a chunk also bounds the pass's memory.
So the chunk is derived from the layer sizes: the peak bytes of a multi-step pass over one sample
(estimated on the meta device) against the size of the CPU's largest cache; the number of samples
is the power of two nearest to their ratio (at least one). GPUs take whole batches.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

DEFAULT_CACHE_BYTES = 32 * 2**20  # assumed when the OS does not report the cache sizes


@lru_cache(maxsize=1)
def last_level_cache() -> tuple[int, str]:
    """Bytes of the CPU's largest cache (Linux sysfs) and a description; an assumed size elsewhere."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (entry / "size").read_text().strip()
            level = (entry / "level").read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        value = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
        sizes.append((value, f"the {value / 2**20:g} MiB L{level} cache"))
    return max(sizes) if sizes else (DEFAULT_CACHE_BYTES, f"an assumed {DEFAULT_CACHE_BYTES // 2**20} MiB cache")


def samples_per_chunk(per_sample_bytes: int, cache_bytes: int) -> int:
    """The power of two nearest (on a log scale) to ``cache_bytes / per_sample_bytes``, at least 1."""
    ratio = cache_bytes / max(per_sample_bytes, 1)
    if ratio <= 1:
        return 1
    low = 1 << (int(ratio).bit_length() - 1)
    return 2 * low if ratio * ratio > 2 * low * low else low
