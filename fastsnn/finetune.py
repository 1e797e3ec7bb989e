"""Layer-wise fine-tuning of a converted SNN (docs/method.md §4), for any converted model.

For each spiking layer ``l`` after the first (whose input is the analog image and which
is exact already), in order:

1. the quantized ANN (fixed, eval mode) gives the target: its activation at layer ``l``;
2. the SNN, tuned up to ``l-1``, runs up to layer ``l``: the spike trains into ``l`` give
   the input rates ``r_in`` and layer ``l``'s own spikes the output rate ``r_out``;
3. layer ``l``'s synaptic part (every op between the previous neurons and neuron ``l``:
   conv, folded batch norm, residual add, ...) computes ``y = clamp(f_l(r_in), 0, theta)``
   with gradients; the prediction ``y + (r_out - y).detach()`` has the SNN's value and the
   ANN's gradient;
4. SGD on MSE(prediction, target) updates the SNN's own weights of that layer
   (thresholds frozen), so the SNN is tuned in place.

Cost. Step 2 needs the SNN tuned up to ``l-1`` on every fine-tuning batch. Simulated from
the input for every layer, that makes the stage quadratic in depth. When the batches are a
fixed list and their values fit in memory, a :class:`_Frontier` carries them instead: per
batch, the spike trains (and analog-side values) that the untuned layers still read, and a
paused run of the ANN; after layer ``l`` is tuned, only layer ``l``'s own synaptic part and
neuron run again, on its cached inputs, to move the cut past it. The values are the same as
when simulated from the input: the same operations on the same tensors.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn import functional as F

from .convert import GraphNeuron, SpikingLayer, SpikingModel, StaticExpand, trace

logger = logging.getLogger(__name__)

# the part of the device's free memory the cached batches may take when no budget is given
DEFAULT_CACHE_FRACTION = 0.5


class _Stop(Exception):
    pass


def run_until(gm: fx.GraphModule, x: torch.Tensor, stop: str, capture: Iterable[str]) -> dict[str, torch.Tensor]:
    """Run ``gm`` on ``x`` node by node up to node ``stop``; return the values of ``capture``."""
    wanted = set(capture) | {stop}
    values: dict[str, torch.Tensor] = {}

    class Runner(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in wanted:
                values[n.name] = out
            if n.name == stop:
                raise _Stop
            return out

    try:
        Runner(gm).run(x)
    except _Stop:
        pass
    missing = wanted - values.keys()
    if missing:
        raise RuntimeError(f"nodes {sorted(missing)} were not reached while running the graph")
    return values


@dataclass
class _LayerGraph:
    """The synaptic part of one neuron layer: the nodes from its sources to the neuron."""

    neuron: fx.Node
    nodes: list[fx.Node]  # to evaluate, in graph order (excluding sources and the neuron)
    sources: dict[str, fx.Node] = field(default_factory=dict)  # value name -> node whose value to feed
    modules: list[nn.Module] = field(default_factory=list)


def _layer_graph(net: fx.GraphModule, neuron: fx.Node) -> _LayerGraph:
    order = {n: i for i, n in enumerate(net.graph.nodes)}
    inside: set[fx.Node] = set()
    sources: dict[str, fx.Node] = {}
    stack = list(neuron.all_input_nodes)
    while stack:
        node = stack.pop()
        if node in inside or node.name in sources:
            continue
        module = net.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, GraphNeuron):
            sources[node.name] = node  # spikes of an earlier layer: fed as their rate
        elif isinstance(module, StaticExpand) or node.op == "placeholder":
            sources[node.name] = node  # analog-input side: fed as is (its value before the expand)
        else:
            inside.add(node)
            stack.extend(node.all_input_nodes)
    nodes = sorted(inside, key=order.get)
    modules = [net.get_submodule(n.target) for n in nodes if n.op == "call_module"]
    return _LayerGraph(neuron, nodes, sources, modules)


def _node_params(net: fx.GraphModule, nodes: Iterable[fx.Node]) -> list[nn.Parameter]:
    """The parameters the given nodes use (modules called, parameters read), each once."""
    params: dict[int, nn.Parameter] = {}
    for n in nodes:
        if n.op == "call_module":
            params.update((id(p), p) for p in net.get_submodule(n.target).parameters())
        elif n.op == "get_attr" and isinstance(attr := getattr_path(net, n.target), nn.Parameter):
            params[id(attr)] = attr
    return list(params.values())


def _layer_params(net: fx.GraphModule, lg: _LayerGraph) -> list[nn.Parameter]:
    params = {id(p): p for m in lg.modules for p in m.parameters()}
    for n in lg.nodes:
        attr = getattr_path(net, n.target) if n.op == "get_attr" else None
        if isinstance(attr, nn.Parameter):
            params[id(attr)] = attr
    return list(params.values())


def getattr_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _eval_nodes(net: fx.GraphModule, nodes: Iterable[fx.Node], env: dict[fx.Node, object]) -> None:
    """Evaluate ``nodes`` (in graph order) into ``env``, as ``fx.Interpreter`` does."""
    for n in nodes:
        args = fx.node.map_arg(n.args, env.__getitem__)
        kwargs = fx.node.map_arg(n.kwargs, env.__getitem__)
        if n.op == "call_module":
            env[n] = net.get_submodule(n.target)(*args, **kwargs)
        elif n.op == "call_function":
            env[n] = n.target(*args, **kwargs)
        elif n.op == "call_method":
            env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
        elif n.op == "get_attr":
            env[n] = getattr_path(net, n.target)


def _eval_rates(net: fx.GraphModule, lg: _LayerGraph, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    """Evaluate the layer's synaptic part on rates (``[N, ...]``, no time dimension)."""
    env: dict[fx.Node, object] = {lg.sources[k]: v for k, v in feeds.items()}
    _eval_nodes(net, lg.nodes, env)
    return env[lg.neuron.args[0]]


