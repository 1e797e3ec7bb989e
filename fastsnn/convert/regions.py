"""Which region of the SNN every node of the ANN trace belongs to, and the check of what runs on spikes.

* ``static``: depends on the analog input only (before the first neurons), computed once;
* ``neuron``: a ``QuantReLU`` call, which becomes an IF neuron;
* ``spiking``: after some neuron and leading to another one: sees spike trains;
* ``output``: after the last neurons (the analog output layer and its decoding tail).

Nodes that depend on neither the input nor a neuron (constants) run with the static ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn
from torch.nn import functional as F

from ..quantizers import QuantReLU
from .rules import ConversionError, _check_spiking_op


@dataclass
class Regions:
    """The regions of one ANN trace (see the module docstring)."""

    kind: dict[fx.Node, str]  # "static" (input only), "const" (neither), "neuron", "temporal" (after a neuron)
    spiking: set[fx.Node]  # the temporal nodes that lead to a neuron: between neuron layers

    def of(self, node: fx.Node) -> str:
        """``"neuron"``, ``"spiking"``, ``"output"`` or ``"static"`` (constants included)."""
        kind = self.kind[node]
        if kind == "neuron":
            return "neuron"
        if kind == "temporal":
            return "spiking" if node in self.spiking else "output"
        return "static"

    def carries_spikes(self, node: fx.Node) -> bool:
        return self.kind[node] == "neuron" or node in self.spiking


def classify(src: fx.GraphModule) -> Regions:
    """Put every node of ``src`` (a trace of a quantized ANN) in its region."""
    kind: dict[fx.Node, str] = {}
    for node in src.graph.nodes:
        if node.op == "placeholder":
            kind[node] = "static"
        elif node.op == "get_attr":
            kind[node] = "const"
        elif node.op == "call_module" and isinstance(src.get_submodule(node.target), QuantReLU):
            kind[node] = "neuron"
        else:
            inputs = {kind[a] for a in node.all_input_nodes}
            kind[node] = "temporal" if inputs & {"temporal", "neuron"} else "static" if "static" in inputs else "const"
    if "neuron" not in kind.values():
        raise ConversionError("the traced model has no QuantReLU call: quantize it first.")
    reaches_neuron = _reaches(src, lambda u: kind[u] == "neuron")
    spiking = {n for n in src.graph.nodes if kind[n] == "temporal" and reaches_neuron[n]}
    return Regions(kind, spiking)


def check(src: fx.GraphModule, regions: Regions) -> None:
    """Raise :class:`ConversionError` where a node that sees spikes is not linear per time step.

    That is every node between neuron layers, and after the last neurons every node that
    still feeds a layer with weights: only the decoding tail (no weights after it) may be
    nonlinear there; a nonlinearity feeding another layer would be an analog layer hiding in
    the SNN.
    """
    reaches_weights = _reaches(src, lambda u: _has_weights(u, src))
    after_neurons = regions.spiking | {n for n, k in regions.kind.items() if k in ("neuron", "temporal")}
    for node in src.graph.nodes:
        if node.op == "call_module" and type(src.get_submodule(node.target)) is nn.ReLU:
            _check_spiking_op(node, src, set())  # a plain ReLU anywhere: not quantized
        if node in regions.spiking or (regions.kind[node] == "temporal" and reaches_weights[node]):
            _check_spiking_op(node, src, after_neurons)


def _reaches(gm: fx.GraphModule, hit) -> dict[fx.Node, bool]:
    """For every node: does some path from it lead to a node for which ``hit(node)``?"""
    reaches: dict[fx.Node, bool] = {}
    for node in reversed(gm.graph.nodes):
        reaches[node] = any(hit(u) or reaches[u] for u in node.users)
    return reaches


def _has_weights(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), (nn.modules.conv._ConvNd, nn.Linear))
    return node.target in (F.conv1d, F.conv2d, F.conv3d, F.linear)
