"""Integrate-and-fire neurons (docs/method.md §3), signed and unsigned, multi-step over T.

Time is the first dimension (``[T, N, ...]``). A neuron starts every sequence with its
membrane at ``threshold / 2`` and resets by subtraction, so with a constant input ``x`` it
emits ``clamp(round(T * x / threshold), 0, T)`` spikes: the ``T + 1``-level quantized ReLU.
Each spike carries the value ``threshold`` (positive) or ``-threshold`` (negative).

The *signed* neuron may take a spike back: when its membrane falls below zero while it
has fired more positive than negative spikes, it emits ``-1`` and adds ``threshold`` back.
Its net spike count therefore stays in ``[0, T]`` and its mean output on the quantized
ANN's grid, whatever order its input spikes arrive in (the paper's fix for the
*sequential error*). ``signed=False`` gives the ordinary IF neuron, the baseline.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from .planner import kernels

# A membrane counts as negative below -TOLERANCE * threshold, so that float round-off
# of an exactly-zero membrane does not trigger a negative spike.
TOLERANCE = 1e-6


def if_step(x_t, v, count, threshold, signed: bool, out=None, scratch=None):
    """One time step for a whole tensor of neurons; returns ``spikes * threshold``.

    ``spikes`` is in {-1, 0, +1}. The membrane ``v`` and, for signed neurons, the running net
    spike ``count`` (any dtype: float, or a small integer type for long-lived state) are
    updated in place, so that a state kept across steps does not grow. ``out``: a tensor of
    ``v``'s shape and dtype to write the result into; ``scratch``: a tensor of ``count``'s
    shape and dtype that a signed step may overwrite (a multi-step loop passes the same one
    every step, instead of allocating a temporary per step).
    """
    v.add_(x_t)
    # comparisons written straight into the output and the count's dtype, no boolean masks: each is one pass
    spikes = torch.ge(v, threshold, out=torch.empty_like(v) if out is None else out)
    if signed:
        negative = torch.lt(v, -TOLERANCE * threshold, out=torch.empty_like(count) if scratch is None else scratch)
        # only where the net count (a whole number >= 0) is positive: min(negative, count)
        torch.minimum(negative, count, out=negative)
        spikes.sub_(negative)  # (where negative, v < threshold: no positive spike)
        count.add_(spikes if count.dtype.is_floating_point else spikes.to(count.dtype))
    spikes.mul_(threshold)
    v.sub_(spikes)  # the reset
    return spikes


def if_multistep(x: torch.Tensor, threshold: torch.Tensor, signed: bool, timesteps: int, constant: bool):
    """Run T steps from the initial state; ``x`` is ``[T, ...]``, or ``[...]`` when ``constant``.

    Returns ``spikes * threshold`` as ``[T, ...]``. Membranes accumulate in at least float32.
    """
    theta, v, count, out, scratch = multistep_buffers(x if constant else x[0], threshold, signed, timesteps)
    for t in range(timesteps):
        step_into(out[t], x if constant else x[t], v, count, theta, signed, scratch)
    return out


def if_multistep_peak(x: torch.Tensor, threshold: torch.Tensor, signed: bool, timesteps: int, constant: bool):
    """The allocations of :func:`if_multistep` at its peak, computing one step instead of T (for
    memory estimates on the meta device).

    Every step of the loop allocates the same temporaries and frees them before the next, so the
    buffers (:func:`multistep_buffers`) and one step's temporaries are the whole peak.
    """
    like = x if constant else x[0]
    theta, v, count, out, scratch = multistep_buffers(like, threshold, signed, timesteps)
    step_into(out[0], like, v, count, theta, signed, scratch)
    return out


def multistep_buffers(like: torch.Tensor, threshold: torch.Tensor, signed: bool, timesteps: int):
    """``(threshold, v, count, out, scratch)`` of a T-step loop over steps shaped like ``like``.

    All are in ``like``'s memory layout (channels-last for a converted network's 4-d tensors,
    contiguous otherwise), and every step ``out[t]`` is too: mixing layouts in one op costs more
    than the op. ``out`` is written step by step (a list + torch.stack would hold it twice).
    """
    dtype = torch.promote_types(like.dtype, torch.float32)
    layout = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    theta = threshold.to(dtype)
    v = torch.empty(like.shape, dtype=dtype, device=like.device, memory_format=layout).fill_(0.5).mul_(theta)
    count = torch.zeros_like(v)
    out = _steps_like(like, timesteps)
    scratch = torch.empty_like(count) if signed else None
    return theta, v, count, out, scratch


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-d tensor stored channels-last (and not also contiguous, as tensors with C = 1 are)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _steps_like(like: torch.Tensor, timesteps: int) -> torch.Tensor:
    """An uninitialised ``[T, *like.shape]`` tensor whose steps are stored like ``like``."""
    if is_channels_last(like):
        n, c, h, w = like.shape
        return torch.empty((timesteps, n, h, w, c), dtype=like.dtype, device=like.device).permute(0, 1, 4, 2, 3)
    return torch.empty((timesteps, *like.shape), dtype=like.dtype, device=like.device)


def step_into(buf: torch.Tensor, x_t, v, count, threshold, signed: bool, scratch=None) -> None:
    """:func:`if_step` with its result written into ``buf`` (one step of an output buffer):
    straight, when ``buf`` has the membrane's dtype, else as a copy (the reset must subtract the
    membrane-precision threshold, not ``buf``'s rounded one)."""
    if buf.dtype == v.dtype:
        if_step(x_t, v, count, threshold, signed, out=buf, scratch=scratch)
    else:
        buf.copy_(if_step(x_t, v, count, threshold, signed, scratch=scratch))