def _eval_spikes(net: fx.GraphModule, lg: _LayerGraph, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """The layer's output spike train, from the folded ``[T*N, ...]`` values of its sources."""
    env: dict[fx.Node, object] = {lg.sources[k]: v for k, v in values.items()}
    _eval_nodes(net, [*lg.nodes, lg.neuron], env)
    return env[lg.neuron]


def _input_of(batch):
    return batch[0] if isinstance(batch, (list, tuple)) else batch


@dataclass
class LayerReport:
    """What happened to one layer: its MSE to the ANN before / after, and whether it was kept."""

    index: int  # position in SpikingModel.layers
    name: str
    path: str  # the ANN module path of its activation
    mse_before: float
    mse_after: float  # after the tuning attempt; when not kept the layer is back at mse_before
    train_loss: float
    kept: bool = True
    score: float | None = None  # validate(snn) after this layer, when a validate callable is given


def _rate(spikes: torch.Tensor, T: int) -> torch.Tensor:
    """Mean over time of a folded ``[T*N, ...]`` train, in activation units."""
    return spikes.reshape(T, spikes.shape[0] // T, *spikes.shape[1:]).mean(0)


def _feeds(net: fx.GraphModule, lg: _LayerGraph, values: dict[str, torch.Tensor], T: int) -> dict[str, torch.Tensor]:
    """The SNN inputs of a layer as the rates its synaptic part is evaluated on."""
    feeds = {}
    for name, node in lg.sources.items():
        module = net.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, (GraphNeuron, StaticExpand)):
            feeds[name] = _rate(values[name], T)  # spike train -> rate; repeated static value -> itself
        else:
            feeds[name] = values[name]
    return feeds


@torch.no_grad()
def _observe(snn: SpikingModel, ann_gm: fx.GraphModule, lg: _LayerGraph, source: str, x: torch.Tensor):
    """ANN target, SNN input rates (feeds) and SNN output rate of one layer for a batch."""
    T = snn.timesteps
    target = run_until(ann_gm, x, source, ())[source]
    vals = run_until(snn.net, x, lg.neuron.name, lg.sources)
    return target, _feeds(snn.net, lg, vals, T), _rate(vals[lg.neuron.name], T)


@dataclass
class _Tunable:
    """One layer to tune: its place, its synaptic part and the SNN weights it owns."""

    step: int  # position among the tunable layers
    index: int  # position in SpikingModel.layers
    layer: SpikingLayer
    graph: _LayerGraph
    params: list[nn.Parameter]
    theta: torch.Tensor
    source: str  # the ANN node it mimics


def _tunable_layers(snn: SpikingModel) -> list[_Tunable]:
    nodes = {n.target: n for n in snn.net.graph.nodes if n.op == "call_module"}
    out = []
    for index, layer in enumerate(snn.layers):
        if layer.constant_input:
            continue
        lg = _layer_graph(snn.net, nodes[layer.name])
        module = snn.net.get_submodule(layer.name)
        out.append(
            _Tunable(len(out), index, layer, lg, _layer_params(snn.net, lg), module.neuron.threshold, module.source)
        )
    return out


Observation = tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]  # target, feeds, r_out


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


