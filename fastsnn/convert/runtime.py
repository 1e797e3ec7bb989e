"""The modules a converted graph runs on: neurons over time, the region adapters, the model.

Between neurons, time is folded into the batch (``[T*N, ...]``); :class:`GraphNeuron` unfolds
it, :class:`TimeCollapse` averages it away on the way into the output region and
:class:`StaticExpand` repeats analog-input values over T where they meet spike trains.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import fx, nn

from ..neuron import IFNeuron
from .chunking import last_level_cache, samples_per_chunk
from .memory import AllocationTracker, available_memory, meta_copy, meta_like
from .passes import dependents, split_static

logger = logging.getLogger(__name__)

# mode="auto" without a memory_budget: this fraction of the device's available memory
DEFAULT_MEMORY_FRACTION = 0.5


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


def _map_tensors(fn, obj):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(fn, v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class SpikingLayer:
    """One neuron layer of a :class:`SpikingModel` (for fine-tuning, statistics, logs)."""

    name: str  # submodule name of its GraphNeuron in ``SpikingModel.net``
    path: str  # the ANN's QuantReLU module path it replaces
    constant_input: bool  # first layer: its input is the analog image, exact by construction


class SpikingModel(nn.Module):
    """A converted network: ``snn(x)`` returns the mean over T of the output layer.

    ``snn(x, return_steps=True)`` returns ``(output, steps)`` where ``steps[t-1]`` is the
    network output after ``t`` steps (the running mean), for accuracy-vs-time curves.
    ``snn.timesteps`` can be changed after conversion (evaluate at another T).

    ``snn.mode`` chooses the simulation: ``"multistep"`` (default, fastest) runs the layers
    between neurons on all T steps at once, time folded into the batch; ``"streaming"`` runs
    one step after another with per-neuron state, so memory does not grow with T (for large
    inputs at large T). Both give the same outputs. ``"auto"`` chooses one of them per call:
    streaming when a multi-step pass over the input's shape (one chunk of it) would need more
    than ``memory_budget`` bytes at its peak, multi-step otherwise (see :meth:`resolve_mode`).
    ``memory_budget``: bytes (an int, or a float > 1), or a fraction (a float in (0, 1]) of the
    memory available on the input's device when the choice is made (CUDA: the free memory of
    ``torch.cuda.mem_get_info``; CPU: ``MemAvailable`` of ``/proc/meminfo``), or ``None``: the
    fraction ``DEFAULT_MEMORY_FRACTION`` (one half).
    ``snn.chunk_size`` simulates a batch this many samples at a time (``None``: the whole batch
    at once): the outputs do not change (samples are independent), memory shrinks with the
    chunk, and on CPUs the T-times larger tensors of the multistep mode can stay in the cache,
    which makes small chunks faster there. ``"auto"`` (the converter's default) derives the
    chunk per input shape from the layer sizes and the CPU's cache
    (:mod:`fastsnn.convert.chunking`, :meth:`resolve_chunk`); GPUs and streaming calls take
    whole batches.
    The model is always in inference mode: ``train()`` leaves its layers in eval mode.

    Each call runs with its own mode and T (read when it starts), so one model may serve
    several threads at once, and a hook may call it from inside a call. Streaming calls are
    the exception: their state lives in the neurons, so a model runs one streaming call at a
    time and refuses a second one (RuntimeError); give each thread its own copy for that.
    """

    MODES = ("multistep", "streaming", "auto")

    def __init__(
        self,
        net: fx.GraphModule,
        ctx: TimeContext,
        signed: bool,
        layers: list[SpikingLayer],
        static_modules: frozenset[str],
        mode: str = "multistep",
        chunk_size: int | None = None,
        memory_budget: float | None = None,
    ):
        super().__init__()
        self.net = net
        self.ctx = ctx
        self.signed = signed
        self.layers = layers
        self.static_modules = static_modules  # conv/linear run on the analog input (MACs)
        self.mode = mode
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self._streaming: tuple[fx.GraphModule, fx.GraphModule] | None = None
        self._auto_choices: dict[tuple, str] = {}  # mode="auto": the choice per input shape and setting
        self._auto_chunks: dict[tuple, int] = {}  # chunk_size="auto": samples per chunk, per sample shape
        object.__setattr__(self, "_meta", None)  # a meta-device copy for the estimates (not a submodule)
        self.net.eval()
        # inference needs no autograd graph; layerwise_finetune enables one layer at a time
        self.net.requires_grad_(False)

    @property
    def timesteps(self) -> int:
        return self.ctx.timesteps

    @timesteps.setter
    def timesteps(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"timesteps must be >= 1, got {value}")
        self.ctx.timesteps = int(value)

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()  # batch norm statistics and dropout stay frozen in an SNN
        return self

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError(f"SpikingModel.mode must be one of {self.MODES}, got {mode!r}")
        self._mode = mode

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_meta"] = None  # the estimates' meta copy: rebuilt when needed, not pickled or copied
        return state

    @property
    def chunk_size(self) -> int | str | None:
        return self._chunk_size

    @chunk_size.setter
    def chunk_size(self, chunk_size: int | str | None) -> None:
        if chunk_size not in (None, "auto") and (isinstance(chunk_size, (bool, str)) or int(chunk_size) < 1):
            raise ValueError(f"chunk_size must be a positive number of samples, 'auto' or None, got {chunk_size!r}")
        self._chunk_size = chunk_size if chunk_size in (None, "auto") else int(chunk_size)

    @property
    def memory_budget(self) -> float | None:
        return self._memory_budget

    @memory_budget.setter
    def memory_budget(self, budget: float | None) -> None:
        if budget is not None and (isinstance(budget, bool) or not float(budget) > 0):
            raise ValueError(
                f"memory_budget must be bytes (an int), a fraction (a float in (0, 1]) or None, got {budget!r}"
            )
        self._memory_budget = budget

    def neurons(self) -> list[tuple[str, GraphNeuron]]:
        return [(layer.name, self.net.get_submodule(layer.name)) for layer in self.layers]

    def forward(self, x: torch.Tensor, return_steps: bool = False):
        run = "cummean" if return_steps else "mean"
        mode, chunk = self.plan(x, run)
        if mode == "streaming":
            with self._streaming_call(), self.ctx.run("streaming"):
                return self._chunked(self._forward_streaming, x, return_steps, chunk)
        with self.ctx.run(run):
            return self._chunked(self._forward_multistep, x, return_steps, chunk)

    def forward_steps(self, x: torch.Tensor):
        """Outputs with the per-step values of the output layer (mode ``steps``), ``[T, N, ...]``."""
        with self.ctx.run("steps"):
            return self._unfold_time(self.net(x))

    def simulate_steps(self, x: torch.Tensor) -> None:
        """Simulate ``x`` in the model's mode and chunks with the output region fed each step's own
        values (as :meth:`forward_steps`, whose every layer sees the same events); the outputs are
        dropped. For observers of the layers (hooks: spike statistics): the memory of the mode used."""
        mode, chunk = self.plan(x, "steps")
        chunks = [x] if chunk is None else x.split(chunk)
        if mode == "streaming":
            with self._streaming_call(), self.ctx.run("streaming", per_step=True):
                for chunk in chunks:
                    self._forward_streaming(chunk, False)
            return
        with self.ctx.run("steps"):
            for chunk in chunks:
                self.net(chunk)

    # ----------------------------------------------------------------------- mode and chunks "auto"

    def plan(self, x: torch.Tensor, run: str = "mean") -> tuple[str, int | None]:
        """The mode and the samples per chunk of a call on ``x``."""
        if self.mode == "streaming":
            return "streaming", None if self.chunk_size == "auto" else self.chunk_size
        chunk = self.resolve_chunk(x, run)
        mode = self.resolve_mode(x, run, chunk)
        if mode == "streaming" and self.chunk_size == "auto":
            chunk = None  # the per-step state is small: a streaming call takes the whole batch
        return mode, chunk

    def resolve_chunk(self, x: torch.Tensor, run: str = "mean") -> int | None:
        """Samples per chunk of a multi-step call on ``x``: ``chunk_size``, or for ``"auto"`` the
        choice for ``x``'s sample shape (None: the whole batch)."""
        if self.chunk_size != "auto":
            return self.chunk_size
        if x.device.type != "cpu" or x.shape[0] <= 1:
            return None  # GPUs want whole batches
        key = (tuple(x.shape[1:]), x.dtype, self.timesteps)  # the run state barely changes the peak
        with _AUTO_LOCK:
            if key not in self._auto_chunks:
                self._auto_chunks[key] = self._choose_chunk(x[:1], run)
            n = self._auto_chunks[key]
        return None if n >= x.shape[0] else n

    def _choose_chunk(self, sample: torch.Tensor, run: str) -> int:
        shape = f"samples of shape {tuple(sample.shape[1:])}, T={self.timesteps}"
        try:
            per_sample = self.estimate_multistep_bytes(sample, run)
        except Exception as err:  # an op the meta device cannot run: whole batches, and say so
            logger.warning(
                "chunk_size='auto': whole batches for %s: the memory estimate failed (%s: %s)",
                shape,
                type(err).__name__,
                err,
            )
            return 2**62
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

    def resolve_mode(self, x: torch.Tensor, run: str = "mean", chunk: int | None = None) -> str:
        """The simulation a call on ``x`` uses: ``mode``, or for ``"auto"`` the choice for ``x``'s shape.

        ``"auto"`` estimates the peak memory of a multi-step pass (run state ``run``) over one chunk
        of ``x`` (:meth:`estimate_multistep_bytes`) and chooses streaming when it exceeds the
        budget, multi-step otherwise. The choice is kept per input shape, dtype, device, T, run
        state, chunk size and budget, and logged once (logger ``fastsnn.convert.runtime``, INFO).
        When the estimate fails, multi-step is used and the reason logged (WARNING).
        """
        if self.mode != "auto":
            return self.mode
        if chunk is None and self.chunk_size != "auto":
            chunk = self.chunk_size
        n = x.shape[0] if chunk is None else min(x.shape[0], chunk)
        key = ((n, *x.shape[1:]), x.dtype, str(x.device), self.timesteps, run, self.memory_budget)
        with _AUTO_LOCK:
            if key not in self._auto_choices:
                self._auto_choices[key] = self._choose_mode(x[:n], run)
            return self._auto_choices[key]

    def _choose_mode(self, x: torch.Tensor, run: str) -> str:
        shape = f"input {tuple(x.shape)} (one chunk), T={self.timesteps}"
        budget, source = self._budget_bytes(x.device)
        if budget is None:
            logger.info("mode='auto': multistep for %s: %s, so nothing to compare with", shape, source)
            return "multistep"
        try:
            estimate = self.estimate_multistep_bytes(x, run)
        except Exception as err:  # an op the meta device cannot run: keep the fast mode, and say so
            logger.warning(
                "mode='auto': multistep for %s: the multi-step memory estimate failed (%s: %s); "
                "set mode='streaming' if that does not fit",
                shape,
                type(err).__name__,
                err,
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

    def _budget_bytes(self, device: torch.device) -> tuple[int | None, str]:
        """The budget in bytes on ``device`` and where it comes from."""
        budget = self.memory_budget
        if budget is not None and (isinstance(budget, int) or float(budget) > 1):
            return int(budget), "memory_budget"
        fraction = DEFAULT_MEMORY_FRACTION if budget is None else float(budget)
        free = available_memory(device)
        name = "memory_budget" if budget is not None else "default"
        if free is None:
            return None, f"the available memory of {device} is unknown ({name} fraction {fraction:g})"
        return int(fraction * free), f"{name}: {fraction:g} of the {free / 2**30:.1f} GiB available on {device}"

    def estimate_multistep_bytes(self, x: torch.Tensor, run: str = "mean") -> int:
        """Peak bytes of new tensors a multi-step pass over ``x`` (as one chunk) allocates, output
        included: the graph run on the meta device (a copy of the model there, nothing computed)
        under :class:`~fastsnn.convert.memory.AllocationTracker`. Neurons are counted with their
        eager loop and int8 synapses as float convolutions."""
        if self._meta is None:
            object.__setattr__(self, "_meta", meta_copy(self))
        meta = self._meta
        meta.ctx.timesteps = self.timesteps
        inp = meta_like(x)
        with meta.ctx.run(run), AllocationTracker() as tracker:
            out = meta.net(inp)
            del out
        return tracker.peak

    def _chunked(self, forward, x: torch.Tensor, return_steps: bool, chunk: int | None):
        if chunk is None or x.shape[0] <= chunk:
            return forward(x, return_steps)
        parts = [forward(part, return_steps) for part in x.split(chunk)]
        if not return_steps:
            return _cat_outputs(parts, dim=0)
        return _cat_outputs([p[0] for p in parts], dim=0), _cat_outputs([p[1] for p in parts], dim=1)

    def _unfold_time(self, outputs):
        """Folded ``[T*N, ...]`` outputs -> ``[T, N, ...]``."""
        T = self.ctx.current().timesteps
        return _map_tensors(lambda t: t.reshape(T, t.shape[0] // T, *t.shape[1:]), outputs)

    def _forward_multistep(self, x: torch.Tensor, return_steps: bool):
        if not return_steps:
            return self.net(x)
        steps = self._unfold_time(self.net(x))
        return _map_tensors(lambda s: s[-1], steps), steps

    def _forward_streaming(self, x: torch.Tensor, return_steps: bool):
        if self._streaming is None:
            self._streaming = split_static(self.net, after_neurons(self.net))
        static, step = self._streaming
        boundary = static(x)  # the analog-input side, computed once
        self._reset_state()
        outputs = []
        try:
            for _ in range(self.ctx.current().timesteps):
                out = step(*boundary)
                if return_steps:
                    outputs.append(out)
        finally:
            self._reset_state()  # free the state: it is as large as all activations
        if not return_steps:
            return out
        return out, _stack_outputs(outputs)

    def _reset_state(self) -> None:
        for m in self.net.modules():
            if isinstance(m, (TimeCollapse, IFNeuron)):
                m.reset()

    @contextmanager
    def _streaming_call(self) -> Iterator[None]:
        """Hold this model's streaming state for one call; refuse a second call meanwhile.

        The state (membranes, spike counts, running sums) lives in the graph's modules, so two
        streaming calls at once, in two threads or one nested in the other, would mix it up.
        """
        with _STREAMING_LOCK:
            if id(self.net) in _STREAMING_NETS:
                raise RuntimeError(
                    "a streaming call is already running on this SpikingModel (in another thread, or "
                    "this call is nested in it). Its streaming state lives in the model's neurons, so "
                    "a model runs one streaming call at a time: use mode='multistep', or one copy of "
                    "the model per thread (copy.deepcopy(snn))."
                )
            _STREAMING_NETS.add(id(self.net))
        try:
            yield
        finally:
            with _STREAMING_LOCK:
                _STREAMING_NETS.discard(id(self.net))


# held while mode="auto" looks up or makes a choice (the estimates share each model's meta copy)
_AUTO_LOCK = threading.Lock()
# the graphs (by id) that have a streaming call in progress
_STREAMING_NETS: set[int] = set()
_STREAMING_LOCK = threading.Lock()


def _cat_outputs(outputs: list, dim: int):
    """Concatenate a list of like-structured outputs (tensors, tuples, dicts) along ``dim``."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs, dim)
    if isinstance(first, dict):
        return {k: _cat_outputs([o[k] for o in outputs], dim) for k in first}
    return type(first)(_cat_outputs(list(parts), dim) for parts in zip(*outputs))


def _stack_outputs(outputs: list):
    """Stack a list of per-step outputs (tensors or tuples/lists/dicts of them) along a new dim 0."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(outputs)
    if isinstance(first, dict):
        return {k: _stack_outputs([o[k] for o in outputs]) for k in first}
    return type(first)(_stack_outputs(list(parts)) for parts in zip(*outputs))


def after_neurons(net: fx.GraphModule) -> set[fx.Node]:
    """The neurons of a converted graph and every node that depends on them."""
    return dependents(net, lambda n: n.op == "call_module" and isinstance(net.get_submodule(n.target), GraphNeuron))