def count_dtype(horizon: int | None) -> torch.dtype:
    """Smallest integer type that holds a net spike count in ``[0, horizon]``."""
    if horizon is not None and horizon <= 127:
        return torch.int8
    if horizon is not None and horizon <= 32767:
        return torch.int16
    return torch.int32


_compiled_multistep: dict[tuple, object] = {}


def _multistep_fn(compiled: bool, timesteps: int = 0, signed: bool = True, constant: bool = False):
    """The eager loop, or one fused kernel (torch.compile) that reads and writes each element once.

    The loop is unrolled, so every (T, signed, constant) needs its own kernel. Each gets its own
    copy of the function's code object: torch.compile keeps its kernels per code object and
    silently falls back to the eager loop once one code object has 8 of them (dynamo's
    ``recompile_limit``), which a network evaluated at several T used to reach.
    """
    if not compiled:
        return if_multistep
    key = (timesteps, signed, constant)
    if key not in _compiled_multistep:
        code = if_multistep.__code__.replace(
            co_name=f"if_multistep_T{timesteps}_{'signed' if signed else 'unsigned'}{'_constant' if constant else ''}"
        )
        fn = types.FunctionType(code, if_multistep.__globals__, code.co_name, if_multistep.__defaults__)
        _compiled_multistep[key] = torch.compile(fn, dynamic=True)
    return _compiled_multistep[key]


class IFNeuron(nn.Module):
    """A layer of integrate-and-fire neurons sharing one threshold.

    ``forward(x_seq)`` takes ``[T, N, ...]`` synaptic input and returns the ``[T, N, ...]``
    output ``spikes * threshold``. ``forward_constant(x, T)`` does the same for an input
    that is identical at every step (the first layer under direct encoding) without
    materialising ``T`` copies of it. ``step(x_t)`` advances a persistent state one step
    at a time (streaming simulation); ``reset()`` clears that state.

    ``compiled=True`` runs the T-step loop as one ``torch.compile``-d kernel (often faster; the
    first call per T compiles for seconds). ``compiled="auto"`` (the converter's default)
    compiles a kernel only once its eager runs have taken as long as a compile, and keeps it only
    where it measured faster on this machine (:mod:`fastsnn.planner.kernels`). The outputs are the
    same either way.
    """

    def __init__(self, threshold: float | torch.Tensor, signed: bool = True, compiled: bool | str = False):
        super().__init__()
        threshold = torch.as_tensor(threshold, dtype=torch.float32).detach().clone().reshape(-1)
        if threshold.numel() != 1 or threshold.item() <= 0:
            raise ValueError(f"IFNeuron needs one positive threshold, got {threshold.tolist()}")
        self.register_buffer("threshold", threshold)
        if compiled not in (True, False, "auto"):
            raise ValueError(f"compiled must be True, False or 'auto', got {compiled!r}")
        self.signed = signed
        self.compiled = compiled
        self.estimating = False  # for_estimates(): allocate as the T-step loop at its peak, compute one step
        self.v: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"threshold={self.threshold.item():.4g}, signed={self.signed}"

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self._run(x_seq, x_seq.shape[0], constant=False)

    def forward_constant(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        return self._run(x, timesteps, constant=True)

    def _run(self, x: torch.Tensor, timesteps: int, constant: bool) -> torch.Tensor:
        args = (x, self.threshold, self.signed, timesteps, constant)
        if self.estimating:
            return if_multistep_peak(*args)
        if self.compiled == "auto":
            fused = lambda: _multistep_fn(True, timesteps, self.signed, constant)  # noqa: E731
            return kernels.run(if_multistep, fused, args, x, timesteps, self.signed, constant)
        return _multistep_fn(self.compiled, timesteps, self.signed, constant)(*args)

    def for_estimates(self) -> None:
        """In a meta-device copy for memory estimates: :func:`if_multistep_peak` instead of the loop."""
        self.estimating = True

    def reset(self) -> None:
        self.v = None
        self.count = None

    def step(self, x_t: torch.Tensor, horizon: int | None = None) -> torch.Tensor:
        """Advance the persistent state by one step (:func:`if_step`, so the same outputs as
        the multi-step run); returns ``spikes * threshold``.

        The state stays small: the membrane ``v`` (float32) is updated in place and the net
        spike count of a signed neuron is an integer tensor, int8 when ``horizon`` (the number
        of steps this state will see, at most) is <= 127. Between steps the state is ``v``
        (4 bytes per neuron) plus ``count`` (1 byte, signed neurons only).
        """
        if self.v is None:
            dtype = torch.promote_types(x_t.dtype, torch.float32)
            self.v = torch.full_like(x_t, 0.5, dtype=dtype) * self.threshold.to(dtype)
            self.count = torch.zeros_like(x_t, dtype=count_dtype(horizon)) if self.signed else None
        spikes = if_step(x_t, self.v, self.count, self.threshold.to(self.v.dtype), self.signed)
        return spikes.to(x_t.dtype)
