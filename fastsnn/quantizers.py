"""Quantized ANN building blocks (docs/method.md §2).

* :class:`QuantReLU` -- a ReLU clipped at a learnable ``alpha`` and quantized uniformly to
  ``2**bits`` levels. It is the activation that the converter turns into an IF neuron
  with threshold ``alpha`` and ``T = 2**bits - 1`` time steps.
* :class:`QuantConv2d` / :class:`QuantLinear` -- conv / linear layers whose weights are
  quantized on the fly (uniform or additive powers-of-two, learnable ``alpha_w``; or
  8-bit max-scaled for the first and last layer).

:func:`fastsnn.quantize.quantize_model` puts them into a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import torch
from torch import nn
from torch.nn import functional as F

WEIGHT_QUANT_MODES = ("apot", "uniform", "max")


class _QuantReLUFunction(torch.autograd.Function):
    """Forward: ``alpha * round(clamp(relu(x)/alpha, 0, 1) * L) / L`` with ``L = 2**b - 1``.

    Backward (docs/method.md §2): straight-through where ``0 < x/alpha <= 1``, zero elsewhere;
    ``d y / d alpha`` is 1 where ``x/alpha > 1``, ``q - x/alpha`` inside the range and 0
    where the ReLU is off (``x <= 0``: the output does not depend on alpha there).
    """

    @staticmethod
    def forward(ctx, x, alpha, levels: int):
        u = x / alpha
        q = u.clamp(0.0, 1.0).mul_(levels).round_().div_(levels)  # in place: fewer allocations
        ctx.save_for_backward(u, q)
        return q * alpha

    @staticmethod
    def backward(ctx, grad_out):
        u, q = ctx.saved_tensors
        grad_x = grad_out * ((u > 0) & (u <= 1))
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            # q - clamp(u, 0, 1) is q - u inside the range and 0 outside; (u > 1) adds the 1 above it
            dalpha = (q - u.clamp(0.0, 1.0)).add_(u > 1)
            grad_alpha = (grad_out * dalpha).sum().reshape(1)
        return grad_x, grad_alpha, None


def _fused_forward(x, alpha, levels: float):
    return torch.round((x / alpha).clamp(0.0, 1.0) * levels) / levels * alpha


def _fused_backward(grad_out, x, alpha, levels: float):
    u = x / alpha
    q = torch.round(u.clamp(0.0, 1.0) * levels) / levels
    grad_x = grad_out * ((u > 0) & (u <= 1))
    grad_alpha = (grad_out * (q - u.clamp(0.0, 1.0) + (u > 1))).sum().reshape(1)
    return grad_x, grad_alpha


_fused_kernels: dict = {}


def _fused(fn):
    """``fn`` compiled by torch.compile into one kernel (once per process, any shape)."""
    if fn not in _fused_kernels:
        _fused_kernels[fn] = torch.compile(fn, dynamic=True)
    return _fused_kernels[fn]


class _FusedQuantReLUFunction(torch.autograd.Function):
    """:class:`_QuantReLUFunction` with forward and backward each fused into one kernel.

    The eager version makes ~16 passes over the activation per training step; fused, it
    reads ``x`` once forward and once backward (recomputing ``q`` instead of storing it),
    which makes the quantized ANN's training step almost as fast as the float one's.
    """

    @staticmethod
    def forward(ctx, x, alpha, levels: int):
        ctx.levels = float(levels)
        ctx.save_for_backward(x, alpha)
        return _fused(_fused_forward)(x, alpha, ctx.levels)

    @staticmethod
    def backward(ctx, grad_out):
        x, alpha = ctx.saved_tensors
        grad_x, grad_alpha = _fused(_fused_backward)(grad_out.contiguous(), x, alpha, ctx.levels)
        return grad_x, (grad_alpha if ctx.needs_input_grad[1] else None), None


def quant_relu(x: torch.Tensor, alpha: torch.Tensor, bits: int, fused: bool = False) -> torch.Tensor:
    """Functional form of :class:`QuantReLU`."""
    fn = _FusedQuantReLUFunction if fused else _QuantReLUFunction
    return fn.apply(x, alpha, 2**bits - 1)


class QuantReLU(nn.Module):
    """ReLU clipped at a learnable ``alpha`` and quantized to ``2**bits`` uniform levels.

    ``bits`` can be changed at any time (``module.bits = 3``); ``alpha`` keeps its value.
    ``bits=None`` makes the module a plain clipped ReLU (``clamp(x, 0, alpha)``), useful to
    pre-train the clip values before quantizing. ``fused=True`` runs forward and backward as
    torch.compile-d kernels (same values; compiles once per process, then several times
    faster than the eager ops on CPU and GPU).
    """

    def __init__(self, bits: int | None = 4, alpha_init: float = 8.0, fused: bool = False):
        super().__init__()
        if bits is not None and bits < 1:
            raise ValueError(f"QuantReLU needs bits >= 1 (got {bits})")
        if alpha_init <= 0:
            raise ValueError(f"QuantReLU needs alpha_init > 0 (got {alpha_init})")
        self.bits = bits
        self.fused = fused
        self.alpha = nn.Parameter(torch.tensor([float(alpha_init)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return torch.minimum(F.relu(x), self.alpha)
        return quant_relu(x, self.alpha, self.bits, self.fused)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={self.alpha.item():.4g}"


# --------------------------------------------------------------------------- weights


@cache
def apot_levels(magnitude_bits: int) -> tuple[float, ...]:
    """Additive powers-of-two magnitude levels in [0, 1] for ``magnitude_bits`` bits.

    The magnitude is a sum of ``n = ceil(k/2)`` terms; term ``i`` (2 bits, the last one 1
    bit when ``k`` is odd) is 0 or one of the powers ``2**-(i + 1 + n*j)``. This gives the
    APoT levels of Li et al. (ICLR 2020) for k = 2 and 4 and a like-minded set otherwise;
    the result is normalised so that the largest level is 1.
    """
    k = magnitude_bits
    if k < 1:
        raise ValueError(f"APoT needs at least 1 magnitude bit (got {k})")
    n = math.ceil(k / 2)
    term_bits = [2] * (k // 2) + [1] * (k % 2)
    sums = {0.0}
    for i, b in enumerate(term_bits):
        term = [0.0] + [2.0 ** -(i + 1 + n * j) for j in range(2**b - 1)]
        sums = {s + t for s in sums for t in term}
    top = max(sums)
    return tuple(sorted(s / top for s in sums))


def uniform_levels(magnitude_bits: int) -> tuple[float, ...]:
    steps = 2**magnitude_bits - 1
    return tuple(i / steps for i in range(steps + 1))


def project_to_levels(u: torch.Tensor, levels: Sequence[float]) -> torch.Tensor:
    """Nearest level (``levels`` sorted, in [0, 1]) for every element of ``u`` in [0, 1].

    One compare-and-add pass per mid-point between levels (at most 2**bits - 1 of them): no
    [numel, L] distance tensor, and on CPU several times faster than ``bucketize`` + gather,
    which took half of the weight quantizer's time.
    """
    levels = [float(v) for v in levels]
    q = torch.full_like(u, levels[0])
    for lo, hi in zip(levels[:-1], levels[1:]):
        q.add_((u > (lo + hi) / 2).to(u.dtype), alpha=hi - lo)
    return q


class _WeightQuantFunction(torch.autograd.Function):
    """Signed weight quantizer: ``alpha * sign(u) * P(|clamp(u, -1, 1)|)``, ``u = w/alpha``.

    Straight-through for the weight; ``d/d alpha`` is ``sign(u)`` where ``|u| > 1`` and
    ``q - u`` inside, the same clip rule as the activations.
    """

    @staticmethod
    def forward(ctx, w, alpha, levels):
        u = w / alpha
        c = u.clamp(-1.0, 1.0)
        q = project_to_levels(c.abs(), levels).copysign_(c)
        ctx.save_for_backward(u, q)
        return q * alpha

    @staticmethod
    def backward(ctx, grad_out):
        u, q = ctx.saved_tensors
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            outside = u.abs() > 1
            dalpha = torch.where(outside, torch.sign(u), q - u)
            grad_alpha = (grad_out * dalpha).sum().reshape(1)
        return grad_out, grad_alpha, None


class _MaxScaledFunction(torch.autograd.Function):
    """Symmetric uniform quantizer scaled by ``max|w|`` (first / last layer), straight-through."""

    @staticmethod
    def forward(ctx, w, bits):
        steps = 2 ** (bits - 1) - 1
        scale = w.detach().abs().max().clamp_min(1e-12)
        return torch.round(w / scale * steps) / steps * scale

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out, None


class WeightQuantizer(nn.Module):
    """Quantizes a weight tensor to ``bits`` bits (sign + ``bits - 1`` magnitude bits).

    ``mode="apot"`` / ``"uniform"`` standardise the weight (``(w - mean) / std``) and clip
    it at a learnable ``alpha_w`` (docs/method.md §2); ``mode="max"`` is the plain 8-bit style
    max-scaled uniform quantizer used for the first and last layer. ``bits=None`` disables
    quantization (full precision).
    """

    def __init__(self, bits: int | None, mode: str = "apot", alpha_init: float = 3.0):
        super().__init__()
        if mode not in WEIGHT_QUANT_MODES:
            raise ValueError(f"weight quantizer mode must be one of {WEIGHT_QUANT_MODES}, got {mode!r}")
        self.mode = mode
        # max-scaled mode has no learnable clip (an unused parameter would upset DDP)
        self.alpha = nn.Parameter(torch.tensor([float(alpha_init)])) if mode != "max" else None
        self.bits = bits

    @property
    def bits(self) -> int | None:
        return self._bits

    @bits.setter
    def bits(self, bits: int | None) -> None:
        if bits is not None and bits < 2:
            raise ValueError(f"weight quantization needs at least 2 bits (sign + magnitude), got {bits}")
        self._bits = bits
        if bits is not None and self.mode != "max":
            make = apot_levels if self.mode == "apot" else uniform_levels
            self.levels = make(bits - 1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return w
        if self.mode == "max":
            return _MaxScaledFunction.apply(w, self.bits)
        std = w.std().clamp_min(1e-8)
        w = (w - w.mean()) / std
        return _WeightQuantFunction.apply(w, self.alpha, self.levels)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode!r}"


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight goes through a :class:`WeightQuantizer` on every forward."""

    def __init__(self, *args, weight_bits: int | None = None, weight_quant: str = "apot", **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quantizer = WeightQuantizer(weight_bits, weight_quant)

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose weight goes through a :class:`WeightQuantizer` on every forward."""

    def __init__(self, *args, weight_bits: int | None = None, weight_quant: str = "apot", **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quantizer = WeightQuantizer(weight_bits, weight_quant)

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


def activation_bits(model: nn.Module) -> set[int | None]:
    """The set of bit widths of the model's QuantReLU modules (empty if none)."""
    return {m.bits for m in model.modules() if isinstance(m, QuantReLU)}
