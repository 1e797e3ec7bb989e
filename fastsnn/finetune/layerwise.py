"""Layer-wise fine-tuning of a converted SNN (docs/method.md §4), for any converted model.

For each spiking layer ``l`` after the first (whose input is the analog image and which
is exact already), in order:

1. the quantized ANN (fixed, eval mode) gives the target: its activation at layer ``l``;
2. the SNN, tuned up to ``l-1``, runs up to layer ``l``: the spike trains into ``l`` give
   the input rates ``r_in`` and layer ``l``'s own spikes the output rate ``r_out``;
3. layer ``l``'s synaptic part (every op between the previous neurons and neuron ``l``:
   conv, folded batch norm, residual add, ...) computes ``y = clamp(f_l(r_in), 0, theta)``
   with gradients; the prediction ``y + (r_out - y).detach()`` has the SNN's value and the
   ANN's gradient;
4. SGD on MSE(prediction, target) updates the SNN's own weights of that layer
   (thresholds frozen), so the SNN is tuned in place.

The synaptic parts come from :mod:`.graph`; the batches of step 2, simulated from the input
for every layer or carried from layer to layer, from :mod:`.sources`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn import functional as F

from ..convert import SpikingModel, trace
from .bias import correct_bias
from .graph import _eval_rates, _Tunable, _tunable_layers
from .ranks import Ranks
from .sources import Observation, _data_source

logger = logging.getLogger(__name__)


def _input_of(batch):
    return batch[0] if isinstance(batch, (list, tuple)) else batch


@dataclass
class LayerReport:
    """What happened to one layer: its MSE to the ANN before / after, and whether it was kept."""

    index: int  # position in SpikingModel.layers
    name: str
    path: str  # the ANN module path of its activation
    mse_before: float
    mse_after: float  # after the tuning attempt; when not kept the layer is back at mse_before
    train_loss: float  # NaN without epochs (bias correction alone)
    kept: bool = True
    score: float | None = None  # validate(snn) after this layer, when a validate callable is given


class _Judge:
    """Whether an update (a layer's, or an epoch of the network-level phase) stays: its measured
    objective did not rise (``keep_if_better``) and the ``validate`` score did not drop below the
    best so far."""

    def __init__(self, snn: SpikingModel, validate, keep_if_better: bool, ranks: Ranks, best: float | None = None):
        self.snn, self.validate, self.keep_if_better, self.ranks = snn, validate, keep_if_better, ranks
        if best is None and validate is not None:
            best = validate(snn)  # the score to beat (given: a resumed run's best so far)
        self.best = best

    def __call__(self, report, before: float, after: float) -> None:
        """Set ``report.kept`` (and ``report.score``) from the measured objective ``before`` / ``after``."""
        worse = not after <= before  # a NaN counts as worse
        report.kept = not (self.keep_if_better and worse)
        if report.kept and self.validate is not None:
            report.score = self.validate(self.snn)
            report.kept = report.score >= self.best
            self.best = max(self.best, report.score)
        report.kept = self.ranks.first(report.kept)  # every process keeps or undoes alike


def _mse(observations: Iterable[Observation], ranks: Ranks) -> float:
    total, count = 0.0, 0
    for target, _, r_out in observations:
        total += F.mse_loss(r_out, target, reduction="sum").item()
        count += target.numel()
    total, count = ranks.sum(total, count)
    return total / max(count, 1)


def _train(net: fx.GraphModule, t: _Tunable, data, epochs: int, sgd: dict, ranks: Ranks) -> float:
    """SGD on the layer's weights; returns the mean training loss."""
    for p in t.params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(t.params, **sgd)
    loss_sum, steps = 0.0, 0
    for epoch in range(epochs):
        for target, feeds, r_out in data.training(t, f"layer {t.index} {t.layer.path} ({epoch + 1}/{epochs})"):
            y = torch.minimum(F.relu(_eval_rates(net, t.graph, feeds)), t.theta)
            loss = F.mse_loss(y + (r_out - y).detach(), target)  # SNN value, ANN gradient
            opt.zero_grad(set_to_none=True)
            loss.backward()
            ranks.average_gradients(t.params)
            opt.step()
            loss_sum += loss.item()
            steps += 1
    loss_sum, steps = ranks.sum(loss_sum, steps)
    return loss_sum / max(steps, 1)


def _tune_layer(
    net: fx.GraphModule, t: _Tunable, data, epochs: int, sgd: dict, judge: _Judge, bias_correction: bool = False
) -> LayerReport:
    """Measure, train (and correct the bias), measure again; undo the update when the judge says so."""
    saved = [p.detach().clone() for p in t.params]
    ranks = judge.ranks
    mse_before = _mse(data.measured(t), ranks)
    loss = _train(net, t, data, epochs, sgd, ranks) if epochs else float("nan")
    if bias_correction:
        correct_bias(net, t, data, ranks)
    report = LayerReport(t.index, t.layer.name, t.layer.path, mse_before, _mse(data.measured(t), ranks), loss)
    judge(report, report.mse_before, report.mse_after)
    if not report.kept:
        with torch.no_grad():
            for p, old in zip(t.params, saved):
                p.copy_(old)
    for p in t.params:
        p.requires_grad_(False)
        p.grad = None
    return report


def layerwise_finetune(
    qmodel: nn.Module,
    snn: SpikingModel,
    dataloader: Iterable,
    epochs_per_layer: int = 1,
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    validate: Callable[[SpikingModel], float] | None = None,
    on_layer_end: Callable[[LayerReport], None] | None = None,
    start_layer: int = 0,
    input_fn: Callable = _input_of,
    measure_batches: int = 4,
    keep_if_better: bool = True,
    progress: Callable[[Iterable, str], Iterable] | None = None,
    cache: str = "auto",
    cache_budget: float | None = None,
    cache_dir: str | None = None,
    distributed: bool = False,
    bias_correction: bool = False,
) -> list[LayerReport]:
    """Fine-tune ``snn`` (converted from ``qmodel``) layer by layer, in place (docs/method.md §4).

    Args:
        qmodel: the quantized ANN the SNN was converted from; the fixed teacher (not changed).
        snn: the converted model; its weights are updated in place. Fine-tuning runs its
            multistep graph whatever ``snn.mode`` and ``snn.chunk_size`` say.
        dataloader: yields batches; ``input_fn(batch)`` gives the input images (default: the
            first element of a tuple/list batch, or the batch itself).
        epochs_per_layer, lr, momentum, weight_decay: SGD settings (the paper's defaults).
        validate: optional ``validate(snn) -> score`` (higher is better). When given, a
            layer's update is kept only if the score does not drop; otherwise it is undone.
        on_layer_end: called with a :class:`LayerReport` after each layer (logging, progress,
            checkpoints).
        start_layer: index into the tunable layers to start from (resume after a checkpoint).
        measure_batches: the layer's MSE to the ANN is measured before and after tuning on
            the first this-many batches of ``dataloader``.
        keep_if_better: undo a layer's update when its measured MSE went up. The surrogate
            gradient cannot see spike-timing errors, so in a layer whose error is mostly
            timing (the second layer: its input is exact) an update can make things worse.
        progress: optional wrapper ``progress(iterable, description)`` (e.g. a tqdm factory)
            around each layer's pass over the data.
        cache: where the values carried from layer to layer live (cost linear in depth; one
            pass of ``dataloader`` is then used for every layer): ``"memory"``, ``"disk"``
            (files in ``cache_dir``, read back batch by batch), ``"off"`` (the SNN simulated
            from the input for every layer, a fresh pass each: quadratic in depth), or
            ``"auto"``: memory if the values fit ``cache_budget``, else disk if ``cache_dir`` is
            given and they fit its free space, else off. The choice, its reason and the plan
            (layers, batches, bytes, expected SNN passes) are logged once before the first layer.
        cache_budget: bytes the carried values may take on the SNN's device (estimated by a dry
            run on the first batch); default: half of the device's free memory.
        cache_dir: the directory for ``cache="disk"`` (a folder of its own inside, removed at the
            end); an unwritable one, or one without the space, stops before the first layer.
        distributed: every process of the default process group calls this with its own shard
            of the batches (the same number of batches each): gradients are averaged every step,
            measurements summed, keep / undo decisions taken alike (:mod:`.ranks`); all
            processes end with the same weights.
        bias_correction: after a layer's epochs, add its mean error per channel on the
            measurement batches to its bias (:mod:`.bias`, §4.2); with ``epochs_per_layer=0``
            that is all a layer gets (a calibration without gradients: a few batches suffice).

    Returns one :class:`LayerReport` per tuned layer (the first layers, fed by the analog
    input, are exact and are skipped, as is the analog output layer, which has no neuron).
    """
    device = next(snn.parameters()).device
    ann_gm = trace(qmodel)
    was_training = qmodel.training
    qmodel.eval()
    snn.eval()
    tunables = _tunable_layers(snn)
    ranks = Ranks(distributed, device)
    args = (dataloader, input_fn, device, measure_batches, progress, cache, cache_budget, cache_dir, ranks)
    data, plan = _data_source(snn, ann_gm, tunables, *args)
    if plan is not None:
        (logger.warning if plan.warn else logger.info)(plan.line(len(tunables), epochs_per_layer, ranks))
    sgd = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
    judge = _Judge(snn, validate, keep_if_better, ranks)
    reports: list[LayerReport] = []
    try:
        for t in tunables[:start_layer]:
            data.advance(t)  # resume: carry the batches through the layers tuned before
        for t in tunables[start_layer:]:
            report = _tune_layer(snn.net, t, data, epochs_per_layer, sgd, judge, bias_correction)
            data.advance(t)
            reports.append(report)
            if on_layer_end is not None:
                on_layer_end(report)
    finally:
        data.close()
        qmodel.train(was_training)
        snn.net.requires_grad_(False)
    return reports
