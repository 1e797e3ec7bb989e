"""What may run between neuron layers: the ops linear per time step, and the refusals.

Between two neuron layers every op sees spike trains, so only ops that are linear (or
affine) per time step keep the SNN faithful to the ANN. The registries below list them;
``register_linear_module`` / ``register_linear_function`` extend them for custom code.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn
from torch.nn import functional as F


class ConversionError(ValueError):
    """The model cannot be converted faithfully; the message says where and what to do."""


# --------------------------------------------------------------------------- what is linear


class Registry:
    """The ops of one kind declared linear per time step: module types, functions or method names.

    Grows with ``register_linear_module`` / ``register_linear_function``; a function or method
    name is looked up as is (``in``), a module by its type, subclasses included (:meth:`matches`).
    """

    def __init__(self, *entries):
        self._entries = dict.fromkeys(entries)  # ordered, each once

    def add(self, entry):
        """Register ``entry`` (again: no effect); returns it, so that registering can decorate."""
        self._entries[entry] = None
        return entry

    def __contains__(self, entry) -> bool:
        return entry in self._entries

    def matches(self, module: nn.Module) -> bool:
        """Is ``module`` an instance of one of the registered types?"""
        return isinstance(module, tuple(self._entries))


_LINEAR_MODULES = Registry(
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
)
_LINEAR_FUNCTIONS = Registry(
    operator.add,
    operator.sub,
    operator.neg,
    operator.pos,
    operator.getitem,
    getattr,
    torch.add,
    torch.sub,
    torch.neg,
    torch.cat,
    torch.concat,
    torch.stack,
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.transpose,
    torch.permute,
    torch.chunk,
    torch.split,
    torch.narrow,
    torch.sum,
    torch.mean,
    F.interpolate,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.pad,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.linear,
    F.pixel_shuffle,
    F.pixel_unshuffle,
    F.dropout,
)
_LINEAR_METHODS = Registry(
    "view",
    "reshape",
    "flatten",
    "unflatten",
    "size",
    "dim",
    "permute",
    "transpose",
    "contiguous",
    "chunk",
    "split",
    "squeeze",
    "unsqueeze",
    "narrow",
    "add",
    "sub",
    "neg",
    "mean",
    "sum",
    "to",
    "type_as",
    "clone",
    "float",
    "view_as",
    "reshape_as",
)
# products and quotients are linear only while a single operand carries spikes
_SCALING = {operator.mul, operator.truediv, torch.mul, torch.div, "mul", "div"}
_MAX_POOLING = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_MAX_POOLING_FUNCTIONS = {
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    torch.max_pool2d,
}


# Why an IF neuron cannot stand in for an activation: its spike rate follows one function of
# its input, a ReLU clipped at the threshold (zero below 0, linear up to theta, flat above).
_CLIPPED_RELU = "an IF neuron's spike rate is a clipped ReLU of its input (0 below 0, linear up to its threshold)"
_ACTIVATION_REASONS = {
    ("SiLU", "Hardswish", "GELU", "Mish", "silu", "hardswish", "gelu", "mish"): (
        "it dips below zero and is not monotone; " + _CLIPPED_RELU + " and never takes negative values"
    ),
    ("LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "leaky_relu", "prelu", "elu", "celu", "selu"): (
        "it passes negative values; " + _CLIPPED_RELU + ", whose net spike count cannot go below zero"
    ),
    (
        "Sigmoid",
        "Hardsigmoid",
        "Tanh",
        "Softsign",
        "LogSigmoid",
        "Softplus",
        "sigmoid",
        "hardsigmoid",
        "tanh",
        "Tensor.sigmoid",
        "Tensor.tanh",
        "softplus",
    ): (
        "it is a squashing curve, not zero for negative inputs (" + _CLIPPED_RELU + "); used as a gate "
        "(x * sigmoid(...)) it would also multiply two spike trains"
    ),
    ("Softmax", "Softmin", "LogSoftmax", "Softmax2d", "softmax", "log_softmax", "Tensor.softmax"): (
        "it normalises over many units with exponentials; a neuron sees only its own input, one time step at a time"
    ),
    ("MultiheadAttention", "scaled_dot_product_attention"): (
        "attention multiplies two spike-carrying tensors (queries and keys) and normalises with a "
        "softmax; neither is linear per time step"
    ),
}
_MAX_POOL_FIX = (
    "Use average pooling or a stride-2 convolution instead: quantize_model(model, bits, max_pool='avg') "
    "(same window) or max_pool='conv' (a depthwise convolution with the pool's window and stride) replaces "
    "such max pools, so that the quantized ANN is trained with them. A max pool right after an activation "
    "of the analog input (a stem: conv -> bn -> relu -> maxpool) can stay: the converter moves it in front "
    "of that activation, where it is exact."
)


def _activation_reason(op: str) -> str | None:
    name = op.rsplit(".", 1)[-1] if not op.startswith("Tensor.") else op
    for names, reason in _ACTIVATION_REASONS.items():
        if name in names or op in names:
            return reason
    return None


_SHAPE_ARITHMETIC = {
    operator.getitem,
    operator.floordiv,
    operator.mul,
    operator.add,
    operator.sub,
    operator.mod,
    operator.truediv,
}


def _is_shape_value(node) -> bool:
    """A Python number read off a tensor's shape (``x.size()``, ``x.shape[1] // g``): no spikes."""
    if not isinstance(node, fx.Node):
        return not isinstance(node, (list, tuple, dict))  # a constant
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1:2] == ("shape",):
        return True
    if node.op == "call_function" and node.target in _SHAPE_ARITHMETIC:
        return all(_is_shape_value(a) for a in node.args) and any(isinstance(a, fx.Node) for a in node.args)
    return False


