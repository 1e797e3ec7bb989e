"""Making a model quantized: :func:`quantize_model`.

It swaps the building blocks of :mod:`fastsnn.quantizers` into any model (after the graph
rewrites of :func:`fastsnn.prepare.prepare_model`), and changes the bit width of a model that
is already quantized (progressive 32 -> 4 -> 3 -> 2 training).
"""

from __future__ import annotations

import warnings

from torch import nn

from .prepare import PoolConv2d, prepare_with_others, relu_like, set_submodule
from .quantizers import QuantConv2d, QuantLinear, QuantReLU, WeightQuantizer


def _to_quant_layer(layer: nn.Module, bits: int | None, mode: str) -> nn.Module:
    """A Quant* copy of a plain conv / linear layer that shares its parameters."""
    if isinstance(layer, nn.Conv2d):
        new = QuantConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
            weight_bits=bits,
            weight_quant=mode,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
    else:
        new = QuantLinear(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            weight_bits=bits,
            weight_quant=mode,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
    new.weight = layer.weight
    if layer.bias is not None:
        new.bias = layer.bias
    new.train(layer.training)
    return new


def quantize_model(
    model: nn.Module,
    bits: int | None,
    weight_bits: int | str | None = None,
    weight_quant: str = "apot",
    first_last_bits: int | None = 8,
    alpha_init: float = 2.0,
    fused: bool = False,
    max_pool: str | None = None,
) -> nn.Module:
    """Quantize ``model`` for Fast-SNN training and return the model to use.

    * every ``nn.ReLU`` module becomes ``QuantReLU(bits, alpha_init)`` (``bits=None``: a clipped
      full-precision ReLU); ``alpha_init=2.0`` suits batch-normalised activations, the paper's
      recipes start the clips at 8.0 (``conf/experiment/``); every ``nn.ReLU6``
      (and ``nn.Hardtanh(0, c)``) a ``QuantReLU`` whose clip starts at 6 (``c``) and is
      learned; existing ``QuantReLU`` modules get the new ``bits`` and keep their learned
      ``alpha``, so a model trained at 4 bits continues at 3 bits (progressive training);
    * ReLUs written as functions in a ``forward`` (``F.relu``, ``torch.relu``, ``F.relu6``,
      ``F.hardtanh(x, 0, c)``, ``x.relu()``, in-place forms) are found in the model's
      ``torch.fx`` graph and get a QuantReLU each (see :func:`~fastsnn.prepare.prepare_model`). The result is
      then a ``torch.fx.GraphModule`` (same parameters and module paths) instead of
      ``model``; without such functions ``model`` itself is quantized in place, as before;
    * ``max_pool="avg"`` / ``"conv"`` replaces the max pools that would sit between spiking
      layers (the converter cannot simulate them) by average pooling / a strided depthwise
      convolution, so that the ANN is trained with the pooling the SNN uses; stem max pools
      right after the first activation stay, the converter moves them exactly (see
      :func:`~fastsnn.prepare.prepare_model`). ``None`` keeps every max pool;
    * other activations (SiLU, GELU, Hardswish, sigmoid gates, softmax, attention, ...) are
      left as they are, with one warning that lists them: the converter refuses them
      between spiking layers;
    * with ``weight_bits`` set, every ``nn.Conv2d`` / ``nn.Linear`` quantizes its weight
      (``weight_quant`` = ``"apot"`` or ``"uniform"``, learnable clip ``alpha_w``), except the
      first conv and the last conv / linear layer (in registration order), which get
      ``first_last_bits`` bits, max-scaled (``None``: full precision). With ``weight_bits``
      None the weights stay full precision, as the paper does for detection/segmentation.
      ``weight_bits="same"`` quantizes them at the activation bit width, at least 2 (a sign
      and one magnitude bit; the paper's classification recipe), and keeps them full
      precision when ``bits`` is None;
    * ``fused=True`` fuses each QuantReLU's forward and backward with torch.compile (see
      :class:`QuantReLU`).
    """
    if bits is not None and bits < 1:
        raise ValueError(f"bits must be >= 1 or None (got {bits})")
    if weight_quant not in ("apot", "uniform"):
        raise ValueError(f"weight_quant must be 'apot' or 'uniform', got {weight_quant!r}")
    if weight_bits == "same":  # weights need a sign and at least one magnitude bit
        weight_bits = None if bits is None else max(bits, 2)
    elif isinstance(weight_bits, str):
        raise ValueError(f"weight_bits must be an int, 'same' or None, got {weight_bits!r}")
    model, others = prepare_with_others(model, max_pool, split_shared=False)
    if others:
        warnings.warn(
            f"quantize_model left these activations as they are: {', '.join(others)}. Only ReLU, ReLU6 and "
            "Hardtanh(0, c) become QuantReLU (IF neurons); convert_to_snn refuses the others between "
            "spiking layers.",
            stacklevel=2,
        )
    _quantize_activations(model, bits, alpha_init, fused)
    _quantize_weights(model, weight_bits, weight_quant, first_last_bits)
    return model


def _quantize_activations(model: nn.Module, bits: int | None, alpha_init: float, fused: bool) -> None:
    """ReLU-like modules -> QuantReLU; existing QuantReLUs get the new bits and keep their clip."""
    ref = next(model.parameters(), None)
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantReLU):
            module.bits = bits
            module.fused = fused
        elif relu_like(module):
            clip = alpha_init if type(module) is nn.ReLU else float(module.max_val)
            new = QuantReLU(bits, clip, fused)
            if ref is not None:
                new = new.to(ref.device)
            set_submodule(model, name, new)


def _quantize_weights(
    model: nn.Module, weight_bits: int | None, weight_quant: str, first_last_bits: int | None
) -> None:
    """Conv / linear layers -> Quant* layers; the first conv and the last layer get first_last_bits."""
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, PoolConv2d)
    ]
    if not layers:
        return
    convs = [n for n, m in layers if isinstance(m, nn.Conv2d)]
    first_name = convs[0] if convs else layers[0][0]
    last_name = layers[-1][0]
    for name, layer in layers:
        at_edge = name in (first_name, last_name)
        want_bits = (first_last_bits if at_edge else weight_bits) if weight_bits is not None else None
        mode = "max" if at_edge else weight_quant
        if isinstance(layer, (QuantConv2d, QuantLinear)):
            if layer.weight_quantizer.mode != mode:
                layer.weight_quantizer = WeightQuantizer(want_bits, mode).to(layer.weight.device)
            else:
                layer.weight_quantizer.bits = want_bits
        elif want_bits is not None:
            set_submodule(model, name, _to_quant_layer(layer, want_bits, mode))
