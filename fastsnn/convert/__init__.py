"""Quantized ANN -> spiking network (docs/method.md §3), for any model built from supported layers.

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
  (``[T*N, ...]``). Anything else (max pooling, sigmoid, GELU, softmax...) is refused
  with a :class:`ConversionError` naming the module. One exception is rewritten first
  (``maxpool``): a max pool right after a neuron fed by the analog input (a ResNet stem)
  moves in front of it, ``maxpool(q(x)) = q(maxpool(x))``, and joins the static region.
* **output** -- after the last neurons (the analog output layer). Since it is linear in
  the spikes, it runs once on their mean over T (exact by linearity): the network output
  is the mean over T of the output layer's per-step outputs, at 1/T of the cost.

The result, :class:`SpikingModel`, is a plain ``nn.Module``; the ANN is left untouched.

:func:`convert_to_snn` runs four steps: trace a frozen copy of the ANN (``passes``), classify
its nodes into these regions (``regions``), check what runs on spikes (``rules``), rebuild the
graph with neurons and time adapters (``rebuild``); the result runs on the modules of
``modules``, with the optional int8 synapses of ``integer``, driven by ``runtime``.
"""

from __future__ import annotations

import copy

from torch import fx, nn

from ..config import SimulationConfig
from ..prepare import ACTIVATION_MODULES
from ..quantizers import activation_bits
from .integer import MIN_INTEGER_CHANNELS, SpikeConv2d, integer_grid, use_integer_kernels
from .maxpool import move_stem_max_pools
from .modules import GraphNeuron, RunState, StaticExpand, TimeCollapse, TimeContext
from .passes import (
    fold_batch_norms,
    freeze_quantized_weights,
    frozen_ann,
    static_linear_modules,
    store_channels_last,
    trace,
)
from .rebuild import SpikingGraphBuilder
from .regions import Regions, check, classify
from .rules import ConversionError, register_linear_function, register_linear_module
from .runtime import SpikingLayer, SpikingModel, after_neurons

__all__ = [
    "MIN_INTEGER_CHANNELS",
    "ConversionError",
    "GraphNeuron",
    "Regions",
    "RunState",
    "SpikeConv2d",
    "SpikingGraphBuilder",
    "SpikingLayer",
    "SpikingModel",
    "StaticExpand",
    "TimeCollapse",
    "TimeContext",
    "convert_to_snn",
    "fold_batch_norms",
    "freeze_quantized_weights",
    "frozen_ann",
    "integer_grid",
    "register_linear_function",
    "register_linear_module",
    "trace",
]


def _default_timesteps(qmodel: nn.Module) -> int:
    bits = activation_bits(qmodel)
    if not bits:
        others = sorted({type(m).__name__ for m in qmodel.modules() if isinstance(m, ACTIVATION_MODULES)})
        raise ConversionError(
            "the model has no QuantReLU: quantize it first with fastsnn.quantize_model(model, bits)"
            + (
                f". Its activations ({', '.join(others)}) are not ReLUs: quantize_model leaves them alone and an IF "
                "neuron, whose spike rate is a clipped ReLU of its input, cannot represent them."
                if others
                else "."
            )
        )
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


def convert_to_snn(qmodel: nn.Module, config: SimulationConfig | None = None, **options) -> SpikingModel:
    """Convert a quantized ANN (see :func:`fastsnn.quantize_model`) into a :class:`SpikingModel`.

    ``config`` (a :class:`~fastsnn.SimulationConfig`) says how it is simulated; keyword
    ``options`` are a shorthand for its fields, applied on top of it (``convert_to_snn(q,
    timesteps=7, mode="streaming")``). Every ``QuantReLU`` call becomes an IF neuron with
    ``threshold = alpha`` (membrane starts at threshold/2, reset by subtraction);
    ``signed=False`` gives the unsigned baseline. ``timesteps`` defaults to ``2**bits - 1``,
    where the SNN reproduces the quantized ANN's first layer exactly. Quantized weights are
    frozen at their quantized values and eval batch norm is folded into the layer before it.
    ``qmodel`` itself is not modified.

    A max pool right after a QuantReLU whose input is analog (conv -> bn -> relu -> maxpool
    stems) is moved in front of it, where it is exact (:mod:`fastsnn.convert.maxpool`).
    Raises :class:`ConversionError` naming the module when something between spiking layers
    is not linear per time step (max pooling elsewhere, sigmoid, GELU, ...): the message says
    why and what to do (e.g. ``quantize_model(..., max_pool="avg")`` for max pooling).
    """
    config = (config or SimulationConfig()).replace(**options)
    if config.timesteps is None:
        config = config.replace(timesteps=_default_timesteps(qmodel))
    src = _traced_copy(qmodel)
    regions = classify(src)
    check(src, regions)
    ctx = TimeContext(config.timesteps)
    builder = SpikingGraphBuilder(src, regions, ctx, config.signed, config.compiled)
    net, layers = builder.build(f"Spiking{type(qmodel).__name__}")
    fold_batch_norms(net)
    if config.integer_kernels:
        use_integer_kernels(net, "auto" if config.integer_kernels == "auto" else "integer")
    if config.channels_last:
        store_channels_last(net)
    net.recompile()
    static = static_linear_modules(net, after_neurons(net))
    return SpikingModel(net, ctx, layers, static, config)


def _traced_copy(qmodel: nn.Module) -> fx.GraphModule:
    """A trace of a copy of ``qmodel`` in eval mode, its quantized weights frozen (``qmodel`` is not touched)."""
    model = copy.deepcopy(qmodel).eval()
    freeze_quantized_weights(model)
    src = trace(model)
    move_stem_max_pools(src)  # maxpool(q(x)) -> q(maxpool(x)) on the analog input: exact
    return src
