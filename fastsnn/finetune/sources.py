"""Where the fine-tuning batches come from: simulated again for every layer, or carried.

Cost. Tuning layer ``l`` needs the SNN tuned up to ``l-1`` on every fine-tuning batch.
Simulated from the input for every layer (:class:`_Resimulated`), that makes the stage
quadratic in depth. When the batches are a fixed list and their values fit in memory, a
:class:`_Frontier` carries them instead: per batch, the spike trains (and analog-side values)
that the untuned layers still read, and a paused run of the ANN; after layer ``l`` is tuned,
only layer ``l``'s own synaptic part and neuron run again, on its cached inputs, to move the
cut past it. The values are the same as when simulated from the input: the same operations on
the same tensors. :func:`_data_source` chooses between the two, and logs why when it cannot
carry the values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import fx

from ..convert import GraphNeuron, SpikingModel
from ..planner.machine import DEFAULT_MEMORY_FRACTION, available_memory
from .graph import (
    _ancestors,
    _Cursor,
    _eval_spikes,
    _feeds,
    _LayerGraph,
    _node_params,
    _rate,
    _Tunable,
    _written_sources,
    run_until,
)

logger = logging.getLogger(__name__)

Observation = tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]  # target, feeds, r_out


@torch.no_grad()
def _observe(snn: SpikingModel, ann_gm: fx.GraphModule, lg: _LayerGraph, source: str, x: torch.Tensor):
    """ANN target, SNN input rates (feeds) and SNN output rate of one layer for a batch."""
    T = snn.timesteps
    target = run_until(ann_gm, x, source, ())[source]
    vals = run_until(snn.net, x, lg.neuron.name, lg.sources)
    return target, _feeds(snn.net, lg, vals, T), _rate(vals[lg.neuron.name], T)


class _Resimulated:
    """The batches of ``dataloader``; every observation runs the ANN and the SNN from the input.

    The cost of one layer grows with its depth (quadratic in all). Works with any loader,
    also one whose batches change between passes (each layer sees a fresh pass).
    """

    def __init__(self, snn, ann_gm, dataloader: Iterable, input_fn, device, measure_batches: int, progress):
        self.snn, self.ann_gm, self.dataloader = snn, ann_gm, dataloader
        self.input_fn, self.device, self.progress = input_fn, device, progress
        self.measure = []
        for batch in dataloader:
            if len(self.measure) >= measure_batches:
                break
            self.measure.append(input_fn(batch).to(device))

    def measured(self, t: _Tunable) -> Iterator[Observation]:
        for x in self.measure:
            yield _observe(self.snn, self.ann_gm, t.graph, t.source, x)

    def training(self, t: _Tunable, description: str) -> Iterator[Observation]:
        batches = self.dataloader if self.progress is None else self.progress(self.dataloader, description)
        for batch in batches:
            yield _observe(self.snn, self.ann_gm, t.graph, t.source, self.input_fn(batch).to(self.device))

    def advance(self, t: _Tunable) -> None:
        """Nothing to carry: the next layer simulates from the input again."""


def _storage_bytes(values: Iterable, seen: set[int]) -> int:
    """Bytes of the tensors' storages not in ``seen`` yet (views share their base's storage)."""
    total = 0
    for v in values:
        if isinstance(v, torch.Tensor):
            storage = v.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


class _Stored:
    """A cached value. A spike train (``s * theta``, ``s`` in {-1, 0, 1}) is kept as int8 ``s``
    when that gives back exactly the same tensor; anything else is kept as it is."""

    def __init__(self, value, theta: torch.Tensor | None = None):
        self.value, self.codes, self.scale = value, None, None
        if theta is not None and isinstance(value, torch.Tensor) and value.is_floating_point():
            scale = theta.to(value.dtype)
            codes = torch.round(value / scale).to(torch.int8)
            if torch.equal(codes.to(value.dtype) * scale, value):
                self.value, self.codes, self.scale = None, codes, scale

    def get(self, fresh: bool = False):
        """The value; ``fresh``: a tensor of its own (for a graph that writes into its inputs)."""
        if self.codes is not None:
            return self.codes.to(self.scale.dtype) * self.scale
        return self.value.clone() if fresh and isinstance(self.value, torch.Tensor) else self.value

    def tensors(self) -> list:
        return [self.codes, self.scale] if self.codes is not None else [self.value]


@dataclass
class _Batch:
    ann: _Cursor  # the ANN's run on this batch, paused at the current layer's target
    values: dict[str, _Stored]  # SNN values (by node name) that layers not tuned yet read


class _Frontier:
    """The fine-tuning batches, each with the values that the layers not tuned yet still read.

    Per batch: the SNN values at the cut between the tuned and the untuned layers (spike trains
    of tuned layers and of the first layers, residual skips included, as int8; analog-side
    values into spiking layers as they are), and a paused run of the ANN (its live values at
    the current layer's target). ``advance(t)`` runs layer ``t``'s synaptic part and neuron
    once more on its cached inputs, with its final weights, and drops what no later layer
    reads. A layer then costs its own synaptic part per batch, however deep it lies.
    """

    def __init__(
        self, snn: SpikingModel, ann_gm: fx.GraphModule, tunables: list[_Tunable], inputs, measure_batches, progress
    ):
        self.net, self.ann_gm, self.T, self.progress = snn.net, ann_gm, snn.timesteps, progress
        self.n_measure = min(measure_batches, len(inputs))
        self.ann_nodes = {n.name: n for n in ann_gm.graph.nodes}
        self.last_read = {name: t.step for t in tunables for name in t.graph.sources}  # last layer reading it
        tuned = {t.graph.neuron.name for t in tunables}
        self.static = [n for n in self.net.graph.nodes if n.name in self.last_read and n.name not in tuned]
        self.static_nodes = _ancestors(self.static)  # the analog side and the first layers: never tuned
        self.written = {t.step: _written_sources(self.net, t.graph) for t in tunables}
        self.batches = [self._start(x) for x in inputs]

    def _theta(self, node: fx.Node) -> torch.Tensor | None:
        module = self.net.get_submodule(node.target) if node.op == "call_module" else None
        return module.neuron.threshold if isinstance(module, GraphNeuron) else None

    @torch.no_grad()
    def _start(self, x: torch.Tensor) -> _Batch:
        cursor = _Cursor(self.net, x, self.static_nodes)
        values = {n.name: _Stored(cursor.value(n), self._theta(n)) for n in self.static}
        return _Batch(_Cursor(self.ann_gm, x), values)

    def _inputs(self, t: _Tunable, batch: _Batch) -> dict[str, torch.Tensor]:
        fresh = self.written[t.step]
        return {name: batch.values[name].get(name in fresh) for name in t.graph.sources}

    @torch.no_grad()
    def _observe(self, t: _Tunable, batch: _Batch) -> Observation:
        target = batch.ann.value(self.ann_nodes[t.source])
        values = self._inputs(t, batch)
        spikes = _eval_spikes(self.net, t.graph, values)
        return target, _feeds(self.net, t.graph, values, self.T), _rate(spikes, self.T)

    def measured(self, t: _Tunable) -> Iterator[Observation]:
        for batch in self.batches[: self.n_measure]:
            yield self._observe(t, batch)

    def training(self, t: _Tunable, description: str) -> Iterator[Observation]:
        batches = self.batches if self.progress is None else self.progress(self.batches, description)
        for batch in batches:
            yield self._observe(t, batch)

    @torch.no_grad()
    def advance(self, t: _Tunable) -> None:
        """Move the cut past layer ``t``: its spikes with its weights as they are now."""
        name = t.graph.neuron.name
        for batch in self.batches:
            if self.last_read.get(name, -1) > t.step:
                batch.values[name] = _Stored(_eval_spikes(self.net, t.graph, self._inputs(t, batch)), t.theta)
            for done in [n for n in batch.values if self.last_read[n] <= t.step]:
                del batch.values[done]

    def nbytes(self) -> int:
        seen: set[int] = set()
        total = 0
        for batch in self.batches:
            total += _storage_bytes(batch.ann.env.values(), seen)
            total += _storage_bytes((v for s in batch.values.values() for v in s.tensors()), seen)
        return total


def _frontier_bytes(snn, ann_gm, tunables: list[_Tunable], x: torch.Tensor) -> int:
    """The most memory the frontier of the one batch ``x`` holds at any layer (its input included):
    a dry run through all layers with the weights as they are."""
    probe = _Frontier(snn, ann_gm, tunables, [x], 0, None)
    peak = probe.nbytes()
    for t in tunables:
        with torch.no_grad():
            probe.batches[0].ann.value(probe.ann_nodes[t.source])
        peak = max(peak, probe.nbytes())
        probe.advance(t)
        peak = max(peak, probe.nbytes())
    return peak + x.nbytes


def _why_not_carry(snn: SpikingModel, tunables: list[_Tunable]) -> str | None:
    """Why values carried past a tuned layer could differ from simulating again, or None.

    They cannot when a layer's weights are used only by its own synaptic part (among the
    nodes that spiking layers depend on) and the layers come in graph order.
    """
    order = {n: i for i, n in enumerate(snn.net.graph.nodes)}
    positions = [order[t.graph.neuron] for t in tunables]
    if positions != sorted(positions):
        return "the layers are not in graph order"
    users: dict[int, list[fx.Node]] = {}
    for n in _ancestors(t.graph.neuron for t in tunables):
        for p in _node_params(snn.net, [n]):
            users.setdefault(id(p), []).append(n)
    for t in tunables:
        own = set(t.graph.nodes)
        for p in t.params:
            other = [n.name for n in users.get(id(p), []) if n not in own]
            if other:
                return f"the weights of layer {t.layer.path} are also used by {other[0]} (shared weights)"
    return None


def _fit(snn, ann_gm, tunables, dataloader, input_fn, device, budget: float | None) -> tuple[str | None, list | None]:
    """``(None, batches)`` when one pass of ``dataloader`` fits the cache budget, else ``(why, None)``.

    The size comes from a dry run on the first batch, scaled by the number of samples.
    """
    first = next(iter(dataloader), None)
    if first is None:
        return None, []  # no batches: nothing to carry
    x = input_fn(first).to(device)
    per_sample = _frontier_bytes(snn, ann_gm, tunables, x) / max(x.shape[0], 1)
    try:
        n_batches = len(dataloader)
    except TypeError:
        return "the data loader has no length, so the size of one pass is unknown", None
    if isinstance(dataloader, (list, tuple)):
        samples = sum(input_fn(b).shape[0] for b in dataloader)
    else:
        samples = n_batches * x.shape[0]
    need = per_sample * samples
    what = "cache_budget"
    if budget is None:
        free = available_memory(device)
        if free is None:
            logger.warning(
                "fine-tuning: the free memory of %s is unknown; the batches are cached without a limit", device
            )
            free = float("inf")
        budget, what = DEFAULT_MEMORY_FRACTION * free, f"{DEFAULT_MEMORY_FRACTION:g} of the free memory of {device}"
    if need > budget:
        return (
            f"the values carried from layer to layer would take about {need / 2**30:.3g} GiB for {n_batches} "
            f"batches, more than the budget of {budget / 2**30:.3g} GiB ({what})",
            None,
        )
    return None, list(dataloader)


def _data_source(snn, ann_gm, tunables, dataloader, input_fn, device, measure_batches, progress, cache, cache_budget):
    """The batches as a :class:`_Frontier` when allowed and when it fits, else :class:`_Resimulated`."""

    def resimulated(loader):
        return _Resimulated(snn, ann_gm, loader, input_fn, device, measure_batches, progress)

    if cache is False or not tunables:
        return resimulated(dataloader)
    if cache is None and not isinstance(dataloader, (list, tuple)):
        why = f"the data loader ({type(dataloader).__name__}) is not a list, and a new pass may bring other batches"
        why += "; pass a list of batches, or cache=True to hold one pass"
    else:
        why = _why_not_carry(snn, tunables)
        if why is None:
            why, batches = _fit(snn, ann_gm, tunables, dataloader, input_fn, device, cache_budget)
    if why is not None:
        logger.warning(
            "layer-wise fine-tuning simulates the SNN from the input for every layer (quadratic cost): %s", why
        )
        return resimulated(dataloader)
    inputs = [input_fn(batch).to(device) for batch in batches]
    return _Frontier(snn, ann_gm, tunables, inputs, measure_batches, progress)
