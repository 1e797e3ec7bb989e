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
``runtime``, with the optional int8 synapses of ``integer``.
"""

from __future__ import annotations

import copy

from torch import fx, nn

from ..quant import activation_bits
from ..quantize import _ACTIVATION_MODULES
from .integer import MIN_INTEGER_CHANNELS, SpikeConv2d, _use_integer_kernels, integer_grid
from .maxpool import move_stem_max_pools
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
from .runtime import (
    GraphNeuron,
    RunState,
    SpikingLayer,
    SpikingModel,
    StaticExpand,
    TimeCollapse,
    TimeContext,
    after_neurons,
)

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
        others = sorted({type(m).__name__ for m in qmodel.modules() if isinstance(m, _ACTIVATION_MODULES)})
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


def convert_to_snn(
    qmodel: nn.Module,
    timesteps: int | None = None,
    signed: bool = True,
    mode: str = "auto",
    compiled: bool | str = "auto",
    integer_kernels: bool | str = "auto",
    chunk_size: int | str | None = "auto",
    memory_budget: float | None = None,
    channels_last: bool = True,
) -> SpikingModel:
    """Convert a quantized ANN (see :func:`fastsnn.quantize_model`) into a :class:`SpikingModel`.

    Every ``QuantReLU`` call becomes an IF neuron with ``threshold = alpha`` (membrane starts
    at threshold/2, reset by subtraction); ``signed=False`` gives the unsigned baseline.
    ``timesteps`` defaults to ``2**bits - 1``, where the SNN reproduces the quantized ANN's
    first layer exactly. Quantized weights are frozen at their quantized values and eval
    batch norm is folded into the layer before it. ``qmodel`` itself is not modified.
    ``mode`` is the simulation mode, ``"multistep"``, ``"streaming"`` or ``"auto"`` (see
    :class:`SpikingModel`; it can be changed later with ``snn.mode = ...``): the default
    ``"auto"`` chooses per input shape, streaming when a multi-step pass would need more than
    ``memory_budget`` (bytes, or a fraction of the device's available memory; default: half of
    it) at its peak, estimated on the meta device; each choice is logged once. ``compiled=True``
    fuses each neuron layer's T-step loop into one ``torch.compile``-d kernel, ``False`` keeps
    the eager loop, and the default ``"auto"`` compiles a kernel once its eager runs have cost
    as much as a compile, and only where the fused kernel measured faster on this machine
    (decision cached; see :mod:`fastsnn.kernel_choice`). ``integer_kernels=True`` runs every conv fed by spikes
    with at least ``MIN_INTEGER_CHANNELS`` inputs whose weights are on an integer grid (weights
    quantized with ``weight_bits``, batch norm folded in) as an exact int8 x int8 -> int32 GEMM
    (:class:`SpikeConv2d`): much faster on CPUs with int8 dot-product instructions, much slower
    on CPUs without them; same outputs up to float rounding. The default ``"auto"`` measures both
    kernels per conv class once a class has run for a second, keeps the faster (cached per
    machine) and uses it for every spike-fed conv with integer-grid weights; ``False`` keeps
    float32 convolutions everywhere. ``chunk_size`` simulates large batches a chunk of samples
    at a time; the default ``"auto"`` derives the chunk on CPUs from the layer sizes and the
    CPU's cache, ``None`` takes whole batches (see :class:`SpikingModel`). ``channels_last``
    (default) stores the 4-d weights channels-last, so that every conv and neuron layer runs on
    channels-last tensors (faster on CPUs, most of all on narrow convs); this changes the float
    summation order of float convs, so a spike can differ from ``channels_last=False`` where a
    membrane lies within float rounding of a threshold (exact-grid networks agree bit for bit).

    A max pool right after a QuantReLU whose input is analog (conv -> bn -> relu -> maxpool
    stems) is moved in front of it, where it is exact (:mod:`fastsnn.convert.maxpool`).
    Raises :class:`ConversionError` naming the module when something between spiking layers
    is not linear per time step (max pooling elsewhere, sigmoid, GELU, ...): the message says
    why and what to do (e.g. ``quantize_model(..., max_pool="avg")`` for max pooling).
    """
    T = _default_timesteps(qmodel) if timesteps is None else int(timesteps)
    if T < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if integer_kernels not in (True, False, "auto"):
        raise ValueError(f"integer_kernels must be True, False or 'auto', got {integer_kernels!r}")
    src = _traced_copy(qmodel)
    regions = classify(src)
    check(src, regions)
    ctx = TimeContext(T)
    net, layers = SpikingGraphBuilder(src, regions, ctx, signed, compiled).build(f"Spiking{type(qmodel).__name__}")
    fold_batch_norms(net)
    if integer_kernels:
        _use_integer_kernels(net, auto=integer_kernels == "auto")
    if channels_last:
        store_channels_last(net)
    net.recompile()
    static = static_linear_modules(net, after_neurons(net))
    return SpikingModel(net, ctx, signed, layers, static, mode, chunk_size, memory_budget)


def _traced_copy(qmodel: nn.Module) -> fx.GraphModule:
    """A trace of a copy of ``qmodel`` in eval mode, its quantized weights frozen (``qmodel`` is not touched)."""
    model = copy.deepcopy(qmodel).eval()
    freeze_quantized_weights(model)
    src = trace(model)
    move_stem_max_pools(src)  # maxpool(q(x)) -> q(maxpool(x)) on the analog input: exact
    return src
