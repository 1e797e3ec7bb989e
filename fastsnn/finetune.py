"""Layer-wise fine-tuning of a converted SNN (METHOD.md §4), for any converted model.

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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn import functional as F

from .convert import GraphNeuron, SpikingModel, StaticExpand, trace


class _Stop(Exception):
    pass


def run_until(gm: fx.GraphModule, x: torch.Tensor, stop: str, capture: Iterable[str]) -> dict[str, torch.Tensor]:
    """Run ``gm`` on ``x`` node by node up to node ``stop``; return the values of ``capture``."""
    wanted = set(capture) | {stop}
    values: dict[str, torch.Tensor] = {}

    class Runner(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in wanted:
                values[n.name] = out
            if n.name == stop:
                raise _Stop
            return out

    try:
        Runner(gm).run(x)
    except _Stop:
        pass
    missing = wanted - values.keys()
    if missing:
        raise RuntimeError(f"nodes {sorted(missing)} were not reached while running the graph")
    return values


@dataclass
class _LayerGraph:
    """The synaptic part of one neuron layer: the nodes from its sources to the neuron."""

    neuron: fx.Node
    nodes: list[fx.Node]  # to evaluate, in graph order (excluding sources and the neuron)
    sources: dict[str, fx.Node] = field(default_factory=dict)  # value name -> node whose value to feed
    modules: list[nn.Module] = field(default_factory=list)


def _layer_graph(net: fx.GraphModule, neuron: fx.Node) -> _LayerGraph:
    order = {n: i for i, n in enumerate(net.graph.nodes)}
    inside: set[fx.Node] = set()
    sources: dict[str, fx.Node] = {}
    stack = list(neuron.all_input_nodes)
    while stack:
        node = stack.pop()
        if node in inside or node.name in sources:
            continue
        module = net.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, GraphNeuron):
            sources[node.name] = node  # spikes of an earlier layer: fed as their rate
        elif isinstance(module, StaticExpand) or node.op == "placeholder":
            sources[node.name] = node  # analog-input side: fed as is (its value before the expand)
        else:
            inside.add(node)
            stack.extend(node.all_input_nodes)
    nodes = sorted(inside, key=order.get)
    modules = [net.get_submodule(n.target) for n in nodes if n.op == "call_module"]
    return _LayerGraph(neuron, nodes, sources, modules)


def _layer_params(net: fx.GraphModule, lg: _LayerGraph) -> list[nn.Parameter]:
    params = {id(p): p for m in lg.modules for p in m.parameters()}
    for n in lg.nodes:
        attr = getattr_path(net, n.target) if n.op == "get_attr" else None
        if isinstance(attr, nn.Parameter):
            params[id(attr)] = attr
    return list(params.values())


def getattr_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _eval_rates(net: fx.GraphModule, lg: _LayerGraph, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    """Evaluate the layer's synaptic part on rates (``[N, ...]``, no time dimension)."""
    env: dict[fx.Node, object] = {lg.sources[k]: v for k, v in feeds.items()}
    for n in lg.nodes:
        args = fx.node.map_arg(n.args, env.__getitem__)
        kwargs = fx.node.map_arg(n.kwargs, env.__getitem__)
        if n.op == "call_module":
            env[n] = net.get_submodule(n.target)(*args, **kwargs)
        elif n.op == "call_function":
            env[n] = n.target(*args, **kwargs)
        elif n.op == "call_method":
            env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
        elif n.op == "get_attr":
            env[n] = getattr_path(net, n.target)
    return env[lg.neuron.args[0]]


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
    train_loss: float
    kept: bool = True
    score: float | None = None  # validate(snn) after this layer, when a validate callable is given