def register_linear_module(cls: type) -> type:
    """Declare a custom module type linear per time step (usable as a class decorator).

    Only do this for modules whose output is a linear (or affine) function of their input
    for every sample: the converter runs them on spike trains. Modules of exactly this type
    are kept whole when tracing (their ``forward`` need not be traceable by ``torch.fx``).
    """
    return _LINEAR_MODULES.add(cls)


def declared_linear(module: nn.Module) -> bool:
    """Was ``module``'s own type registered? Then tracing keeps it whole, as it does torch.nn layers."""
    return type(module) in _LINEAR_MODULES


def register_linear_function(fn):
    """Declare a function (called in some ``forward``) linear per time step."""
    return _LINEAR_FUNCTIONS.add(fn)


def _where(node: fx.Node) -> str:
    """Module path and type of the code that created ``node``, for error messages."""
    if node.op == "call_module":
        return f"module '{node.target}'"
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, (_, cls) = list(stack.items())[-1]
        cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        return f"the forward of module '{path}' ({cls_name.rsplit('.', 1)[-1]})"
    return "the model's top-level forward"


def _op_name(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__qualname__", str(node.target))


def _check_spiking_op(node: fx.Node, gm: fx.GraphModule, temporal: set[fx.Node]) -> None:
    """Refuse ``node`` (between two neuron layers) unless it is linear per time step."""
    where, op = _where(node), _op_name(node, gm)
    if node.op == "call_module":
        return _check_spiking_module(gm.get_submodule(node.target), where, op)
    if node.target in _MAX_POOLING_FUNCTIONS:
        raise ConversionError(
            f"{where} calls max pooling ({op}) between spiking layers; max pooling of spike trains "
            f"is not the max of their rates. {_MAX_POOL_FIX}"
        )
    if _is_shape_value(node):
        return  # arithmetic on sizes (channel shuffles, reshapes): the same at every step
    if node.target in _SCALING:
        operands = [a for a in node.args if isinstance(a, fx.Node) and a in temporal]
        divisor_spikes = (
            node.target in (operator.truediv, torch.div, "div") and len(node.args) > 1 and node.args[1] in temporal
        )
        if len(operands) <= 1 and not divisor_spikes:
            return
        raise ConversionError(
            f"{where} multiplies or divides two spike-carrying tensors ({op}); that is not linear "
            "per time step. Only scaling by a constant or by a function of the analog input works."
        )
    if node.target in _LINEAR_FUNCTIONS or (node.op == "call_method" and node.target in _LINEAR_METHODS):
        if node.target is F.dropout and node.kwargs.get("training", False):
            raise ConversionError(f"{where} applies dropout in training mode; put the model in eval().")
        return
    reason = _activation_reason(op)
    if reason is not None:
        raise ConversionError(
            f"{where} applies {op} between spiking layers, which an IF neuron cannot represent: "
            f"{reason}. Use a ReLU or ReLU6 there (quantize_model makes them QuantReLU), or move it "
            "after the output layer."
        )
    if op.rsplit(".", 1)[-1] in ("relu", "relu_", "relu6", "hardtanh", "hardtanh_"):
        raise ConversionError(
            f"{where} applies {op}, a ReLU written as a function, that was not quantized: "
            "quantize_model(model, bits) gives it a QuantReLU by rewriting the traced graph; "
            "convert the model that quantize_model returns (it can be a torch.fx.GraphModule)."
        )
    raise ConversionError(
        f"{where} applies {op} between spiking layers, which is not linear per time step (a "
        "sigmoid, GELU, softmax, ... cannot run on spike trains). If the function is linear, "
        "declare it with fastsnn.register_linear_function."
    )


def _check_spiking_module(m: nn.Module, where: str, op: str) -> None:
    """The module part of :func:`_check_spiking_op`: ``m`` is the module ``node`` calls."""
    if isinstance(m, _MAX_POOLING):
        raise ConversionError(
            f"{where} is max pooling ({op}) between spiking layers; max pooling of spike "
            f"trains is not the max of their rates. {_MAX_POOL_FIX}"
        )
    if type(m) is nn.ReLU:
        raise ConversionError(
            f"{where} is a plain nn.ReLU: quantize the model first (fastsnn.quantize_model) "
            "so that it becomes a QuantReLU."
        )
    if _LINEAR_MODULES.matches(m):
        return
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)):
        raise ConversionError(
            f"{where} ({op}) normalises each sample by statistics of its own values between spiking "
            "layers, which is not linear per time step (a spike train's per-step statistics are not "
            "its rate's); only batch norm in eval mode (fixed statistics, folded into the conv) is."
        )
    reason = _activation_reason(op)
    if reason is not None:
        raise ConversionError(
            f"{where} ({op}) is an activation between spiking layers that an IF neuron cannot "
            f"represent: {reason}. Use ReLU or ReLU6 there (quantize_model makes them QuantReLU), "
            "or move it after the output layer."
        )
    raise ConversionError(
        f"{where} ({op}) sits between spiking layers and is not known to be linear per time "
        "step. Only QuantReLU may be nonlinear there: replace it (e.g. by nn.ReLU + "
        "quantize_model), move it after the output layer, or, if it is linear, declare it "
        "with fastsnn.register_linear_module."
    )
