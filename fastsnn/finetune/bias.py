"""Bias correction of a layer (docs/method.md §4.2): no gradient, a few batches.

The mean of a layer's error, per channel, is the part of its error that a constant input
current removes: a bias ``b`` added to the neuron's input at every step raises its potential by
``b`` per step, so its output rate by ``b`` wherever it neither stays silent nor saturates. The
correction adds ``mean(target - r_out)`` per channel, over the places where either is non-zero
(where both are silent a shift changes nothing: counting them would dilute it), to the one bias
of the layer's synaptic part that reaches the neuron with a gain of one (a conv's or a linear
layer's bias with batch norm folded in, or a batch norm's shift).
"""

from __future__ import annotations

import logging

import torch
from torch import fx, nn

from .graph import _eval_rates, _Tunable
from .ranks import Ranks

logger = logging.getLogger(__name__)


@torch.no_grad()
def _unit_bias(net: fx.GraphModule, t: _Tunable, feeds: dict[str, torch.Tensor]) -> nn.Parameter | None:
    """The layer's per-channel parameter that shifts the neuron's input one for one, if any."""
    before = _eval_rates(net, t.graph, feeds)
    channels = before.shape[1]
    for p in t.params:
        if p.dim() != 1 or p.numel() != channels:
            continue
        p.add_(1.0)
        shift = _eval_rates(net, t.graph, feeds) - before
        p.sub_(1.0)
        if torch.allclose(shift, torch.ones_like(shift), atol=1e-3):
            return p
    return None


@torch.no_grad()
def correct_bias(net: fx.GraphModule, t: _Tunable, data, ranks: Ranks) -> None:
    """Shift layer ``t``'s bias by its mean error per channel over ``data.measured(t)``, summed
    over the processes; a log line instead when the layer has no such bias."""
    total, bias = None, None
    for target, feeds, r_out in data.measured(t):
        bias = bias if bias is not None else _unit_bias(net, t, feeds)  # found on the first batch
        if bias is None:
            logger.info("bias correction: %s has no bias that reaches its neuron one for one; skipped", t.layer.path)
            return
        dims = [d for d in range(target.dim()) if d != 1]  # all but the channels
        active = (target != 0) | (r_out != 0)  # where the two are silent, a shift changes nothing
        error = torch.stack([(target - r_out).double().sum(dims), active.double().sum(dims)])
        total = error if total is None else total + error
    if total is not None:
        error, count = torch.tensor(ranks.sum(*total.flatten().tolist()), dtype=torch.float64).view(2, -1)
        bias.add_((error / count.clamp(min=1)).to(bias))