class _Cursor(fx.Interpreter):
    """One run of a graph in graph order that pauses at requested nodes (optionally a subset of
    the nodes only). Each value is freed after its last use, as in ``fx.Interpreter.run``."""

    def __init__(self, gm: fx.GraphModule, x: torch.Tensor, only: set[fx.Node] | None = None):
        super().__init__(gm)
        self.env = {}
        self.args_iter = iter((x,))
        nodes = [n for n in gm.graph.nodes if n.op != "output" and (only is None or n in only)]
        last_user: dict[fx.Node, fx.Node] = {}
        for n in nodes:
            for a in n.all_input_nodes:
                last_user[a] = n
        self.frees: dict[fx.Node, list[fx.Node]] = {}
        for value, user in last_user.items():
            self.frees.setdefault(user, []).append(value)
        self.todo = iter(nodes)

    def value(self, node: fx.Node):
        while node not in self.env:
            n = next(self.todo)
            self.env[n] = self.run_node(n)
            for done in self.frees.get(n, ()):
                del self.env[done]
        return self.env[node]


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


_INPLACE_FUNCTIONS = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor,
    operator.ilshift, operator.irshift, operator.imatmul,
}  # fmt: skip


def _written_sources(net: fx.GraphModule, lg: _LayerGraph) -> set[str]:
    """Sources of a layer that one of its ops may write into (in-place ops on their first argument)."""
    written = set()
    for n in lg.nodes + [lg.neuron]:
        name = getattr(n.target, "__name__", n.target) if n.op != "call_module" else ""
        inplace = n.op in ("call_function", "call_method") and (
            n.target in _INPLACE_FUNCTIONS or (isinstance(name, str) and name.endswith("_") and not name.endswith("__"))
        )
        if n.op == "call_module":
            inplace = bool(getattr(net.get_submodule(n.target), "inplace", False))
        first = n.args[0] if n.args else None
        if inplace and isinstance(first, fx.Node) and first.name in lg.sources:
            written.add(first.name)
    return written


def _ancestors(nodes: Iterable[fx.Node]) -> set[fx.Node]:
    """The nodes and everything they are computed from."""
    out: set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node not in out:
            out.add(node)
            stack.extend(node.all_input_nodes)
    return out


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


def _free_memory(device: torch.device) -> int | None:
    """Free memory of the device in bytes (for the CPU: MemAvailable), or None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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
        free = _free_memory(device)
        if free is None:
            logger.warning(
                "fine-tuning: the free memory of %s is unknown; the batches are cached without a limit", device
            )
            free = float("inf")
        budget, what = DEFAULT_CACHE_FRACTION * free, f"{DEFAULT_CACHE_FRACTION:g} of the free memory of {device}"
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


class _Judge:
    """Whether a layer's update stays: its measured MSE did not rise (``keep_if_better``) and
    the ``validate`` score did not drop below the best so far."""

    def __init__(self, snn: SpikingModel, validate, keep_if_better: bool):
        self.snn, self.validate, self.keep_if_better = snn, validate, keep_if_better
        self.best = validate(snn) if validate is not None else None

    def __call__(self, report: LayerReport) -> None:
        report.kept = not (self.keep_if_better and report.mse_after > report.mse_before)
        if report.kept and self.validate is not None:
            report.score = self.validate(self.snn)
            report.kept = report.score >= self.best
            self.best = max(self.best, report.score)


def _mse(observations: Iterable[Observation]) -> float:
    total, count = 0.0, 0
    for target, _, r_out in observations:
        total += F.mse_loss(r_out, target, reduction="sum").item()
        count += target.numel()
    return total / max(count, 1)


def _train(net: fx.GraphModule, t: _Tunable, data, epochs: int, sgd: dict) -> float:
    """SGD on the layer's weights; returns the mean training loss."""
    for p in t.params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(t.params, **sgd)
    loss_sum, steps = 0.0, 0
    for epoch in range(epochs):
        for target, feeds, r_out in data.training(t, f"layer {t.index} {t.layer.path} ({epoch + 1}/{epochs})"):
            y = torch.minimum(F.relu(_eval_rates(net, t.graph, feeds)), t.theta)
            loss = F.mse_loss(y + (r_out - y).detach(), target)  # SNN value, ANN gradient
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            steps += 1
    return loss_sum / max(steps, 1)


