"""Quantized ANN -> spiking network (METHOD.md §3), for any model built from supported layers.

The quantized model is traced with ``torch.fx`` and every node is put in one of four
regions:

* **static** -- depends on the analog input only (before the first neurons). Computed
  once per image, exactly as the ANN does: the input is the same at every step.
* **neuron** -- a ``QuantReLU`` call, which becomes an :class:`~fastsnn.neuron.IFNeuron`
  with ``threshold = alpha``. Every call gets its own neuron (a module used twice in a
  ``forward`` becomes two neuron layers with separate state).
* **spiking** -- between neurons. Only operations that are linear per time step are
  allowed here (conv, linear, eval batch norm, average pooling, add, cat, reshape,
  upsampling...). They see all ``T`` steps at once, with time folded into the batch
  (``[T*N, ...]``). Anything else (max pooling, a functional relu, sigmoid...) is refused
  with a :class:`ConversionError` naming the module.
* **output** -- after the last neurons (the analog output layer). Since it is linear in
  the spikes, it runs once on their mean over T (exact by linearity): the network output
  is the mean over T of the output layer's per-step outputs, at 1/T of the cost.

The result, :class:`SpikingModel`, is a plain ``nn.Module``; the ANN is left untouched.
"""

from __future__ import annotations

import copy

from torch import fx, nn

from ..neuron import IFNeuron
from ..quant import QuantReLU, activation_bits
from .integer import MIN_INTEGER_CHANNELS, SpikeConv2d, _use_integer_kernels, integer_grid
from .passes import _fold_batch_norms, _freeze_quantized_weights, _has_weights, _reaches, trace
from .rules import ConversionError, _check_spiking_op, register_linear_function, register_linear_module
from .runtime import (
    GraphNeuron,
    SpikingLayer,
    SpikingModel,
    StaticExpand,
    TimeCollapse,
    TimeContext,
    _static_linear_modules,
)

__all__ = [
    "MIN_INTEGER_CHANNELS",
    "ConversionError",
    "GraphNeuron",
    "SpikeConv2d",
    "SpikingLayer",
    "SpikingModel",
    "StaticExpand",
    "TimeCollapse",
    "TimeContext",
    "convert_to_snn",
    "integer_grid",
    "register_linear_function",
    "register_linear_module",
    "trace",
]


def _default_timesteps(qmodel: nn.Module) -> int:
    bits = activation_bits(qmodel)
    if not bits:
        raise ConversionError("the model has no QuantReLU: quantize it first with fastsnn.quantize_model(model, bits).")
    if None in bits:
        raise ConversionError(
            "some QuantReLU modules are not quantized (bits=None); give them a bit width with "
            "quantize_model(model, bits) or pass timesteps explicitly."
        )
    if len(bits) > 1:
        raise ConversionError(
            f"the QuantReLU modules have different bit widths {sorted(bits)}; pass timesteps explicitly."
        )
    return 2 ** bits.pop() - 1


