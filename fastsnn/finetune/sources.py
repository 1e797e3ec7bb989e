"""Where the fine-tuning batches come from: simulated again for every layer, or carried.

Cost. Tuning layer ``l`` needs the SNN tuned up to ``l-1`` on every fine-tuning batch.
Simulated from the input for every layer (:class:`_Resimulated`), that makes the stage
quadratic in depth. A :class:`_Frontier` carries them instead, from one pass of the loader:
per batch, the spike trains (and analog-side values) that the untuned layers still read, and a
paused run of the ANN; after layer ``l`` is tuned, only layer ``l``'s own synaptic part and
neuron run again, on its cached inputs, to move the cut past it. The values are the same as
when simulated from the input: the same operations on the same tensors. They live in memory or
on disk (:mod:`.store`); :func:`_data_source` builds what :mod:`.plan` chose.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator

import torch
from torch import fx

from ..convert import GraphNeuron, SpikingModel
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
from .plan import CachePlan, choose
from .ranks import Ranks
from .store import _Batch, _InMemory, _OnDisk, _Stored

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

    def close(self) -> None:
        """Nothing held."""


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


class _Frontier:
    """The fine-tuning batches, each with the values that the layers not tuned yet still read.

    Per batch: the SNN values at the cut between the tuned and the untuned layers (spike trains
    of tuned layers and of the first layers, residual skips included, as int8; analog-side
    values into spiking layers as they are), and a paused run of the ANN (its live values at
    the current layer's target). ``advance(t)`` runs layer ``t``'s synaptic part and neuron
    once more on its cached inputs, with its final weights, and drops what no later layer
    reads. A layer then costs its own synaptic part per batch, however deep it lies. The
    batches live in ``store`` (:mod:`.store`: in memory unless given), filled from ``inputs``
    one batch at a time.
    """

    def __init__(self, snn: SpikingModel, ann_gm: fx.GraphModule, tunables: list[_Tunable], inputs: Iterable,
                 measure_batches: int, progress, store=None):  # fmt: skip
        self.net, self.ann_gm, self.T, self.progress = snn.net, ann_gm, snn.timesteps, progress
        self.ann_nodes = {n.name: n for n in ann_gm.graph.nodes}
        self.last_read = {name: t.step for t in tunables for name in t.graph.sources}  # last layer reading it
        tuned = {t.graph.neuron.name for t in tunables}
        self.static = [n for n in self.net.graph.nodes if n.name in self.last_read and n.name not in tuned]
        self.static_nodes = _ancestors(self.static)  # the analog side and the first layers: never tuned
        self.written = {t.step: _written_sources(self.net, t.graph) for t in tunables}
        self.batches = _InMemory() if store is None else store
        for x in inputs:
            self.batches.append(self._start(x))
        self.n_measure = min(measure_batches, len(self.batches))

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
        for batch in itertools.islice(self.batches, self.n_measure):
            yield self._observe(t, batch)

    def training(self, t: _Tunable, description: str) -> Iterator[Observation]:
        batches = self.batches if self.progress is None else self.progress(self.batches, description)
        for batch in batches:
            yield self._observe(t, batch)

    @torch.no_grad()
    def advance(self, t: _Tunable) -> None:
        """Move the cut past layer ``t``: its spikes with its weights as they are now, and the ANN's
        run past its target (what a disk store writes back is the state a later layer starts from)."""
        name = t.graph.neuron.name
        for i, batch in enumerate(self.batches):
            batch.ann.value(self.ann_nodes[t.source])
            if self.last_read.get(name, -1) > t.step:
                batch.values[name] = _Stored(_eval_spikes(self.net, t.graph, self._inputs(t, batch)), t.theta)
            for done in [n for n in batch.values if self.last_read[n] <= t.step]:
                del batch.values[done]
            self.batches.put(i, batch)

    def close(self) -> None:
        self.batches.close()

    def nbytes(self) -> int:
        seen: set[int] = set()
        total = 0
        for batch in self.batches:
            total += _storage_bytes(batch.ann.env.values(), seen)
            total += _storage_bytes((v for s in batch.values.values() for v in s.tensors()), seen)
        return total


def frontier_profile(snn, ann_gm, tunables: list[_Tunable], x: torch.Tensor) -> list[int]:
    """Bytes the carried values of the one batch ``x`` take while each layer is tuned (at the
    larger of its observation and its advance; the input not included): a dry run through all
    layers with the weights as they are."""
    probe = _Frontier(snn, ann_gm, tunables, [x], 0, None)
    sizes = []
    for t in tunables:
        with torch.no_grad():
            probe.batches[0].ann.value(probe.ann_nodes[t.source])
        peak = probe.nbytes()
        probe.advance(t)
        sizes.append(max(peak, probe.nbytes()))
    return sizes


def _frontier_bytes(snn, ann_gm, tunables: list[_Tunable], x: torch.Tensor) -> int:
    """The most memory the frontier of the one batch ``x`` holds at any layer (its input included)."""
    return max(frontier_profile(snn, ann_gm, tunables, x), default=0) + x.nbytes


def _estimate(snn, ann_gm, tunables, dataloader, input_fn, device) -> CachePlan:
    """The batches, samples and bytes of one pass's carried values (from a dry run on the first batch)."""
    plan = CachePlan("off", "")
    try:
        plan.batches = len(dataloader)
    except TypeError:
        return plan  # no length: the size of one pass is unknown
    first = next(iter(dataloader), None)
    if first is None:
        plan.samples, plan.need = 0, 0.0
        return plan
    x = input_fn(first).to(device)
    plan.per_sample = _frontier_bytes(snn, ann_gm, tunables, x) / max(x.shape[0], 1)
    if isinstance(dataloader, (list, tuple)):
        plan.samples = sum(input_fn(b).shape[0] for b in dataloader)
    else:
        plan.samples = plan.batches * x.shape[0]
    plan.need = plan.per_sample * plan.samples
    return plan


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


def _data_source(snn, ann_gm, tunables, dataloader, input_fn, device, measure_batches, progress, cache: str,
                 cache_budget, cache_dir, ranks: Ranks):  # fmt: skip
    """The batches, carried (a :class:`_Frontier`, in memory or on disk) or recomputed for every
    layer (:class:`_Resimulated`), as :func:`.plan.choose` decides; and the plan."""
    if not tunables:
        return _Resimulated(snn, ann_gm, dataloader, input_fn, device, measure_batches, progress), None
    why_not = _why_not_carry(snn, tunables)
    plan = _estimate(snn, ann_gm, tunables, dataloader, input_fn, device) if why_not is None else CachePlan("off", "")
    plan = choose(cache, why_not, plan, device, cache_budget, cache_dir, ranks)
    if plan.batches is not None:
        ranks.same_count(plan.batches, "fine-tuning batches")
    if plan.mode == "off":
        return _Resimulated(snn, ann_gm, dataloader, input_fn, device, measure_batches, progress), plan
    store = _OnDisk(cache_dir, ann_gm, device, plan.need or 0.0) if plan.mode == "disk" else None
    inputs = (input_fn(batch).to(device) for batch in dataloader)
    return _Frontier(snn, ann_gm, tunables, inputs, measure_batches, progress, store), plan
