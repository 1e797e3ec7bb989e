"""Network-level fine-tuning of a converted SNN (docs/method.md §4.1), after the layer-wise phase.

Every step of SGD on one batch:

1. the quantized ANN (fixed, eval mode) gives the target: its output for the batch;
2. the SNN runs all T steps (no gradients) and gives each neuron layer's rate ``r``;
3. the graph is evaluated once more on rates (:func:`.graph._eval_network`), each neuron a
   straight-through estimate of its spike count: value ``r`` (the SNN's), gradient that of
   ``clamp(u, 0, theta)`` of its synaptic input ``u`` (the quantized ANN's). Its output is the
   SNN's output, and the loss on it reaches every tuned layer's weights through all the layers
   after it;
4. the loss (MSE of the outputs by default) is minimised over the weights of every layer fed
   by spikes, and optionally the analog output layer's; thresholds stay frozen.

An epoch is kept only if the loss on the measured batches (``keep_if_better``) and the
``validate`` score did not get worse; otherwise the weights go back to where the epoch started,
and the phase ends. Its state (weights, optimiser, position) can be saved every few steps and resumed.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn import functional as F

from ..convert import GraphNeuron, SpikingModel
from .graph import _ancestors, _eval_network, _node_params, _rate, _tunable_layers
from .layerwise import _input_of, _Judge
from .ranks import Ranks

logger = logging.getLogger(__name__)


@dataclass
class NetworkReport:
    """One epoch of the network-level phase: its objective on the measured batches before / after, whether kept."""

    epoch: int
    loss_before: float  # the phase's loss on the measured batches
    loss_after: float  # after the epoch's updates; when not kept the SNN is back at loss_before
    train_loss: float
    kept: bool = True
    score: float | None = None  # validate(snn) after the epoch, when a validate callable is given


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _tensors(o)] if isinstance(out, (list, tuple)) else []


def output_mse(snn_out, ann_out, batch=None) -> torch.Tensor:
    """Mean squared difference of two outputs (a tensor, or tuples / dicts of them), all elements weighed alike."""
    pairs = list(zip(_tensors(snn_out), _tensors(ann_out), strict=True))
    total = sum(F.mse_loss(s, a, reduction="sum") for s, a in pairs)
    return total / max(sum(a.numel() for _, a in pairs), 1)


def output_kl(snn_out, ann_out, batch=None) -> torch.Tensor:
    """KL(softmax(ANN logits) || softmax(SNN logits)) per sample, for classification logits ``[N, C]``."""
    return F.kl_div(F.log_softmax(snn_out, 1), F.log_softmax(ann_out, 1), log_target=True, reduction="batchmean")


LOSSES = {"mse": output_mse, "kl": output_kl}


def _output_params(net: fx.GraphModule) -> list[nn.Parameter]:
    """The parameters of the output region: the ops after the last neurons (the analog output layer)."""
    neurons = [
        n for n in net.graph.nodes if n.op == "call_module" and isinstance(net.get_submodule(n.target), GraphNeuron)
    ]
    feeding = _ancestors(neurons)
    after: set[fx.Node] = set(neurons)
    for n in net.graph.nodes:
        if n not in after and any(a in after for a in n.all_input_nodes):
            after.add(n)
    return _node_params(net, [n for n in after if n not in feeding])


def network_params(snn: SpikingModel, output_layer: bool = False) -> list[nn.Parameter]:
    """The weights the phase tunes: every layer fed by spikes (and the analog output layer), each once."""
    params = {id(p): p for t in _tunable_layers(snn) for p in t.params}
    if output_layer:
        params.update((id(p), p) for p in _output_params(snn.net))
    return list(params.values())


@torch.no_grad()
def snn_rates(snn: SpikingModel, x: torch.Tensor) -> tuple[object, dict[str, torch.Tensor]]:
    """The SNN's output for ``x`` (multistep, all T steps) and each neuron layer's rate, by name."""
    T, rates, hooks = snn.timesteps, {}, []
    for name, module in snn.neurons():
        hooks.append(module.register_forward_hook(lambda m, i, out, name=name: rates.__setitem__(name, _rate(out, T))))
    try:
        with snn.ctx.run("mean"):
            out = snn.net(x)
    finally:
        for h in hooks:
            h.remove()
    return out, rates


class _Phase:
    """One network-level phase: the weights it tunes, its optimiser and where it stands."""

    def __init__(self, qmodel, snn: SpikingModel, params, dataloader, input_fn, loss, progress, sgd: dict, ranks):
        self.qmodel, self.snn, self.params, self.dataloader = qmodel, snn, params, dataloader
        self.input_fn, self.loss, self.progress, self.ranks = input_fn, loss, progress, ranks
        self.device = next(snn.parameters()).device
        self.opt = torch.optim.SGD(params, **sgd)
        self.epoch, self.step, self.loss_sum, self.loss_before = 0, 0, 0.0, float("nan")
        self.saved: list[torch.Tensor] = []
        self.reports: list[NetworkReport] = []
        self.measure: list = []  # the batches the objective is measured on

    def state(self, best: float | None) -> dict:
        """Plain data (tensors, numbers, lists): a checkpoint of it loads with ``weights_only=True``."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "params": [p.detach().clone() for p in self.params],
            "saved": [s.clone() for s in self.saved],
            "optimizer": copy.deepcopy(self.opt.state_dict()),  # a snapshot: the buffers change in place
            "loss_sum": self.loss_sum,
            "loss_before": self.loss_before,
            "best": best,
            "reports": [vars(r).copy() for r in self.reports],
        }

    def load(self, state: dict) -> None:
        if len(state["params"]) != len(self.params):
            raise ValueError(
                f"the saved state holds {len(state['params'])} weight tensors, this SNN tunes {len(self.params)}: "
                "resume with the same model and the same output_layer setting"
            )
        with torch.no_grad():
            for p, v in zip(self.params, state["params"], strict=True):
                p.copy_(v)
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.loss_sum = state["epoch"], state["step"], state["loss_sum"]
        self.loss_before, self.saved = state["loss_before"], [s.to(self.device) for s in state["saved"]]
        self.reports = [NetworkReport(**r) for r in state["reports"]]

    def train_step(self, batch) -> float:
        x = self.input_fn(batch).to(self.device)
        with torch.no_grad():
            target = self.qmodel(x)
        _, rates = snn_rates(self.snn, x)
        loss = self.loss(_eval_network(self.snn.net, x, rates), target, batch)  # the SNN's value, the ANN's gradient
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.ranks.average_gradients(self.params)
        self.opt.step()
        return loss.item()

    @torch.no_grad()
    def measured_loss(self) -> float:
        """The loss of the SNN's output on the measured batches (mean over batches)."""
        total = 0.0
        for batch in self.measure:
            x = self.input_fn(batch).to(self.device)
            with self.snn.ctx.run("mean"):
                total += self.loss(self.snn.net(x), self.qmodel(x), batch).item()
        total, count = self.ranks.sum(total, len(self.measure))
        return total / max(count, 1)

    def run_epoch(self, epochs: int, checkpoint: Callable[[], None], every: int | None) -> None:
        """The current epoch from its current step (a resumed one skips the batches done)."""
        if self.step == 0:
            self.saved = [p.detach().clone() for p in self.params]
            self.loss_before, self.loss_sum = self.measured_loss(), 0.0
        batches = self.dataloader
        if self.progress is not None:
            batches = self.progress(batches, f"network ({self.epoch + 1}/{epochs})")
        for i, batch in enumerate(batches):
            if i < self.step:
                continue
            self.loss_sum += self.train_step(batch)
            self.step = i + 1
            if every and self.step % every == 0:
                checkpoint()

    def end_epoch(self, judge: _Judge) -> NetworkReport:
        """Judge the epoch; put the weights back where it started when it is not kept."""
        after = self.measured_loss()
        report = NetworkReport(self.epoch, self.loss_before, after, self.loss_sum / max(self.step, 1))
        judge(report, report.loss_before, after)
        if not report.kept:
            with torch.no_grad():
                for p, old in zip(self.params, self.saved, strict=True):
                    p.copy_(old)
        self.reports.append(report)
        self.epoch, self.step, self.saved = self.epoch + 1, 0, []
        return report


