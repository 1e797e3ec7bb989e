"""The settings of a converted network's simulation, in one frozen object.

:class:`SimulationConfig` is what :func:`fastsnn.convert_to_snn`, the Lightning conversion callback
and :class:`~fastsnn.SpikingModel` take, and what the ``snn`` config group instantiates: each
option and its default is defined here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

MODES = ("multistep", "streaming", "auto")


@dataclass(frozen=True)
class SimulationConfig:
    """How a converted network is simulated.

    * ``timesteps``: T, the number of time steps; None: ``2**bits - 1`` of the quantized model,
      where the SNN reproduces its first layer exactly.
    * ``signed``: signed IF neurons (the paper's fix of the sequential error); False: the
      unsigned baseline.
    * ``mode``: ``"multistep"`` (all T steps of a layer at once, time folded into the batch:
      fastest), ``"streaming"`` (one step after another: memory independent of T) or ``"auto"``
      (streaming only where a multi-step pass would exceed ``memory_budget``; chosen per input
      shape and logged once). Both give the same outputs.
    * ``compiled``: fuse each neuron layer's T-step loop into one ``torch.compile``-d kernel
      (True), keep the eager loop (False), or ``"auto"``: compile once the eager runs have cost
      as much as a compile, and only where the fused kernel measured faster on this machine.
    * ``integer_kernels``: run the convs fed by spikes whose weights lie on an integer grid as
      exact int8 GEMMs (True), keep float32 convolutions (False), or ``"auto"``: per conv class,
      the kernel measured faster on this machine. Same outputs up to float rounding.
    * ``chunk_size``: simulate a batch this many samples at a time (same outputs, less memory);
      ``"auto"``: from the layer sizes and the CPU's cache (GPUs take whole batches); None: whole
      batches.
    * ``memory_budget``: for ``mode="auto"``: bytes (an int, or a float > 1), a fraction (a float
      in (0, 1]) of the device's available memory, or None: half of it.
    * ``channels_last``: store the 4-d weights channels-last, so convs and neurons run on
      channels-last tensors (faster on CPUs); float convs then sum in another order, so a spike
      can differ where a membrane lies within float rounding of a threshold.

    The measured choices are cached per machine (:mod:`fastsnn.planner`).
    """

    timesteps: int | None = None
    signed: bool = True
    mode: str = "auto"
    compiled: bool | str = "auto"
    integer_kernels: bool | str = "auto"
    chunk_size: int | str | None = "auto"
    memory_budget: float | None = None
    channels_last: bool = True

    def __post_init__(self):
        check_timesteps(self.timesteps, allow_none=True)
        if self.timesteps is not None:  # e.g. a NumPy integer: stored as a plain int
            object.__setattr__(self, "timesteps", int(self.timesteps))
        check_mode(self.mode)
        for name in ("compiled", "integer_kernels"):
            if getattr(self, name) not in (True, False, "auto"):
                raise ValueError(f"{name} must be True, False or 'auto', got {getattr(self, name)!r}")
        check_chunk_size(self.chunk_size)
        check_memory_budget(self.memory_budget)
        if not isinstance(self.signed, bool) or not isinstance(self.channels_last, bool):
            raise ValueError(
                f"signed and channels_last must be True or False, got {self.signed!r}, {self.channels_last!r}"
            )

    def replace(self, **changes) -> SimulationConfig:
        """A copy with ``changes`` (option names checked)."""
        unknown = sorted(set(changes) - set(option_names()))
        if unknown:
            raise TypeError(f"unknown simulation option(s) {unknown}; the options are {option_names()}")
        return dataclasses.replace(self, **changes)


def option_names() -> list[str]:
    """The simulation options, in order."""
    return [f.name for f in dataclasses.fields(SimulationConfig)]


def check_timesteps(timesteps, allow_none: bool = False) -> None:
    if timesteps is None and allow_none:
        return
    if isinstance(timesteps, bool) or not isinstance(timesteps, numbers.Integral) or timesteps < 1:
        raise ValueError(f"timesteps must be a whole number >= 1, got {timesteps!r}")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def check_chunk_size(chunk_size) -> None:
    if chunk_size in (None, "auto"):
        return
    if isinstance(chunk_size, (bool, str)) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of samples, 'auto' or None, got {chunk_size!r}")


def check_memory_budget(budget) -> None:
    if budget is not None and (isinstance(budget, (bool, str)) or not float(budget) > 0):
        raise ValueError(
            f"memory_budget must be bytes (an int), a fraction (a float in (0, 1]) or None, got {budget!r}"
        )
