"""How a SpikingModel simulates one call: the mode (multi-step or streaming) and the chunk size.

``mode="auto"`` estimates the peak memory of a multi-step pass over one chunk of the input
(:mod:`fastsnn.planner.estimate`) and chooses streaming when it exceeds the budget
(:func:`fastsnn.planner.machine.budget_bytes`), multi-step otherwise.

``chunk_size="auto"``: a multi-step pass holds T-times larger activations than the ANN. On a CPU it
runs fastest when one chunk's working set stays in the last-level cache, and a chunk also bounds
the pass's memory. So the chunk is the power of two nearest to the ratio of the CPU's largest cache
(:func:`fastsnn.planner.machine.last_level_cache`) to the peak bytes of a multi-step pass over one
sample. GPUs, and streaming calls (whose per-step state is small), take whole batches.

Each choice is kept per input shape and setting, and logged once (logger
``fastsnn.planner.simulation``; a failed estimate keeps the fast path and says why, WARNING).
"""

from __future__ import annotations

import logging
import threading

import torch

from .estimate import AllocationTracker, meta_copy, meta_like
from .machine import budget_bytes, last_level_cache

logger = logging.getLogger(__name__)

WHOLE_BATCH = 2**62  # a chunk no batch reaches

# held while a choice is looked up or made (the estimates share each model's meta copy)
_LOCK = threading.Lock()


class SimulationPlanner:
    """The automatic simulation choices of one model; it reads the model's settings and never
    runs it (estimates run a meta-device copy).

    ``model`` is a :class:`~fastsnn.SpikingModel` (anything with its ``config``, ``timesteps``,
    ``ctx.run(run)`` and ``net``).
    """

    def __init__(self, model):
        self.model = model
        self._modes: dict[tuple, str] = {}
        self._chunks: dict[tuple, int] = {}
        self._meta = None  # a meta-device copy of the model for the estimates

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_meta"] = None  # rebuilt when needed, not pickled or copied
        return state

    def plan(self, x: torch.Tensor, run: str = "mean") -> tuple[str, int | None]:
        """The mode and the samples per chunk (None: the whole batch) of a call on ``x``."""
        config = self.model.config
        if config.mode == "streaming":
            return "streaming", None if config.chunk_size == "auto" else config.chunk_size
        chunk = self.chunk(x, run)
        mode = self.mode(x, run, chunk)
        if mode == "streaming" and config.chunk_size == "auto":
            chunk = None  # the per-step state is small: a streaming call takes the whole batch
        return mode, chunk

    def chunk(self, x: torch.Tensor, run: str = "mean") -> int | None:
        """Samples per chunk of a multi-step call on ``x``: ``chunk_size``, or for ``"auto"`` the
        choice for ``x``'s sample shape (None: the whole batch)."""
        config = self.model.config
        if config.chunk_size != "auto":
            return config.chunk_size
        if x.device.type != "cpu" or x.shape[0] <= 1:
            return None  # GPUs want whole batches
        key = (tuple(x.shape[1:]), x.dtype, config.timesteps)  # the run state barely changes the peak
        with _LOCK:
            if key not in self._chunks:
                self._chunks[key] = self._choose_chunk(x[:1], run)
            n = self._chunks[key]
        return None if n >= x.shape[0] else n

    def _choose_chunk(self, sample: torch.Tensor, run: str) -> int:
        shape = f"samples of shape {tuple(sample.shape[1:])}, T={self.model.timesteps}"
        try:
            per_sample = self.estimate_multistep_bytes(sample, run)
        except Exception as err:  # an op the meta device cannot run: whole batches, and say so
            logger.warning("chunk_size='auto': whole batches for %s: the memory estimate failed (%s)", shape, _why(err))
            return WHOLE_BATCH
        cache, what = last_level_cache()
        n = samples_per_chunk(per_sample, cache)
        logger.info(
            "chunk_size='auto': %d sample(s) per chunk for %s (a multi-step pass needs about %.2f MiB per sample; %s)",
            n,
            shape,
            per_sample / 2**20,
            what,
        )
        return n

    def mode(self, x: torch.Tensor, run: str = "mean", chunk: int | None = None) -> str:
        """The simulation of a call on ``x`` (one chunk of ``chunk`` samples): ``mode``, or for
        ``"auto"`` the choice for that shape, dtype, device, T, run state and budget."""
        config = self.model.config
        if config.mode != "auto":
            return config.mode
        if chunk is None and config.chunk_size != "auto":
            chunk = config.chunk_size
        n = x.shape[0] if chunk is None else min(x.shape[0], chunk)
        key = ((n, *x.shape[1:]), x.dtype, str(x.device), config.timesteps, run, config.memory_budget)
        with _LOCK:
            if key not in self._modes:
                self._modes[key] = self._choose_mode(x[:n], run)
            return self._modes[key]

    def _choose_mode(self, x: torch.Tensor, run: str) -> str:
        shape = f"input {tuple(x.shape)} (one chunk), T={self.model.timesteps}"
        budget, source = budget_bytes(self.model.config.memory_budget, x.device)
        if budget is None:
            logger.info("mode='auto': multistep for %s: %s, so nothing to compare with", shape, source)
            return "multistep"
        try:
            estimate = self.estimate_multistep_bytes(x, run)
        except Exception as err:  # an op the meta device cannot run: keep the fast mode, and say so
            logger.warning(
                "mode='auto': multistep for %s: the multi-step memory estimate failed (%s); "
                "set mode='streaming' if that does not fit",
                shape,
                _why(err),
            )
            return "multistep"
        choice = "streaming" if estimate > budget else "multistep"
        logger.info(
            "mode='auto': %s for %s: a multi-step pass needs about %.1f MiB at its peak, %s the budget of "
            "%.1f MiB (%s)",
            choice,
            shape,
            estimate / 2**20,
            "over" if choice == "streaming" else "within",
            budget / 2**20,
            source,
        )
        return choice

    def estimate_multistep_bytes(self, x: torch.Tensor, run: str = "mean") -> int:
        """Peak bytes of new tensors a multi-step pass over ``x`` (as one chunk) allocates, output
        included: the graph run on the meta device (a copy of the model there, nothing computed)
        under :class:`~fastsnn.planner.estimate.AllocationTracker`. Neurons are counted with their
        eager loop and int8 synapses as float convolutions."""
        if self._meta is None:
            self._meta = meta_copy(self.model)
        meta = self._meta
        meta.config = self.model.config
        inp = meta_like(x)
        with meta.ctx.run(run), AllocationTracker() as tracker:
            out = meta.net(inp)
            del out
        return tracker.peak


def samples_per_chunk(per_sample_bytes: int, cache_bytes: int) -> int:
    """The power of two nearest (on a log scale) to ``cache_bytes / per_sample_bytes``, at least 1."""
    ratio = cache_bytes / max(per_sample_bytes, 1)
    if ratio <= 1:
        return 1
    low = 1 << (int(ratio).bit_length() - 1)
    return 2 * low if ratio * ratio > 2 * low * low else low


def _why(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"