def _rate(spikes: torch.Tensor, T: int) -> torch.Tensor:
    """Mean over time of a folded ``[T*N, ...]`` train, in activation units."""
    return spikes.reshape(T, spikes.shape[0] // T, *spikes.shape[1:]).mean(0)


@torch.no_grad()
def _observe(snn: SpikingModel, ann_gm: fx.GraphModule, lg: _LayerGraph, source: str, x: torch.Tensor):
    """ANN target, SNN input rates (feeds) and SNN output rate of one layer for a batch."""
    T = snn.timesteps
    target = run_until(ann_gm, x, source, ())[source]
    vals = run_until(snn.net, x, lg.neuron.name, lg.sources)
    feeds = {}
    for name, node in lg.sources.items():
        module = snn.net.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, GraphNeuron):
            feeds[name] = _rate(vals[name], T)  # spike train -> rate
        elif isinstance(module, StaticExpand):
            feeds[name] = _rate(vals[name], T)  # repeated static value -> itself
        else:
            feeds[name] = vals[name]
    return target, feeds, _rate(vals[lg.neuron.name], T)


def _layer_mse(snn, ann_gm, lg, source, batches) -> float:
    total, count = 0.0, 0
    for x in batches:
        target, _, r_out = _observe(snn, ann_gm, lg, source, x)
        total += F.mse_loss(r_out, target, reduction="sum").item()
        count += target.numel()
    return total / max(count, 1)


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
) -> list[LayerReport]:
    """Fine-tune ``snn`` (converted from ``qmodel``) layer by layer, in place (METHOD.md §4).

    Args:
        qmodel: the quantized ANN the SNN was converted from; the fixed teacher (not changed).
        snn: the converted model; its weights are updated in place.
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

    Returns one :class:`LayerReport` per tuned layer (the first layers, fed by the analog
    input, are exact and are skipped, as is the analog output layer, which has no neuron).
    """
    device = next(snn.parameters()).device
    ann_gm = trace(qmodel)
    was_training = qmodel.training
    qmodel.eval()
    snn.eval()
    tunable = [(i, layer) for i, layer in enumerate(snn.layers) if not layer.constant_input]
    nodes = {n.target: n for n in snn.net.graph.nodes if n.op == "call_module"}
    measure = []
    for batch in dataloader:
        if len(measure) >= measure_batches:
            break
        measure.append(input_fn(batch).to(device))
    best = validate(snn) if validate is not None else None
    reports: list[LayerReport] = []
    try:
        for index, layer in tunable[start_layer:]:
            lg = _layer_graph(snn.net, nodes[layer.name])
            params = _layer_params(snn.net, lg)
            saved = [p.detach().clone() for p in params]
            theta = snn.net.get_submodule(layer.name).neuron.threshold
            source = snn.net.get_submodule(layer.name).source
            mse_before = _layer_mse(snn, ann_gm, lg, source, measure)
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
            loss_sum, steps = 0.0, 0
            for epoch in range(epochs_per_layer):
                batches = (
                    dataloader
                    if progress is None
                    else progress(dataloader, f"layer {index} {layer.path} ({epoch + 1}/{epochs_per_layer})")
                )
                for batch in batches:
                    target, feeds, r_out = _observe(snn, ann_gm, lg, source, input_fn(batch).to(device))
                    y = torch.minimum(F.relu(_eval_rates(snn.net, lg, feeds)), theta)
                    loss = F.mse_loss(y + (r_out - y).detach(), target)  # SNN value, ANN gradient
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loss_sum += loss.item()
                    steps += 1
            report = LayerReport(
                index,
                layer.name,
                layer.path,
                mse_before,
                _layer_mse(snn, ann_gm, lg, source, measure),
                loss_sum / max(steps, 1),
            )
            report.kept = not (keep_if_better and report.mse_after > report.mse_before)
            if report.kept and validate is not None:
                report.score = validate(snn)
                report.kept = report.score >= best
                best = max(best, report.score)
            if not report.kept:
                with torch.no_grad():
                    for p, old in zip(params, saved):
                        p.copy_(old)
            for p in params:
                p.requires_grad_(False)
                p.grad = None
            reports.append(report)
            if on_layer_end is not None:
                on_layer_end(report)
    finally:
        qmodel.train(was_training)
        snn.net.requires_grad_(False)
    return reports
