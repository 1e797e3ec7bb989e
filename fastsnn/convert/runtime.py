"""The converted network: :class:`SpikingModel` runs its graph over T steps, multi-step or streaming.

It only executes: the mode and the chunk of each call come from its planner
(:class:`fastsnn.planner.simulation.SimulationPlanner`), its settings from one
:class:`~fastsnn.config.SimulationConfig`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import fx, nn

from ..config import SimulationConfig
from ..neuron import IFNeuron
from ..planner.simulation import SimulationPlanner
from .modules import GraphNeuron, SpikingLayer, TimeCollapse, TimeContext
from .passes import dependents, split_static

# set at conversion: the neurons and synapses are built for them
FIXED_AT_CONVERSION = ("signed", "compiled", "integer_kernels", "channels_last")


def _map_tensors(fn, obj):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(fn, v) for k, v in obj.items()}
    return obj


class SpikingModel(nn.Module):
    """A converted network: ``snn(x)`` returns the mean over T of the output layer.

    ``snn(x, return_steps=True)`` returns ``(output, steps)`` where ``steps[t-1]`` is the
    network output after ``t`` steps (the running mean), for accuracy-vs-time curves.

    ``snn.config`` is its :class:`~fastsnn.config.SimulationConfig`. ``timesteps``, ``mode``,
    ``chunk_size`` and ``memory_budget`` can be changed after conversion (``snn.timesteps = 7``
    evaluates at another T; ``snn.mode = "streaming"``); the other options are fixed at conversion.
    ``"multistep"`` runs the layers between neurons on all T steps at once, time folded into the
    batch; ``"streaming"`` runs one step after another with per-neuron state, so memory does not
    grow with T. Both give the same outputs, and so does any ``chunk_size`` (samples are
    independent). ``"auto"`` choices are made per input shape by ``snn.planner``.
    The model is always in inference mode: ``train()`` leaves its layers in eval mode.

    Each call runs with its own mode and T (read when it starts), so one model may serve
    several threads at once, and a hook may call it from inside a call. Streaming calls are
    the exception: their state lives in the neurons, so a model runs one streaming call at a
    time and refuses a second one (RuntimeError); give each thread its own copy for that.
    """

    def __init__(
        self,
        net: fx.GraphModule,
        ctx: TimeContext,
        layers: list[SpikingLayer],
        static_modules: frozenset[str],
        config: SimulationConfig,
    ):
        super().__init__()
        self.net = net
        self.ctx = ctx
        self.layers = layers
        self.static_modules = static_modules  # conv/linear run on the analog input (MACs)
        self._config = config
        self.config = config
        self.planner = SimulationPlanner(self)
        self._streaming: tuple[fx.GraphModule, fx.GraphModule] | None = None
        self.net.eval()
        # inference needs no autograd graph; layerwise_finetune enables one layer at a time
        self.net.requires_grad_(False)

    @property
    def config(self) -> SimulationConfig:
        return self._config

    @config.setter
    def config(self, config: SimulationConfig) -> None:
        if not isinstance(config, SimulationConfig) or config.timesteps is None:
            raise ValueError(f"a SpikingModel needs a SimulationConfig with timesteps set, got {config!r}")
        fixed = [k for k in FIXED_AT_CONVERSION if getattr(config, k) != getattr(self._config, k)]
        if fixed:
            raise ValueError(f"{fixed} are fixed at conversion: convert again with the new settings")
        self._config = config
        self.ctx.timesteps = config.timesteps

    def _set(self, **change) -> None:
        self.config = self._config.replace(**change)

    timesteps = property(lambda self: self._config.timesteps, lambda self, v: self._set(timesteps=v))
    mode = property(lambda self: self._config.mode, lambda self, v: self._set(mode=v))
    chunk_size = property(lambda self: self._config.chunk_size, lambda self, v: self._set(chunk_size=v))
    memory_budget = property(lambda self: self._config.memory_budget, lambda self, v: self._set(memory_budget=v))
    signed = property(lambda self: self._config.signed)

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()  # batch norm statistics and dropout stay frozen in an SNN
        return self

    def neurons(self) -> list[tuple[str, GraphNeuron]]:
        return [(layer.name, self.net.get_submodule(layer.name)) for layer in self.layers]

    def forward(self, x: torch.Tensor, return_steps: bool = False):
        run = "cummean" if return_steps else "mean"
        mode, chunk = self.planner.plan(x, run)
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
        mode, chunk = self.planner.plan(x, "steps")
        chunks = [x] if chunk is None else x.split(chunk)
        if mode == "streaming":
            with self._streaming_call(), self.ctx.run("streaming", per_step=True):
                for chunk in chunks:
                    self._forward_streaming(chunk, False)
            return
        with self.ctx.run("steps"):
            for chunk in chunks:
                self.net(chunk)

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
