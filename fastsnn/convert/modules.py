"""The modules a converted graph runs on: neurons over time and the region adapters.

Between neurons, time is folded into the batch (``[T*N, ...]``); :class:`GraphNeuron` unfolds
it, :class:`TimeCollapse` averages it away on the way into the output region and
:class:`StaticExpand` repeats analog-input values over T where they meet spike trains. They all
read T and the run state of the current call from one shared :class:`TimeContext`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

from ..neuron import IFNeuron


@dataclass(frozen=True)
class RunState:
    """How one call of a SpikingModel runs its graph.

    mode ``"mean"``: the output region runs once on the mean over T (normal inference);
    ``"cummean"``: on the running mean after each step (accuracy-vs-time curves);
    ``"steps"``: on the raw per-step values (spike statistics count every event);
    ``"streaming"``: one time step per call, ``[N, ...]`` tensors, state kept in the modules;
    with ``per_step`` the output region sees each step's own values instead of their running
    mean (spike statistics in streaming mode).
    ``timesteps`` is T as read when the call started: changing it mid-call waits for the next.
    """

    mode: str
    timesteps: int
    per_step: bool = False


# The run states of the calls in progress in this thread / task, innermost last, each with the
# TimeContext it belongs to. A ContextVar, not an attribute: concurrent calls in other threads
# and calls nested in this one (another model, or a hook calling the same one) keep their own.
_RUNS: ContextVar[tuple[tuple[TimeContext, RunState], ...]] = ContextVar("fastsnn_runs", default=())


class TimeContext:
    """What every time-aware module of one SpikingModel shares: T, and the state of the current call.

    Outside a :meth:`run` (e.g. ``snn.net`` called directly) the graph runs in mode ``"mean"``.
    """

    def __init__(self, timesteps: int):
        self.timesteps = timesteps

    @contextmanager
    def run(self, mode: str, per_step: bool = False) -> Iterator[RunState]:
        """Run this context's modules in ``mode`` until the ``with`` block ends (this call only)."""
        state = RunState(mode, self.timesteps, per_step)
        token = _RUNS.set((*_RUNS.get(), (self, state)))
        try:
            yield state
        finally:
            _RUNS.reset(token)

    def current(self) -> RunState:
        """The run state of the innermost call of this context in progress here."""
        for ctx, state in reversed(_RUNS.get()):
            if ctx is self:
                return state
        return RunState("mean", self.timesteps)

    @property
    def mode(self) -> str:
        return self.current().mode


class GraphNeuron(nn.Module):
    """An :class:`IFNeuron` inside a converted graph: unfolds ``[T*N, ...]`` into time.

    ``constant_input`` neurons (the first layer) receive the static ``[N, ...]`` input once.
    ``source`` is the node of the ANN trace it replaces (the ANN activation it mimics).
    """

    def __init__(self, neuron: IFNeuron, ctx: TimeContext, constant_input: bool, source: str, path: str):
        super().__init__()
        self.neuron = neuron
        self.ctx = ctx
        self.constant_input = constant_input
        self.source = source
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        run = self.ctx.current()
        T = run.timesteps
        if run.mode == "streaming":
            return self.neuron.step(x, horizon=T)
        if self.constant_input:
            out = self.neuron.forward_constant(x, T)
        else:
            out = self.neuron(x.reshape(T, x.shape[0] // T, *x.shape[1:]))
        return out.flatten(0, 1)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, constant_input={self.constant_input}"


class TimeCollapse(nn.Module):
    """Mean over T of a folded ``[T*N, ...]`` spike train, on its way into the output layer."""

    def __init__(self, ctx: TimeContext):
        super().__init__()
        self.ctx = ctx
        self.total: torch.Tensor | None = None  # streaming: sum of the steps so far
        self.count = 0

    def reset(self) -> None:
        self.total, self.count = None, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        run = self.ctx.current()
        if run.mode == "streaming" and run.per_step:
            return x
        if run.mode == "streaming":  # running mean of the steps seen so far
            if self.total is None:
                self.total = x.clone()  # our own buffer: accumulated in place below
            else:
                self.total.add_(x)
            self.count += 1
            return self.total / self.count
        if run.mode == "steps":
            return x
        T = run.timesteps
        x = x.reshape(T, x.shape[0] // T, *x.shape[1:])
        if run.mode == "mean":
            return x.mean(0)
        steps = torch.arange(1, T + 1, device=x.device, dtype=x.dtype).reshape(T, *[1] * (x.dim() - 1))
        return (x.cumsum(0) / steps).flatten(0, 1)


class StaticExpand(nn.Module):
    """Repeats a static ``[N, ...]`` tensor over T where it meets folded ``[T*N, ...]`` ones.

    ``always=False`` (edges into the output region) repeats only when the output region
    runs per step (modes ``cummean`` / ``steps``).
    """

    def __init__(self, ctx: TimeContext, always: bool):
        super().__init__()
        self.ctx = ctx
        self.always = always

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):  # e.g. a size read off the input: the same at every step
            return x
        run = self.ctx.current()
        if run.mode == "streaming" or (not self.always and run.mode == "mean"):
            return x
        return x.unsqueeze(0).expand(run.timesteps, *x.shape).flatten(0, 1)


@dataclass(frozen=True)
class SpikingLayer:
    """One neuron layer of a :class:`SpikingModel` (for fine-tuning, statistics, logs)."""

    name: str  # submodule name of its GraphNeuron in ``SpikingModel.net``
    path: str  # the ANN's QuantReLU module path it replaces
    constant_input: bool  # first layer: its input is the analog image, exact by construction