def _tune_layer(net: fx.GraphModule, t: _Tunable, data, epochs: int, sgd: dict, judge: _Judge) -> LayerReport:
    """Measure, train, measure again; undo the update when the judge says so."""
    saved = [p.detach().clone() for p in t.params]
    mse_before = _mse(data.measured(t))
    loss = _train(net, t, data, epochs, sgd)
    report = LayerReport(t.index, t.layer.name, t.layer.path, mse_before, _mse(data.measured(t)), loss)
    judge(report)
    if not report.kept:
        with torch.no_grad():
            for p, old in zip(t.params, saved):
                p.copy_(old)
    for p in t.params:
        p.requires_grad_(False)
        p.grad = None
    return report


def layerwise_finetune(
    qmodel: nn.Module,
    snn: SpikingModel,
    dataloader: Iterable,
    epochs_per_layer: int = 1,
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    validate: Callable[[SpikingModel], float] | None = None,
    on_layer_end: Callable[[LayerReport], None] | None = None,
    start_layer: int = 0,
    input_fn: Callable = _input_of,
    measure_batches: int = 4,
    keep_if_better: bool = True,
    progress: Callable[[Iterable, str], Iterable] | None = None,
    cache: bool | None = None,
    cache_budget: float | None = None,
) -> list[LayerReport]:
    """Fine-tune ``snn`` (converted from ``qmodel``) layer by layer, in place (docs/method.md §4).

    Args:
        qmodel: the quantized ANN the SNN was converted from; the fixed teacher (not changed).
        snn: the converted model; its weights are updated in place. Fine-tuning runs its
            multistep graph whatever ``snn.mode`` and ``snn.chunk_size`` say.
        dataloader: yields batches; ``input_fn(batch)`` gives the input images (default: the
            first element of a tuple/list batch, or the batch itself).
        epochs_per_layer, lr, momentum, weight_decay: SGD settings (the paper's defaults).
        validate: optional ``validate(snn) -> score`` (higher is better). When given, a
            layer's update is kept only if the score does not drop; otherwise it is undone.
        on_layer_end: called with a :class:`LayerReport` after each layer (logging, progress,
            checkpoints).
        start_layer: index into the tunable layers to start from (resume after a checkpoint).
        measure_batches: the layer's MSE to the ANN is measured before and after tuning on
            the first this-many batches of ``dataloader``.
        keep_if_better: undo a layer's update when its measured MSE went up. The surrogate
            gradient cannot see spike-timing errors, so in a layer whose error is mostly
            timing (the second layer: its input is exact) an update can make things worse.
        progress: optional wrapper ``progress(iterable, description)`` (e.g. a tqdm factory)
            around each layer's pass over the data.
        cache: carry each batch's values from layer to layer (cost linear in depth) instead of
            simulating the SNN from the input for every layer (quadratic). ``None``: when
            ``dataloader`` is a list or tuple of batches; ``True``: also for another loader,
            whose one pass is then held and used for every layer; ``False``: never. Without
            caching, or when it would not fit ``cache_budget``, the reason is logged once.
        cache_budget: bytes the carried values may take on the SNN's device (estimated by a dry
            run on the first batch); default: half of the device's free memory.

    Returns one :class:`LayerReport` per tuned layer (the first layers, fed by the analog
    input, are exact and are skipped, as is the analog output layer, which has no neuron).
    """
    device = next(snn.parameters()).device
    ann_gm = trace(qmodel)
    was_training = qmodel.training
    qmodel.eval()
    snn.eval()
    tunables = _tunable_layers(snn)
    args = (dataloader, input_fn, device, measure_batches, progress, cache, cache_budget)
    data = _data_source(snn, ann_gm, tunables, *args)
    sgd = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
    judge = _Judge(snn, validate, keep_if_better)
    reports: list[LayerReport] = []
    try:
        for t in tunables[:start_layer]:
            data.advance(t)  # resume: carry the batches through the layers tuned before
        for t in tunables[start_layer:]:
            report = _tune_layer(snn.net, t, data, epochs_per_layer, sgd, judge)
            data.advance(t)
            reports.append(report)
            if on_layer_end is not None:
                on_layer_end(report)
    finally:
        qmodel.train(was_training)
        snn.net.requires_grad_(False)
    return reports
