"""The spiking graph, rebuilt node by node from the classified ANN trace.

``QuantReLU`` calls become :class:`GraphNeuron` s; every other node is copied, its inputs
adapted to its region: static values repeated over T where they meet spike trains
(:class:`StaticExpand`), spike trains averaged over T on their way into the output region
(:class:`TimeCollapse`). Eval-mode identities (``nn.Identity``, dropout) are dropped.
"""

from __future__ import annotations

from torch import fx, nn

from ..neuron import IFNeuron
from .modules import GraphNeuron, SpikingLayer, StaticExpand, TimeCollapse, TimeContext
from .regions import Regions


class SpikingGraphBuilder:
    """Builds the spiking graph of one ANN trace ``src`` (whose module tree it extends)."""

    def __init__(self, src: fx.GraphModule, regions: Regions, ctx: TimeContext, signed: bool, compiled: bool):
        self.src, self.regions, self.ctx = src, regions, ctx
        self.signed, self.compiled = signed, compiled
        self.graph = fx.Graph()
        self.env: dict[fx.Node, fx.Node] = {}  # ANN node -> its value in the new graph
        self.adapters: dict[tuple[str, fx.Node], fx.Node] = {}
        self.layers: list[SpikingLayer] = []
        self.neuron_calls: dict[str, int] = {}  # QuantReLU path -> calls converted so far

    def build(self, class_name: str) -> tuple[fx.GraphModule, list[SpikingLayer]]:
        """The new graph module (not yet recompiled) and its neuron layers, in graph order."""
        for node in self.src.graph.nodes:
            if node.op == "output":
                self.graph.output(fx.node.map_arg(node.args[0], lambda a: self._value_for("output", a)))
            elif self.regions.of(node) == "neuron":
                self.env[node] = self._neuron(node)
            elif self._is_identity(node):
                self.env[node] = self._value_for(self.regions.of(node), node.args[0])
            else:
                region = self.regions.of(node)
                self.env[node] = self.graph.node_copy(node, lambda a, region=region: self._value_for(region, a))
        self.graph.lint()
        return fx.GraphModule(self.src, self.graph, class_name=class_name), self.layers

    def _is_identity(self, node: fx.Node) -> bool:
        """An identity in eval mode: its input is used in its place."""
        if node.op != "call_module":
            return False
        return isinstance(self.src.get_submodule(node.target), (nn.Identity, nn.modules.dropout._DropoutNd))

    def _neuron(self, node: fx.Node) -> fx.Node:
        """A QuantReLU call -> an IF neuron with threshold alpha; each call gets its own."""
        (inp,) = node.all_input_nodes
        constant = self.regions.kind[inp] == "static"
        qrelu = self.src.get_submodule(node.target)
        calls = self.neuron_calls.get(node.target, 0)
        self.neuron_calls[node.target] = calls + 1
        name = f"{node.target.replace('.', '_')}_neuron" + (f"{calls}" if calls else "")
        neuron = IFNeuron(qrelu.alpha.detach(), self.signed, self.compiled)
        module = GraphNeuron(neuron, self.ctx, constant, node.name, node.target)
        self.src.add_submodule(name, module.to(qrelu.alpha.device))
        self.layers.append(SpikingLayer(name=name, path=node.target, constant_input=constant))
        return self.graph.call_module(name, (self.env[inp] if constant else self._value_for("spiking", inp),))

    def _value_for(self, user_region: str, a: fx.Node) -> fx.Node:
        """The new-graph value of input ``a`` as seen from a node of ``user_region``."""
        if user_region == "spiking" and self.regions.kind[a] == "static":
            return self._adapter("expand", a)
        if user_region == "output":
            if self.regions.kind[a] == "static":
                return self._adapter("expand_unrolled", a)
            if self.regions.carries_spikes(a):
                return self._adapter("collapse", a)
        return self.env[a]

    def _adapter(self, what: str, node: fx.Node) -> fx.Node:
        """One adapter module per (kind, value), shared by all its users."""
        key = (what, node)
        if key not in self.adapters:
            name = f"{what}_{node.name}"
            module = TimeCollapse(self.ctx) if what == "collapse" else StaticExpand(self.ctx, always=what == "expand")
            self.src.add_submodule(name, module)
            self.adapters[key] = self.graph.call_module(name, (self.env[node],))
        return self.adapters[key]
