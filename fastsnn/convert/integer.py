"""Exact integer synapses: convs fed by spikes run as int8 x int8 -> int32 GEMMs."""

from __future__ import annotations

import logging

import torch
from torch import fx, nn
from torch.nn import functional as F

from .. import kernel_choice
from ..kernel_choice import pow2_ceil
from .runtime import GraphNeuron

logger = logging.getLogger(__name__)


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
    checked again whenever the weight tensor is modified), or for unsupported settings; and for
    good, with a warning naming the layer, when the device's int8 GEMM refuses the layer's shapes.
    Under ``integer_kernels="auto"`` each call runs the kernel measured faster for the layer's
    class on this machine (:func:`fastsnn.kernel_choice.run_integer`).
    """

    def _unit(self) -> float:
        """Input value per integer step: the feeding neurons' threshold / the pooling area."""
        neuron, pool = self._spike_source
        return float(neuron.threshold.item()) / pool

    def _integer_weights(self):
        version = (*self._weight_version(), self.weight.device, self._unit())
        cached = getattr(self, "_int_cache", None)  # (version, weights): one attribute, replaced at once
        if cached is None or cached[0] != version:
            grid = None
            if (
                self.groups == 1
                and self.padding_mode == "zeros"
                and isinstance(self.padding, tuple)
                and self.weight.dtype == torch.float32
                and self.weight.device.type in ("cpu", "cuda")
            ):
                grid = integer_grid(self.weight)
            if grid is not None and not getattr(self, "_int_mm_failed", False):
                ints, scale = grid
                kh, kw = self.kernel_size
                w = ints.permute(2, 3, 1, 0).reshape(kh * kw * self.in_channels, self.out_channels).contiguous()
                bias = self.bias.detach().float() if self.bias is not None else torch.zeros_like(scale)
                grid = (w, (scale * version[-1]).to(self.weight.device), bias)
            else:
                grid = None
            cached = self._int_cache = (version, grid)
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.dim() != 4:
            return super().forward(x)
        if getattr(self, "_auto", False):  # integer_kernels="auto": measured per machine and conv class
            if getattr(self, "_off_grid", None) == self._weight_version():
                return super().forward(x)
            return kernel_choice.run_integer(super().forward, self._integer_or_none, self._class_key(x), _class_name, x)
        cache = self._integer_weights()
        if cache is None:
            return super().forward(x)
        try:
            return self._integer_forward(x, cache)
        except RuntimeError as err:  # a shape / layout this device's int8 GEMM does not take: stay float
            self._int_mm_failed, self._int_cache = True, None
            logger.warning(
                "SpikeConv2d %r: the int8 GEMM (torch._int_mm) failed: %s. This layer runs the float "
                "convolution from now on (same outputs, without the integer speed-up).",
                getattr(self, "_graph_name", "?"),
                err,
            )
            return super().forward(x)

    def _weight_version(self) -> tuple:
        return self.weight._version, self.weight.data_ptr()

    def _integer_or_none(self, x: torch.Tensor) -> torch.Tensor | None:
        """The int8 path, or None (remembered until the weights change) where the weights are off the grid."""
        cache = self._integer_weights()
        if cache is None:
            self._off_grid = self._weight_version()
            return None
        return self._integer_forward(x, cache)

    def _class_key(self, x: torch.Tensor) -> tuple:
        rows = x.shape[0] * x.shape[2] * x.shape[3]
        spikes = self._spike_source[1] == 1
        return (x.device, self.in_channels, self.out_channels, self.kernel_size, self.stride, spikes, pow2_ceil(rows))

    def _integer_forward(self, x: torch.Tensor, cache) -> torch.Tensor:
        """The exact int8 x int8 -> int32 GEMM on an im2col of the input (raises if the device refuses it)."""
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
        y = torch._int_mm(cols.reshape(B * Ho * Wo, -1), w)
        out = torch.addcmul(bias, y.to(torch.float32), scale)
        return out.view(B, Ho, Wo, self.out_channels).permute(0, 3, 1, 2)  # channels-last memory


def _class_name(key: tuple) -> str:
    """A conv class's name in the kernel choice cache (:mod:`fastsnn.kernel_choice`)."""
    device, cin, cout, (kh, kw), (sh, sw), spikes, rows = key
    fed = "spikes" if spikes else "pooled spikes"
    return f"{device.type} conv {kh}x{kw}/{sh}x{sw} {cin}->{cout} on {fed}, rows~{rows}"


# Narrower convs stay float32: with few input channels the im2col and the int8 conversions cost
# more than the int8 GEMM saves (the threshold comes from benchmarks/speed.py).
MIN_INTEGER_CHANNELS = 48


def _use_integer_kernels(gm: fx.GraphModule, auto: bool = False) -> list[str]:
    """Turn the convs fed by one neuron layer (directly or through a k x k average pool) into
    :class:`SpikeConv2d`; returns their names. Their weights are checked at run time.

    ``auto`` (``integer_kernels="auto"``): every such conv, whatever its width; each call's kernel
    is chosen by measuring (:mod:`fastsnn.kernel_choice`), and the weights are checked for an
    integer grid only when the int8 kernel is to be measured or used.
    """
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
        if not auto and gm.get_submodule(node.target).in_channels < MIN_INTEGER_CHANNELS:
            continue  # im2col and conversions cost more than the int8 GEMM saves
        if len([n for n in gm.graph.nodes if n.op == "call_module" and n.target == node.target]) != 1:
            continue
        conv = gm.get_submodule(node.target)
        conv.__class__ = SpikeConv2d
        # a plain attribute, not a submodule: the neuron stays where it is in the module tree
        object.__setattr__(conv, "_spike_source", (gm.get_submodule(src.target).neuron, pool))
        conv._graph_name = node.target  # for the log, should its int8 GEMM fail
        conv._auto = auto
        done.append(node.target)
    return done
