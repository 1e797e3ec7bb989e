"""Automatic kernel choices, measured per machine and cached: the neuron loop
(``compiled="auto"``: eager or ``torch.compile``-fused) and the synapses of spike-fed convs
(``integer_kernels="auto"``: float32 convolution or exact int8 GEMM).

**Neuron loops.** Compiling pays only when a kernel runs long enough: a fused kernel costs seconds
to build, and on some CPUs it is not faster at all. So the choice is measured, per machine and
kernel class (device, dtype, T, signed, constant input, size of one step to the nearest power of two):

1. A kernel class runs eagerly, and the eager time spent on it in this process is tallied.
2. Once that time reaches what a compile is expected to cost (the shortest compile measured on this
   machine, or ``DEFAULT_COMPILE_S``), the fused kernel is built and timed against the eager
   loop on the same input; the faster one is kept, and used only if it gives the same outputs.
3. The decision, both timings and the compile time are cached in ``kernel_choice.json`` in the
   cache directory (``$FASTSNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastsnn``, else
   ``~/.cache/fastsnn``), keyed by the machine, and logged once. A later process that finds
   "eager" never compiles that class; one that finds "compiled" still compiles only once the
   eager time has paid for it, since the compile itself is paid again in every process.

Short evaluations (a smoke test, the test suite) therefore never compile, and long ones compile
once the kernel class has been used for as long as a compile takes.

**Integer synapses.** An int8 GEMM is many times faster than float32 on CPUs with int8
dot-product instructions (VNNI) and many times slower on CPUs without them, so it is measured too,
per conv class (device, kernel, stride, channels, spikes or pooled spikes, rows to the nearest power
of two). A class runs the float convolution until it has spent ``INTEGER_PROBE_AFTER_S`` on it; then
both kernels run on a slice of that call's batch (a few milliseconds of float work, so that even a much
slower int8 GEMM costs little), the int8 outputs are checked against the float ones (equal up to float rounding),
and the faster kernel is kept and cached as above. A cached decision applies at once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .machine import machine_key

logger = logging.getLogger(__name__)

DEFAULT_COMPILE_S = 10.0  # assumed cost of one compile before any has been measured here
# float time a conv class runs before its int8 kernel is measured: the probe costs a few milliseconds,
# and a longer wait keeps a faster int8 kernel out of short evaluations
INTEGER_PROBE_AFTER_S = 0.1
PROBE_SLICE_S = 0.002  # float time of the batch slice the int8 probe runs on


@dataclass
class _Pending:
    """A kernel class not decided yet in this process."""

    name: str  # its key in the cache file
    machine: str
    pays_after: float  # eager seconds after which a compile pays
    spent: float = 0.0  # eager seconds spent on it so far


_pending: dict[tuple, _Pending] = {}
_decided: dict[tuple, bool] = {}  # kernel class -> use the fused kernel
_unavailable: list[str] = []  # why torch.compile cannot be used here (logged once)
_file: dict[Path, dict] = {}  # the cache file as last read or written by this process
_int_pending: dict[tuple, _Pending] = {}
_int_decided: dict[tuple, bool] = {}  # conv class -> use the int8 GEMM
_lock = threading.Lock()


def cache_path() -> Path:
    root = os.environ.get("FASTSNN_CACHE_DIR")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastsnn"
    return Path(root) / "kernel_choice.json"


def kernel_class(x: torch.Tensor, timesteps: int, signed: bool, constant: bool) -> str:
    """The cache file's name for a kernel class."""
    device, dtype, timesteps, signed, constant, size = _class_key(x, timesteps, signed, constant)
    kind = f"{'signed' if signed else 'unsigned'}{'_constant' if constant else ''}"
    return f"{device.type} {str(dtype).removeprefix('torch.')} T={timesteps} {kind} numel~{size}"


def _class_key(x: torch.Tensor, timesteps: int, signed: bool, constant: bool) -> tuple:
    step_numel = x.numel() if constant else x.numel() // max(x.shape[0], 1)
    return x.device, x.dtype, timesteps, signed, constant, pow2_ceil(step_numel)


