"""Exact integer synapses: convs fed by spikes run as int8 x int8 -> int32 GEMMs."""

from __future__ import annotations

import logging

import torch
from torch import fx, nn
from torch.nn import functional as F

from ..planner import kernels
from ..planner.kernels import pow2_ceil
from .modules import GraphNeuron

logger = logging.getLogger(__name__)


def integer_grid(weight: torch.Tensor, max_int: int = 127, max_divisor: int = 64, tol: float = 1e-4):
    """``(ints, scale)`` with ``weight ~= ints * scale[:, None, ...]`` per output channel, or None.

    ``ints`` is int8 with ``|ints| <= max_int``; found when every weight of a channel is an
    integer multiple (within ``tol`` of the step) of one step, the channel's smallest non-zero
    magnitude divided by ``1..max_divisor``. That holds for weights quantized to few levels
    (uniform or APoT, :class:`~fastsnn.quantizers.WeightQuantizer`), also after batch norm was
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

    Its input holds multiples of ``unit`` (``threshold`` of ``source`` for spikes, ``threshold /
    pool`` after a k x k average pooling of ``pool = k*k`` values), so with integer-grid weights
    (``integer_grid``: quantized weights, batch norm folded in) every output is ``scale[c] * unit *
    (integer sum) + bias``. The integer sum is computed exactly, int8 x int8 -> int32
    (``torch._int_mm`` on an im2col of the int8 input), instead of a float32 convolution: the same
    value up to float rounding (the float path rounds at every addition, this one once).

    ``kernel`` says which kernel the layer runs: ``"integer"``, ``"float"`` or ``"auto"`` (per
    call, the kernel measured faster for the layer's class on this machine:
    :func:`fastsnn.planner.kernels.run_integer`). The float convolution runs whatever ``kernel``
    says when gradients are enabled (layer-wise fine-tuning evaluates the layer on rates) and
    while the weights are off the integer grid (e.g. after fine-tuning changed them; checked
    again whenever the weight tensor is modified). When the device's int8 GEMM refuses the
    layer's shapes, ``kernel`` becomes ``"float"`` for good, with a warning naming the layer.
    """

    KERNELS = ("integer", "float", "auto")

    def __init__(self, conv: nn.Conv2d, source: nn.Module, pool: int, kernel: str, name: str):
        if kernel not in self.KERNELS:
            raise ValueError(f"kernel must be one of {self.KERNELS}, got {kernel!r}")
        nn.Module.__init__(self)
        self.__dict__.update({k: v for k, v in conv.__dict__.items() if k != "_modules"})  # same parameters
        self._modules = {}
        self.kernel = kernel
        self.pool = pool
        self.name = name  # its name in the graph, for the log
        object.__setattr__(self, "source", source)  # a plain attribute: the neuron stays where it is
        self._int_cache: tuple | None = None  # (weight version, integer weights or None)
        self._off_grid: tuple | None = None  # kernel "auto": the weight version found off the grid

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_int_cache"] = None  # derived from the weights: rebuilt when needed, not copied
        return state

    def _unit(self) -> float:
        """Input value per integer step: the feeding neurons' threshold / the pooling area."""
        return float(self.source.threshold.item()) / self.pool

    def _weight_version(self) -> tuple:
        return self.weight._version, self.weight.data_ptr()

    def _integer_weights(self):
        """``(weights, scale, bias)`` of the integer GEMM, or None where the weights are off the grid."""
        version = (*self._weight_version(), self.weight.device, self._unit())
        if self._int_cache is None or self._int_cache[0] != version:
            self._int_cache = (version, self._grid(version[-1]))  # one attribute, replaced at once
        return self._int_cache[1]

    def _grid(self, unit: float):
        supported = (
            self.groups == 1
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
            and self.weight.dtype == torch.float32
            and self.weight.device.type in ("cpu", "cuda")
        )
        grid = integer_grid(self.weight) if supported else None
        if grid is None:
            return None
        ints, scale = grid
        kh, kw = self.kernel_size
        w = ints.permute(2, 3, 1, 0).reshape(kh * kw * self.in_channels, self.out_channels).contiguous()
        bias = self.bias.detach().float() if self.bias is not None else torch.zeros_like(scale)
        return w, (scale * unit).to(self.weight.device), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "float" or torch.is_grad_enabled() or x.dtype != torch.float32 or x.dim() != 4:
            return super().forward(x)
        if self.kernel == "auto":
            if self._off_grid == self._weight_version():
                return super().forward(x)
            return kernels.run_integer(super().forward, self._integer_or_none, self._class_key(x), _class_name, x)
        cache = self._integer_weights()
        if cache is None:
            return super().forward(x)
        try:
            return self._integer_forward(x, cache)
        except RuntimeError as err:  # a shape / layout this device's int8 GEMM does not take: stay float
            self.kernel, self._int_cache = "float", None
            logger.warning(
                "SpikeConv2d %r: the int8 GEMM (torch._int_mm) failed: %s. This layer runs the float "
                "convolution from now on (same outputs, without the integer speed-up).",
                self.name,
                err,
            )
            return super().forward(x)

    def _integer_or_none(self, x: torch.Tensor) -> torch.Tensor | None:
        """The int8 path, or None (remembered until the weights change) where the weights are off the grid."""
        cache = self._integer_weights()
        if cache is None:
            self._off_grid = self._weight_version()
            return None
        return self._integer_forward(x, cache)

    def _class_key(self, x: torch.Tensor) -> tuple:
        rows = x.shape[0] * x.shape[2] * x.shape[3]
        spikes = self.pool == 1
        return (x.device, self.in_channels, self.out_channels, self.kernel_size, self.stride, spikes, pow2_ceil(rows))

    def _integer_forward(self, x: torch.Tensor, cache) -> torch.Tensor:
        """The exact int8 x int8 -> int32 GEMM on an im2col of the input (raises if the device refuses it)."""
        w, scale, bias = cache
        B, C, H, W = x.shape
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = self.kernel_size, self.stride, self.dilation, self.padding
        Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        xh = x.permute(0, 2, 3, 1)  # NHWC
        if self.pool == 1:  # plain spikes: values exactly in {-unit, 0, +unit}
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
        y = torch._int_mm(cols.reshape(B * Ho * Wo, -1), w)
        out = torch.addcmul(bias, y.to(torch.float32), scale)
        return out.view(B, Ho, Wo, self.out_channels).permute(0, 3, 1, 2)  # channels-last memory

    def for_estimates(self) -> None:
        """In a meta-device copy for memory estimates: the float convolution (it runs on shapes alone)."""
        self.kernel = "float"


