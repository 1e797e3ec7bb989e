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
import operator
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .neuron import IFNeuron
from .quant import QuantConv2d, QuantLinear, QuantReLU, activation_bits


class ConversionError(ValueError):
    """The model cannot be converted faithfully; the message says where and what to do."""


# --------------------------------------------------------------------------- what is linear

_LINEAR_MODULES: tuple[type, ...] = (
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
_LINEAR_FUNCTIONS = {
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
}
_LINEAR_METHODS = {
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
}
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


def register_linear_module(cls: type) -> type:
    """Declare a custom module type linear per time step (usable as a class decorator).

    Only do this for modules whose output is a linear (or affine) function of their input
    for every sample: the converter runs them on spike trains.
    """
    global _LINEAR_MODULES
    _LINEAR_MODULES = (*_LINEAR_MODULES, cls)
    return cls


def register_linear_function(fn):
    """Declare a function (called in some ``forward``) linear per time step."""
    _LINEAR_FUNCTIONS.add(fn)
    return fn


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (QuantReLU, QuantConv2d, QuantLinear)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` trace of ``model`` that keeps the quantized layers as leaves."""
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # fx raises many types; all mean the same thing to the user
        raise ConversionError(
            f"could not trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}). "
            "The converter needs a forward without Python control flow on tensor values or "
            "shapes; move such logic (e.g. decoding, loss) out of forward()."
        ) from err
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


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
        m = gm.get_submodule(node.target)
        if isinstance(m, _MAX_POOLING):
            raise ConversionError(
                f"{where} is max pooling ({op}) between spiking layers; max pooling of spike "
                "trains is not the max of their rates. Use a stride-2 convolution or nn.AvgPool2d."
            )
        if type(m) is nn.ReLU:
            raise ConversionError(
                f"{where} is a plain nn.ReLU: quantize the model first (fastsnn.quantize_model) "
                "so that it becomes a QuantReLU."
            )
        if isinstance(m, _LINEAR_MODULES):
            return
        raise ConversionError(
            f"{where} ({op}) sits between spiking layers and is not known to be linear per time "
            "step. Only QuantReLU may be nonlinear there: replace it (e.g. by nn.ReLU + "
            "quantize_model), move it after the output layer, or, if it is linear, declare it "
            "with fastsnn.register_linear_module."
        )
    if node.target in _MAX_POOLING_FUNCTIONS:
        raise ConversionError(
            f"{where} calls max pooling ({op}) between spiking layers. Use a stride-2 convolution "
            "or average pooling instead."
        )
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
    raise ConversionError(
        f"{where} applies {op} between spiking layers, which is not linear per time step (a "
        "functional relu, sigmoid, GELU, ... cannot run on spike trains). Write ReLUs as "
        "nn.ReLU modules so quantize_model makes them QuantReLU, or, if the function is linear, "
        "declare it with fastsnn.register_linear_function."
    )


# --------------------------------------------------------------------------- runtime modules


class TimeContext:
    """What every time-aware module of one SpikingModel shares: T and the run mode.

    mode ``"mean"``: the output region runs once on the mean over T (normal inference);
    ``"cummean"``: on the running mean after each step (accuracy-vs-time curves);
    ``"steps"``: on the raw per-step values (spike statistics count every event);
    ``"streaming"``: one time step per call, ``[N, ...]`` tensors, state kept in the modules.
    """

    def __init__(self, timesteps: int):
        self.timesteps = timesteps
        self.mode = "mean"


class GraphNeuron(nn.Module):
    """An :class:`IFNeuron` inside a converted graph: unfolds ``[T*N, ...]`` into time.

    ``constant_input`` neurons (the first layer) receive the static ``[N, ...]`` input once.
    ``source`` is the node of the ANN trace it replaces (the ANN activation it mimics).
    """

    def __init__(self, neuron: IFNeuron, ctx: TimeContext, constant_input: bool, source: str, path: str):
        super().__init__()
        self.neuron = neuron
        self.ctx = ctx
        self.constant_input = constant_input
        self.source = source
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ctx.mode == "streaming":
            return self.neuron.step(x, horizon=self.ctx.timesteps)
        T = self.ctx.timesteps
        if self.constant_input:
            out = self.neuron.forward_constant(x, T)
        else:
            out = self.neuron(x.reshape(T, x.shape[0] // T, *x.shape[1:]))
        return out.flatten(0, 1)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, constant_input={self.constant_input}"


class TimeCollapse(nn.Module):
    """Mean over T of a folded ``[T*N, ...]`` spike train, on its way into the output layer."""

    def __init__(self, ctx: TimeContext):
        super().__init__()
        self.ctx = ctx
        self.total: torch.Tensor | None = None  # streaming: sum of the steps so far
        self.count = 0

    def reset(self) -> None:
        self.total, self.count = None, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ctx.mode == "streaming":  # running mean of the steps seen so far
            if self.total is None:
                self.total = x.clone()  # our own buffer: accumulated in place below
            else:
                self.total.add_(x)
            self.count += 1
            return self.total / self.count
        if self.ctx.mode == "steps":
            return x
        T = self.ctx.timesteps
        x = x.reshape(T, x.shape[0] // T, *x.shape[1:])
        if self.ctx.mode == "mean":
            return x.mean(0)
        steps = torch.arange(1, T + 1, device=x.device, dtype=x.dtype).reshape(T, *[1] * (x.dim() - 1))
        return (x.cumsum(0) / steps).flatten(0, 1)


class StaticExpand(nn.Module):
    """Repeats a static ``[N, ...]`` tensor over T where it meets folded ``[T*N, ...]`` ones.

    ``always=False`` (edges into the output region) repeats only when the output region
    runs per step (modes ``cummean`` / ``steps``).
    """

    def __init__(self, ctx: TimeContext, always: bool):
        super().__init__()
        self.ctx = ctx
        self.always = always

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):  # e.g. a size read off the input: the same at every step
            return x
        if self.ctx.mode == "streaming" or (not self.always and self.ctx.mode == "mean"):
            return x
        T = self.ctx.timesteps
        return x.unsqueeze(0).expand(T, *x.shape).flatten(0, 1)


def _map_tensors(fn, obj):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(fn, v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- integer kernels


def integer_grid(weight: torch.Tensor, max_int: int = 127, max_divisor: int = 64, tol: float = 1e-4):
    """``(ints, scale)`` with ``weight ~= ints * scale[:, None, ...]`` per output channel, or None.

    ``ints`` is int8 with ``|ints| <= max_int``; found when every weight of a channel is an
    integer multiple (within ``tol`` of the step) of one step, the channel's smallest non-zero
    magnitude divided by ``1..max_divisor``. That holds for weights quantized to few levels
    (uniform or APoT, :class:`~fastsnn.quant.WeightQuantizer`), also after batch norm was
    folded into them (a per-channel factor); float weights never pass.
    """
    w = weight.detach().float().reshape(weight.shape[0], -1)
    a = w.abs()
    smallest = torch.where(a > 0, a, torch.full_like(a, float("inf"))).amin(1)
    smallest = torch.where(torch.isfinite(smallest), smallest, torch.ones_like(smallest))
    scale = torch.full_like(smallest, float("nan"))
    for k in range(1, max_divisor + 1):
        todo = torch.isnan(scale)
        if not todo.any():
            break
        unit = smallest[todo] / k
        r = a[todo] / unit[:, None]
        ok = ((r - r.round()).abs() <= tol).all(1) & (r.round() <= max_int).all(1)
        idx = todo.nonzero().squeeze(1)[ok]
        scale[idx] = unit[ok]
    if torch.isnan(scale).any():
        return None
    ints = torch.round(w / scale[:, None])
    if (ints * scale[:, None] - w).abs().max() > tol * scale.max():
        return None
    return ints.to(torch.int8).reshape(weight.shape), scale


class SpikeConv2d(nn.Conv2d):
    """A ``Conv2d`` fed by spikes, run as an exact integer GEMM when its weights allow it.

    Its input holds multiples of ``unit`` (``threshold`` for spikes, ``threshold / k**2``
    after a k x k average pooling), so with integer-grid weights (``integer_grid``: quantized
    weights, batch norm folded in) every output is ``scale[c] * unit * (integer sum) + bias``.
    The integer sum is computed exactly, int8 x int8 -> int32 (``torch._int_mm`` on an im2col
    of the int8 input), instead of a float32 convolution: the same value up to float
    rounding (the float path rounds at every addition, this one once). It falls back to the
    float convolution when gradients are enabled (layer-wise fine-tuning evaluates the layer on
    rates), when the weights leave the integer grid (e.g. after fine-tuning changed them;
    checked again whenever the weight tensor is modified), or for unsupported settings.
    """

    def _unit(self) -> float:
        """Input value per integer step: the feeding neurons' threshold / the pooling area."""
        neuron, pool = self._spike_source
        return float(neuron.threshold.item()) / pool

    def _integer_weights(self):
        version = (self.weight._version, self.weight.data_ptr(), self.weight.device, self._unit())
        if getattr(self, "_int_cache_version", None) != version:
            grid = None
            if (
                self.groups == 1
                and self.padding_mode == "zeros"
                and isinstance(self.padding, tuple)
                and self.weight.dtype == torch.float32
                and self.weight.device.type in ("cpu", "cuda")
            ):
                grid = integer_grid(self.weight)
            if grid is None:
                self._int_cache = None
            else:
                ints, scale = grid
                kh, kw = self.kernel_size
                w = ints.permute(2, 3, 1, 0).reshape(kh * kw * self.in_channels, self.out_channels).contiguous()
                bias = self.bias.detach().float() if self.bias is not None else torch.zeros_like(scale)
                self._int_cache = (w, (scale * version[-1]).to(self.weight.device), bias)
            self._int_cache_version = version
        return self._int_cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cache = None if torch.is_grad_enabled() or x.dtype != torch.float32 or x.dim() != 4 else self._integer_weights()
        if cache is None:
            return super().forward(x)
        w, scale, bias = cache
        B, C, H, W = x.shape
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = self.kernel_size, self.stride, self.dilation, self.padding
        Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        xh = x.permute(0, 2, 3, 1)  # NHWC
        if self._spike_source[1] == 1:  # plain spikes: values exactly in {-unit, 0, +unit}
            xi = xh.sign().to(torch.int8).contiguous()
        else:
            xi = xh.mul(1.0 / self._unit()).round_().to(torch.int8).contiguous()
        if ph or pw:
            xi = F.pad(xi, (0, 0, pw, pw, ph, ph))
        if (kh, kw) == (1, 1):
            cols = xi[:, : (Ho - 1) * sh + 1 : sh, : (Wo - 1) * sw + 1 : sw, :]
        else:
            cols = torch.cat(
                [
                    xi[:, i * dh : i * dh + (Ho - 1) * sh + 1 : sh, j * dw : j * dw + (Wo - 1) * sw + 1 : sw, :]
                    for i in range(kh)
                    for j in range(kw)
                ],
                dim=3,
            )
        try:
            y = torch._int_mm(cols.reshape(B * Ho * Wo, -1), w)
        except RuntimeError:  # a shape / layout this device's int8 GEMM does not take: stay float
            self._int_cache = None
            return super().forward(x)
        out = torch.addcmul(bias, y.to(torch.float32), scale)
        return out.view(B, Ho, Wo, self.out_channels).permute(0, 3, 1, 2)  # channels-last memory


# Narrower convs stay float32: measured on a CPU with VNNI (batch 192), int8 was slower at 16
# input channels, even at 32 and 4x faster at 64 and more.
MIN_INTEGER_CHANNELS = 48


def _use_integer_kernels(gm: fx.GraphModule) -> list[str]:
    """Turn the convs fed by one neuron layer (directly or through a k x k average pool) into
    :class:`SpikeConv2d`; returns their names. Their weights are checked at run time."""
    done = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or type(gm.get_submodule(node.target)) is not nn.Conv2d:
            continue
        src, pool = node.args[0], 1
        if isinstance(src, fx.Node) and src.op == "call_module":
            m = gm.get_submodule(src.target)
            if isinstance(m, nn.AvgPool2d) and m.padding in (0, (0, 0)) and m.divisor_override is None:
                k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
                pool, src = k[0] * k[1], src.args[0]
        if not (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and isinstance(gm.get_submodule(src.target), GraphNeuron)
        ):
            continue
        if gm.get_submodule(node.target).in_channels < MIN_INTEGER_CHANNELS:
            continue  # im2col and conversions cost more than the int8 GEMM saves
        if len([n for n in gm.graph.nodes if n.op == "call_module" and n.target == node.target]) != 1:
            continue
        conv = gm.get_submodule(node.target)
        conv.__class__ = SpikeConv2d
        # a plain attribute, not a submodule: the neuron stays where it is in the module tree
        object.__setattr__(conv, "_spike_source", (gm.get_submodule(src.target).neuron, pool))
        done.append(node.target)
    return done


# --------------------------------------------------------------------------- the converted model


@dataclass(frozen=True)
class SpikingLayer:
    """One neuron layer of a :class:`SpikingModel` (for fine-tuning, statistics, logs)."""

    name: str  # submodule name of its GraphNeuron in ``SpikingModel.net``
    path: str  # the ANN's QuantReLU module path it replaces
    constant_input: bool  # first layer: its input is the analog image, exact by construction


class SpikingModel(nn.Module):
    """A converted network: ``snn(x)`` returns the mean over T of the output layer.

    ``snn(x, return_steps=True)`` returns ``(output, steps)`` where ``steps[t-1]`` is the
    network output after ``t`` steps (the running mean), for accuracy-vs-time curves.
    ``snn.timesteps`` can be changed after conversion (evaluate at another T).

    ``snn.mode`` chooses the simulation: ``"multistep"`` (default, fastest) runs the layers
    between neurons on all T steps at once, time folded into the batch; ``"streaming"`` runs
    one step after another with per-neuron state, so memory does not grow with T (for large
    inputs at large T). Both give the same outputs.
    ``snn.chunk_size`` (default ``None``: the whole batch at once) simulates a batch this many
    samples at a time: the outputs do not change (samples are independent), memory shrinks
    with the chunk, and on CPUs the T-times larger tensors of the multistep mode stay in the
    cache (ResNet-20 at T=15: 1.7x faster with chunks of 8). GPUs want whole batches.
    The model is always in inference mode: ``train()`` leaves its layers in eval mode.
    """

    MODES = ("multistep", "streaming")

    def __init__(
        self,
        net: fx.GraphModule,
        ctx: TimeContext,
        signed: bool,
        layers: list[SpikingLayer],
        static_modules: frozenset[str],
        mode: str = "multistep",
        chunk_size: int | None = None,
    ):
        super().__init__()
        self.net = net
        self.ctx = ctx
        self.signed = signed
        self.layers = layers
        self.static_modules = static_modules  # conv/linear run on the analog input (MACs)
        self.mode = mode
        if chunk_size is not None and int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive number of samples or None, got {chunk_size}")
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self._streaming: tuple[fx.GraphModule, fx.GraphModule] | None = None
        self.net.eval()
        # inference needs no autograd graph; layerwise_finetune enables one layer at a time
        self.net.requires_grad_(False)

    @property
    def timesteps(self) -> int:
        return self.ctx.timesteps

    @timesteps.setter
    def timesteps(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"timesteps must be >= 1, got {value}")
        self.ctx.timesteps = int(value)

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()  # batch norm statistics and dropout stay frozen in an SNN
        return self

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError(f"SpikingModel.mode must be one of {self.MODES}, got {mode!r}")
        self._mode = mode

    def neurons(self) -> list[tuple[str, GraphNeuron]]:
        return [(layer.name, self.net.get_submodule(layer.name)) for layer in self.layers]

    def forward(self, x: torch.Tensor, return_steps: bool = False):
        if self.chunk_size is not None and x.shape[0] > self.chunk_size:
            parts = [self._forward(chunk, return_steps) for chunk in x.split(self.chunk_size)]
            if not return_steps:
                return _cat_outputs(parts, dim=0)
            return _cat_outputs([p[0] for p in parts], dim=0), _cat_outputs([p[1] for p in parts], dim=1)
        return self._forward(x, return_steps)

    def _forward(self, x: torch.Tensor, return_steps: bool):
        if self.mode == "streaming":
            return self._forward_streaming(x, return_steps)
        if not return_steps:
            return self.net(x)
        T = self.timesteps
        self.ctx.mode = "cummean"
        try:
            steps = _map_tensors(lambda t: t.reshape(T, t.shape[0] // T, *t.shape[1:]), self.net(x))
        finally:
            self.ctx.mode = "mean"
        return _map_tensors(lambda s: s[-1], steps), steps

    def _forward_streaming(self, x: torch.Tensor, return_steps: bool):
        if self._streaming is None:
            self._streaming = _split_static(self.net)
        static, step = self._streaming
        boundary = static(x)  # the analog-input side, computed once
        for m in self.net.modules():
            if isinstance(m, (TimeCollapse, IFNeuron)):
                m.reset()
        outputs = []
        self.ctx.mode = "streaming"
        try:
            for _ in range(self.timesteps):
                out = step(*boundary)
                if return_steps:
                    outputs.append(out)
        finally:
            self.ctx.mode = "mean"
            for m in self.net.modules():  # free the state: it is as large as all activations
                if isinstance(m, (TimeCollapse, IFNeuron)):
                    m.reset()
        if not return_steps:
            return out
        steps = _stack_outputs(outputs)
        return out, steps

    def forward_steps(self, x: torch.Tensor):
        """Outputs with the per-step values of the output layer (mode ``steps``), ``[T, N, ...]``."""
        T = self.timesteps
        self.ctx.mode = "steps"
        try:
            return _map_tensors(lambda t: t.reshape(T, t.shape[0] // T, *t.shape[1:]), self.net(x))
        finally:
            self.ctx.mode = "mean"


# --------------------------------------------------------------------------- conversion


def _cat_outputs(outputs: list, dim: int):
    """Concatenate a list of like-structured outputs (tensors, tuples, dicts) along ``dim``."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs, dim)
    if isinstance(first, dict):
        return {k: _cat_outputs([o[k] for o in outputs], dim) for k in first}
    return type(first)(_cat_outputs(list(parts), dim) for parts in zip(*outputs))


def _stack_outputs(outputs: list):
    """Stack a list of per-step outputs (tensors or tuples/lists/dicts of them) along a new dim 0."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(outputs)
    if isinstance(first, dict):
        return {k: _stack_outputs([o[k] for o in outputs]) for k in first}
    return type(first)(_stack_outputs(list(parts)) for parts in zip(*outputs))


def _split_static(net: fx.GraphModule) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Split a converted graph into the analog-input part (run once) and one time step.

    The step graph takes the static values that the spiking part uses as its inputs.
    """
    temporal: set[fx.Node] = set()
    for node in net.graph.nodes:
        module = net.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, GraphNeuron) or any(a in temporal for a in node.all_input_nodes):
            temporal.add(node)
    static_nodes = [n for n in net.graph.nodes if n not in temporal and n.op not in ("output", "get_attr")]
    boundary = [n for n in static_nodes if any(u in temporal or u.op == "output" for u in n.users)]

    static_graph, env = fx.Graph(), {}
    for node in net.graph.nodes:
        if node.op == "get_attr" or node in static_nodes:
            env[node] = static_graph.node_copy(node, env.__getitem__)
    static_graph.output(tuple(env[n] for n in boundary))

    step_graph, step_env = fx.Graph(), {}
    for node in boundary:
        step_env[node] = step_graph.placeholder(node.name)
    for node in net.graph.nodes:
        if node.op == "get_attr":
            step_env[node] = step_graph.node_copy(node, step_env.__getitem__)
        elif node in temporal or node.op == "output":
            step_env[node] = step_graph.node_copy(node, step_env.__getitem__)
    static_gm, step_gm = fx.GraphModule(net, static_graph), fx.GraphModule(net, step_graph)
    return static_gm, step_gm


def _freeze_quantized_weights(model: nn.Module) -> None:
    """QuantConv2d / QuantLinear -> plain layers holding their quantized weights."""
    for name, m in list(model.named_modules()):
        if isinstance(m, (QuantConv2d, QuantLinear)):
            if isinstance(m, QuantConv2d):
                new = nn.Conv2d(
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size,
                    m.stride,
                    m.padding,
                    m.dilation,
                    m.groups,
                    m.bias is not None,
                    m.padding_mode,
                )
            else:
                new = nn.Linear(m.in_features, m.out_features, m.bias is not None)
            new = new.to(device=m.weight.device, dtype=m.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(m.quantized_weight())
                if m.bias is not None:
                    new.bias.copy_(m.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)


def _fold_batch_norms(gm: fx.GraphModule) -> None:
    """Fold eval batch norm into the conv / linear layer before it (exact, saves T passes)."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        prev = node.args[0]
        if not (
            isinstance(prev, fx.Node)
            and prev.op == "call_module"
            and len(prev.users) == 1
            and calls[prev.target] == 1
            and calls[node.target] == 1
        ):
            continue
        layer, bn = gm.get_submodule(prev.target), gm.get_submodule(node.target)
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        if type(layer) is nn.Conv2d or type(layer) is nn.Conv1d or type(layer) is nn.Conv3d:
            fused = fuse_conv_bn_eval(layer.eval(), bn.eval())
        elif type(layer) is nn.Linear and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(layer.eval(), bn.eval())
        else:
            continue
        parent, _, child = prev.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, child, fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()


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


def _static_linear_modules(net: fx.GraphModule) -> frozenset[str]:
    """Conv / linear modules that run on the analog input (before any neuron)."""
    temporal: set[fx.Node] = set()
    static: set[str] = set()
    for node in net.graph.nodes:
        module = net.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, GraphNeuron) or any(a in temporal for a in node.all_input_nodes):
            temporal.add(node)
        elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            static.add(node.target)
    return frozenset(static)