def pow2_ceil(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1): the size bucket of a kernel class."""
    return 1 << max(n - 1, 0).bit_length()


def _load() -> dict:
    path = cache_path()
    if path not in _file:
        try:
            _file[path] = json.loads(path.read_text())
        except (OSError, ValueError):
            _file[path] = {}
    return _file[path]


def _store(machine: str, cls: str, entry: dict) -> None:
    """Merge one decision into the cache file; a cache that cannot be written only costs a re-probe."""
    path = cache_path()
    _file.pop(path, None)  # re-read: another process may have added entries
    data = _load()
    data.setdefault(machine, {})[cls] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)  # atomic: concurrent processes never read half a file
    except OSError as err:
        logger.warning("could not write the kernel choice cache %s (%s); it will be measured again", path, err)


def _compile_cost(machine: str) -> float:
    seconds = [e["compile_s"] for e in _load().get(machine, {}).values() if "compile_s" in e]
    return min(seconds) if seconds else DEFAULT_COMPILE_S


def _timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def run(eager, compiled_factory, args: tuple, x: torch.Tensor, timesteps: int, signed: bool, constant: bool):
    """Run one neuron call with the kernel chosen for its class (see the module docstring)."""
    key = _class_key(x, timesteps, signed, constant)
    decided = _decided.get(key)
    if decided is not None or _unavailable:
        return compiled_factory()(*args) if decided else eager(*args)
    if key not in _pending:
        cls, machine = kernel_class(x, timesteps, signed, constant), machine_key(x.device)
        cached = _load().get(machine, {}).get(cls)
        if cached is not None and cached["choice"] == "eager":
            _decided[key] = False
            logger.info("neuron kernels %s: eager loop (cached measurement, %s)", cls, cache_path())
            return eager(*args)
        pays_after = cached["compile_s"] if cached is not None else _compile_cost(machine)
        _pending[key] = _Pending(cls, machine, pays_after)
    out, seconds, due = _tally(_pending, key, lambda: eager(*args), x.device)
    if due is not None:
        _decided[key] = _decide(due.name, due.machine, eager, compiled_factory, args, out, seconds)
    return out


def _tally(pending: dict, key: tuple, fn, device: torch.device):
    """Run and time ``fn`` for an undecided class; the class's ``_Pending``, removed, once it is due."""
    out, seconds = _timed(fn, device)
    with _lock:  # calls from several threads: one of them takes the class's entry
        entry = pending.get(key)
        if entry is None:  # another thread is deciding this class
            return out, seconds, None
        entry.spent += seconds
        if entry.spent < entry.pays_after:
            return out, seconds, None
        del pending[key]
    return out, seconds, entry


def _decide(cls, machine, eager, compiled_factory, args, eager_out, eager_s) -> bool:
    """Build, check and time the fused kernel; True if it is to be used."""
    device = eager_out.device
    try:
        fused, compile_s = _timed(lambda: compiled_factory()(*args), device)
    except Exception as err:  # no working compiler (no C++ toolchain, unsupported Python, ...)
        _unavailable.append(f"{type(err).__name__}: {err}".splitlines()[0])
        logger.warning("torch.compile is not usable here (%s); neurons use the eager loop", _unavailable[0])
        return False
    if not torch.equal(fused, eager_out):
        logger.warning("neuron kernels %s: the fused kernel's outputs differ from the eager loop's; eager kept", cls)
        return False
    # best of two calls each: one call of either may be slowed by something else on the machine
    fused_s = min(_timed(lambda: compiled_factory()(*args), device)[1] for _ in range(2))
    eager_s = min(eager_s, _timed(lambda: eager(*args), device)[1])
    choice = "compiled" if fused_s < eager_s else "eager"
    entry = dict(choice=choice, eager_ms=eager_s * 1e3, compiled_ms=fused_s * 1e3, compile_s=compile_s)
    _store(machine, cls, entry)
    logger.info(
        "neuron kernels %s: %s (eager %.1f ms, fused %.1f ms per call, compile %.1f s; cached in %s)",
        cls,
        choice,
        eager_s * 1e3,
        fused_s * 1e3,
        compile_s,
        cache_path(),
    )
    return choice == "compiled"