def _class_name(key: tuple) -> str:
    """A conv class's name in the kernel choice cache (:mod:`fastsnn.planner.kernels`)."""
    device, cin, cout, (kh, kw), (sh, sw), spikes, rows = key
    fed = "spikes" if spikes else "pooled spikes"
    return f"{device.type} conv {kh}x{kw}/{sh}x{sw} {cin}->{cout} on {fed}, rows~{rows}"


# With integer_kernels=True, narrower convs stay float32: with few input channels the im2col and the
# int8 conversions cost more than the int8 GEMM saves (measured by benchmarks/speed.py).
MIN_INTEGER_CHANNELS = 48


def use_integer_kernels(gm: fx.GraphModule, kernel: str) -> list[str]:
    """Replace the convs fed by one neuron layer (directly or through a k x k average pool) with
    :class:`SpikeConv2d` s running ``kernel``; returns their names. Their weights are checked at run time.

    ``kernel="auto"`` (``integer_kernels="auto"``): every such conv, whatever its width; each call's
    kernel is chosen by measuring (:mod:`fastsnn.planner.kernels`). ``"integer"``: those with at
    least ``MIN_INTEGER_CHANNELS`` input channels.
    """
    done = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or type(gm.get_submodule(node.target)) is not nn.Conv2d:
            continue
        source, pool = _spike_source(gm, node)
        conv = gm.get_submodule(node.target)
        if source is None or (kernel != "auto" and conv.in_channels < MIN_INTEGER_CHANNELS):
            continue
        if len([n for n in gm.graph.nodes if n.op == "call_module" and n.target == node.target]) != 1:
            continue
        parent, _, leaf = node.target.rpartition(".")
        setattr(gm.get_submodule(parent), leaf, SpikeConv2d(conv, source.neuron, pool, kernel, node.target))
        done.append(node.target)
    return done


def _spike_source(gm: fx.GraphModule, conv: fx.Node) -> tuple[GraphNeuron | None, int]:
    """The neuron layer feeding ``conv`` (directly or through a k x k average pool) and the pool's area."""
    src, pool = conv.args[0], 1
    if isinstance(src, fx.Node) and src.op == "call_module":
        m = gm.get_submodule(src.target)
        if isinstance(m, nn.AvgPool2d) and m.padding in (0, (0, 0)) and m.divisor_override is None:
            k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
            pool, src = k[0] * k[1], src.args[0]
    if isinstance(src, fx.Node) and src.op == "call_module":
        module = gm.get_submodule(src.target)
        if isinstance(module, GraphNeuron):
            return module, pool
    return None, pool
