"""Graph slicing for layer-wise fine-tuning: one layer's synaptic part and the runs around it.

A spiking layer's synaptic part is every op between the previous neurons and its own neuron
(conv, folded batch norm, residual add, ...). It is evaluated on rates (with gradients, for
the surrogate) or on spike trains (the SNN's own values). :func:`run_until` runs a whole graph
up to one node; :class:`_Cursor` is a run of a graph that pauses at the nodes asked for.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn import functional as F

from ..convert import GraphNeuron, SpikingLayer, SpikingModel, StaticExpand, TimeCollapse


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


def _eval_network(net: fx.GraphModule, x: torch.Tensor, rates: dict[str, torch.Tensor]) -> object:
    """The whole graph on rates, every neuron a straight-through estimate of its spike count.

    ``rates`` holds each neuron layer's SNN rate (by node target). A neuron fed by spikes takes
    the value ``y + (r - y).detach()`` with ``y = clamp(u, 0, theta)`` of its synaptic input
    ``u``: the SNN's value, the quantized ANN's gradient (docs/method.md §4 step 4, at every
    layer at once). The first layers (analog input, exact) take their rate. The time adapters
    pass values through: on rates, the spiking and output regions are linear (§3), so the
    output's value is the SNN's own output.
    """
    env: dict[fx.Node, object] = {}
    for n in net.graph.nodes:
        module = net.get_submodule(n.target) if n.op == "call_module" else None
        if n.op == "placeholder":
            env[n] = x
        elif n.op == "output":
            return fx.node.map_arg(n.args[0], env.__getitem__)
        elif isinstance(module, GraphNeuron):
            rate = rates[n.target]
            if module.constant_input:
                env[n] = rate
            else:
                y = torch.minimum(F.relu(env[n.args[0]]), module.neuron.threshold)
                env[n] = y + (rate - y).detach()
        elif isinstance(module, (StaticExpand, TimeCollapse)):
            env[n] = env[n.args[0]]
        else:
            _eval_nodes(net, [n], env)
    raise RuntimeError("the graph has no output node")


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


class _Cursor(fx.Interpreter):
    """One run of a graph in graph order that pauses at requested nodes (optionally a subset of
    the nodes only). Each value is freed after its last use, as in ``fx.Interpreter.run``.

    The input is read at once, so a paused run is its live values and its position: what
    :meth:`state` gives and :meth:`restore` takes back (plain data, for a file).
    """

    def __init__(self, gm: fx.GraphModule, x: torch.Tensor | None, only: set[fx.Node] | None = None):
        super().__init__(gm)
        self.env = {}
        self.args_iter = iter((x,))
        self.nodes = [n for n in gm.graph.nodes if n.op != "output" and (only is None or n in only)]
        last_user: dict[fx.Node, fx.Node] = {}
        for n in self.nodes:
            for a in n.all_input_nodes:
                last_user[a] = n
        self.frees: dict[fx.Node, list[fx.Node]] = {}
        for value, user in last_user.items():
            self.frees.setdefault(user, []).append(value)
        self.done = 0  # nodes run so far
        while x is not None and self.done < len(self.nodes) and self.nodes[self.done].op == "placeholder":
            self._step()

    def _step(self) -> None:
        n = self.nodes[self.done]
        self.env[n] = self.run_node(n)
        self.done += 1
        for done in self.frees.get(n, ()):
            del self.env[done]

    def value(self, node: fx.Node):
        while node not in self.env:
            self._step()
        return self.env[node]

    def state(self) -> dict:
        return {"done": self.done, "env": {n.name: v for n, v in self.env.items()}}

    @classmethod
    def restore(cls, gm: fx.GraphModule, state: dict, only: set[fx.Node] | None = None) -> _Cursor:
        cursor = cls(gm, None, only)
        by_name = {n.name: n for n in cursor.nodes}
        cursor.done, cursor.env = state["done"], {by_name[k]: v for k, v in state["env"].items()}
        return cursor


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