def convert_to_snn(
    qmodel: nn.Module,
    timesteps: int | None = None,
    signed: bool = True,
    mode: str = "multistep",
    compiled: bool = False,
    integer_kernels: bool = False,
    chunk_size: int | None = None,
) -> SpikingModel:
    """Convert a quantized ANN (see :func:`fastsnn.quantize_model`) into a :class:`SpikingModel`.

    Every ``QuantReLU`` call becomes an IF neuron with ``threshold = alpha`` (membrane starts
    at threshold/2, reset by subtraction); ``signed=False`` gives the unsigned baseline.
    ``timesteps`` defaults to ``2**bits - 1``, where the SNN reproduces the quantized ANN's
    first layer exactly. Quantized weights are frozen at their quantized values and eval
    batch norm is folded into the layer before it. ``qmodel`` itself is not modified.
    ``mode`` is the simulation mode, ``"multistep"`` or ``"streaming"`` (see
    :class:`SpikingModel`; it can be changed later with ``snn.mode = ...``). ``compiled=True``
    fuses each neuron layer's T-step loop into one ``torch.compile``-d kernel (see
    :class:`~fastsnn.neuron.IFNeuron`). ``integer_kernels=True`` runs every conv fed by spikes
    whose weights are on an integer grid (weights quantized with ``weight_bits``, batch norm
    folded in) as an exact int8 x int8 -> int32 GEMM (:class:`SpikeConv2d`): much faster on CPUs
    with int8 dot-product instructions; same outputs up to float rounding. ``chunk_size``
    simulates large batches a chunk of samples at a time (see :class:`SpikingModel`).

    Raises :class:`ConversionError` naming the module when something between spiking layers
    is not linear per time step (max pooling, a functional relu, sigmoid, ...).
    """
    T = _default_timesteps(qmodel) if timesteps is None else int(timesteps)
    if T < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    model = copy.deepcopy(qmodel).eval()
    _freeze_quantized_weights(model)
    src = trace(model)
    ctx = TimeContext(T)

    # regions: static (input only), const (neither), temporal (after some neuron)
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
    reaches_neuron = _reaches(src, lambda u: kind[u] == "neuron")
    spiking = {n for n in src.graph.nodes if kind[n] == "temporal" and reaches_neuron[n]}
    if not any(k == "neuron" for k in kind.values()):
        raise ConversionError("the traced model has no QuantReLU call: quantize it first.")
    # After the last neurons only the decoding tail (no weights after it) may be nonlinear:
    # a nonlinearity feeding another layer there would be an analog layer hiding in the SNN.
    reaches_weights = _reaches(src, lambda u: _has_weights(u, src))
    for node in src.graph.nodes:
        if node.op == "call_module" and type(src.get_submodule(node.target)) is nn.ReLU:
            _check_spiking_op(node, src, set())  # a plain ReLU anywhere: not quantized
        if node in spiking or (kind[node] == "temporal" and reaches_weights[node]):
            _check_spiking_op(node, src, spiking | {n for n in kind if kind[n] in ("neuron", "temporal")})

    def in_output(n):  # temporal, after the last neurons
        return kind[n] == "temporal" and n not in spiking

    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    adapters: dict[tuple[str, fx.Node], fx.Node] = {}
    layers: list[SpikingLayer] = []
    neuron_names: dict[str, int] = {}

    def adapter(what: str, node: fx.Node) -> fx.Node:
        key = (what, node)
        if key not in adapters:
            name = f"{what}_{node.name}"
            module = TimeCollapse(ctx) if what == "collapse" else StaticExpand(ctx, always=what == "expand")
            src.add_submodule(name, module)
            adapters[key] = graph.call_module(name, (env[node],))
        return adapters[key]

    def value_for(user_region: str, a: fx.Node) -> fx.Node:
        """The new-graph value of input ``a`` as seen from a node of ``user_region``."""
        if user_region == "spiking" and kind[a] == "static":
            return adapter("expand", a)
        if user_region == "output":
            if kind[a] == "static":
                return adapter("expand_unrolled", a)
            if kind[a] == "neuron" or a in spiking:
                return adapter("collapse", a)
        return env[a]

    for node in src.graph.nodes:
        if node.op == "output":

            def out_value(a):
                if kind[a] == "neuron" or a in spiking:
                    return adapter("collapse", a)
                return value_for("output", a)

            graph.output(fx.node.map_arg(node.args[0], out_value))
            continue
        if kind[node] == "neuron":
            (inp,) = node.all_input_nodes
            constant = kind[inp] == "static"
            qrelu = src.get_submodule(node.target)
            calls = neuron_names.get(node.target, 0)
            neuron_names[node.target] = calls + 1
            name = f"{node.target.replace('.', '_')}_neuron" + (f"{calls}" if calls else "")
            gn = GraphNeuron(IFNeuron(qrelu.alpha.detach(), signed, compiled), ctx, constant, node.name, node.target)
            src.add_submodule(name, gn.to(qrelu.alpha.device))
            env[node] = graph.call_module(name, (env[inp] if constant else value_for("spiking", inp),))
            layers.append(SpikingLayer(name=name, path=node.target, constant_input=constant))
            continue
        region = "spiking" if node in spiking else "output" if in_output(node) else "static"
        if node.op == "call_module" and isinstance(
            src.get_submodule(node.target), (nn.Identity, nn.modules.dropout._DropoutNd)
        ):
            env[node] = value_for(region, node.args[0])  # identity in eval mode
            continue
        env[node] = graph.node_copy(node, lambda a, region=region: value_for(region, a))

    graph.lint()
    net = fx.GraphModule(src, graph, class_name=f"Spiking{type(qmodel).__name__}")
    _fold_batch_norms(net)
    if integer_kernels:
        _use_integer_kernels(net)
    net.recompile()
    return SpikingModel(net, ctx, signed, layers, _static_linear_modules(net), mode, chunk_size)