def run_integer(float_fn, integer_fn, key: tuple, describe, x: torch.Tensor):
    """One spike-fed conv call with the synapse kernel chosen for its class (module docstring).

    ``float_fn(x)`` / ``integer_fn(x)`` run the layer on (a slice of) the input; ``integer_fn``
    returns None where this layer cannot take the int8 path now (weights off the integer grid).
    ``key`` identifies the class; ``describe(key)`` gives its name in the cache file.
    """
    decided = _int_decided.get(key)
    if decided is None and key not in _int_pending:
        name, machine = describe(key), machine_key(x.device)
        cached = _load().get(machine, {}).get(name)
        if cached is not None:
            decided = _int_decided[key] = cached["choice"] == "integer"
            logger.info("spike-fed convs %s: %s (cached measurement, %s)", name, cached["choice"], cache_path())
        else:
            _int_pending[key] = _Pending(name, machine, INTEGER_PROBE_AFTER_S)
    if decided is not None:
        out = integer_fn(x) if decided else None
        return float_fn(x) if out is None else out
    out, seconds, due = _tally(_int_pending, key, lambda: float_fn(x), x.device)
    if due is not None:
        choice = _probe_integer(due, float_fn, integer_fn, x, seconds)
        if choice is None:  # this layer cannot tell (off the grid): another of the class will
            _int_pending[key] = due
        else:
            _int_decided[key] = choice
    return out


def _probe_integer(pending: _Pending, float_fn, integer_fn, x: torch.Tensor, float_s: float) -> bool | None:
    """Time both kernels on a slice of ``x``; True to use the int8 GEMM, None if it does not apply here."""
    n = max(1, min(x.shape[0], int(x.shape[0] * PROBE_SLICE_S / max(float_s, 1e-9))))
    part = x[:n]
    try:
        if integer_fn(x[:1]) is None:  # untimed: one-off costs (the weights' integer grid) and availability
            return None
        got, integer_s = _timed(lambda: integer_fn(part), x.device)
    except RuntimeError as err:  # a shape / layout this device's int8 GEMM does not take
        logger.warning("spike-fed convs %s: the int8 GEMM failed (%s); float convolutions kept", pending.name, err)
        _store(pending.machine, pending.name, dict(choice="float", error=str(err).splitlines()[0]))
        return False
    want, slice_float_s = _timed(lambda: float_fn(part), x.device)
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max().clamp_min(1))):
        logger.warning("spike-fed convs %s: the int8 outputs differ from the float ones; float kept", pending.name)
        return False
    if integer_s < 2 * slice_float_s:  # plausibly faster: time it again, without first-call costs
        integer_s = min(integer_s, _timed(lambda: integer_fn(part), x.device)[1])
        slice_float_s = min(slice_float_s, _timed(lambda: float_fn(part), x.device)[1])
    choice = "integer" if integer_s < slice_float_s else "float"
    entry = dict(choice=choice, float_ms=slice_float_s * 1e3, integer_ms=integer_s * 1e3, probe_samples=n)
    _store(pending.machine, pending.name, entry)
    logger.info(
        "spike-fed convs %s: %s (float %.2f ms, int8 %.2f ms on %d samples; cached in %s)",
        pending.name,
        choice,
        slice_float_s * 1e3,
        integer_s * 1e3,
        n,
        cache_path(),
    )
    return choice == "integer"


def reset() -> None:
    """Forget this process's tallies and decisions (the cache file stays)."""
    _pending.clear()
    _decided.clear()
    _int_pending.clear()
    _int_decided.clear()
    _unavailable.clear()
    _file.clear()