def network_finetune(
    qmodel: nn.Module,
    snn: SpikingModel,
    dataloader: Iterable,
    epochs: int = 1,
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    loss: str | Callable = "mse",
    output_layer: bool = False,
    validate: Callable[[SpikingModel], float] | None = None,
    keep_if_better: bool = True,
    measure_batches: int = 4,
    input_fn: Callable = _input_of,
    progress: Callable[[Iterable, str], Iterable] | None = None,
    on_epoch_end: Callable[[NetworkReport], None] | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int | None = None,
    resume: dict | None = None,
    distributed: bool = False,
) -> list[NetworkReport]:
    """Fine-tune ``snn`` (converted from ``qmodel``) as a whole towards the ANN's output, in place
    (docs/method.md §4.1); usually after :func:`~fastsnn.layerwise_finetune`.

    Args:
        qmodel: the quantized ANN the SNN was converted from; the fixed teacher (not changed).
        snn: the converted model; its weights are updated in place (multistep graph, any mode).
        dataloader: yields batches (iterated once per epoch); ``input_fn(batch)`` gives the input.
        epochs, lr, momentum, weight_decay: SGD settings.
        loss: ``"mse"`` (MSE of SNN and ANN outputs, any output structure), ``"kl"`` (KL divergence
            of their softmax, classification logits), or ``loss(snn_out, ann_out, batch) -> tensor``
            (e.g. a task loss on the batch's labels).
        output_layer: tune the analog output layer too (its weights read the SNN's rates).
        validate: optional ``validate(snn) -> score`` (higher is better): an epoch is kept only if
            the score does not drop; otherwise its update is undone and the phase ends.
        keep_if_better: also undo an epoch (and end) when the loss, measured on the first
            ``measure_batches`` batches, went up.
        progress: optional wrapper ``progress(iterable, description)`` around each epoch's pass.
        on_epoch_end: called with a :class:`NetworkReport` after each epoch.
        on_checkpoint: called with the phase's state (plain data) after every
            ``checkpoint_every`` steps and after each epoch; pass it back as ``resume`` to continue
            exactly where it was (same batches in the same order assumed).
        distributed: every process of the default process group calls this with its own shard
            of the batches, as in :func:`~fastsnn.layerwise_finetune`.

    Returns one :class:`NetworkReport` per epoch run, those before a ``resume`` included.
    """
    if isinstance(loss, str) and loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {loss!r}")
    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
    was_training = qmodel.training
    qmodel.eval()
    snn.eval()
    params = network_params(snn, output_layer)
    if not params:
        logger.warning("network-level fine-tuning: no layer fed by spikes to tune (and output_layer=False)")
        return []
    sgd = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
    ranks = Ranks(distributed, next(snn.parameters()).device)
    phase = _Phase(qmodel, snn, params, dataloader, input_fn, loss_fn, progress, sgd, ranks)
    if hasattr(dataloader, "__len__"):
        ranks.same_count(len(dataloader), "fine-tuning batches")
    if resume is not None:
        phase.load(resume)
    phase.measure = [b for _, b in zip(range(measure_batches), dataloader)]
    judge = _Judge(snn, validate, keep_if_better, ranks, best=None if resume is None else resume["best"])

    def checkpoint() -> None:
        if on_checkpoint is not None:
            on_checkpoint(phase.state(judge.best))

    try:
        for p in params:
            p.requires_grad_(True)
        while phase.epoch < epochs and all(r.kept for r in phase.reports):
            phase.run_epoch(epochs, checkpoint, checkpoint_every)
            report = phase.end_epoch(judge)
            if on_epoch_end is not None:
                on_epoch_end(report)
            checkpoint()
    finally:
        qmodel.train(was_training)
        for p in params:
            p.grad = None
        snn.net.requires_grad_(False)
    return phase.reports
