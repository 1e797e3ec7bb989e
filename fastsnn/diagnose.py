"""Where a converted SNN's error comes from, layer by layer.

:func:`layer_errors` splits the error of every neuron layer against the quantized ANN (the MSE
between the layer's spike rate and the ANN's activation) into the part the layer makes itself
and the part it inherits from the layers before it:

* ``total``: the SNN as it runs, each layer fed the spike trains of the layers before it;
* ``own``: the layer fed *exact* inputs, spike trains whose rates are the ANN's activations:
  the SNN's own train wherever its rate already is the ANN's, and elsewhere the train of a
  neuron driven by a constant current equal to the ANN's activation (evenly spaced spikes,
  whose rate is the activation exactly at ``T = 2**bits - 1``). What is left is the layer's own
  spike-timing error;
* ``inherited``: ``total - own``, what the wrong input rates add (negative where they happen to
  cancel some of the layer's own error).

A layer whose inputs all have the right rates inherits nothing (``own == total``): the first
layer, fed the analog input, and at ``T = 2**bits - 1`` also the layers fed by it alone. Plain
PyTorch: usable on any ``convert_to_snn`` result, no data set, Lightning or Hydra needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import fx, nn

from .convert import GraphNeuron, SpikingModel, trace
from .finetune.graph import _eval_spikes, _layer_graph, _LayerGraph, _rate, _written_sources, run_until
from .finetune.layerwise import _input_of


def _last_of(gm: fx.GraphModule, names: set[str]) -> str:
    """The node of ``names`` that comes last in ``gm``'s graph (the point a run may stop at)."""
    return [n.name for n in gm.graph.nodes if n.name in names][-1]


def _spike_count(spikes: torch.Tensor, theta: torch.Tensor, T: int) -> torch.Tensor:
    """Net spikes per neuron of a folded ``[T*N, ...]`` train (a whole number, up to float round-off)."""
    return torch.round(_rate(spikes, T) * T / theta)


def _exact_inputs(net: fx.GraphModule, lg: _LayerGraph, values: dict, ann: dict, T: int):
    """The layer's source values with every spike train's rate set to the ANN's activation.

    Returns ``(values, wrong, spiking)``: the values to feed, how many input neurons had a rate
    other than the ANN's, and how many spike-fed input neurons there are.
    """
    fed, wrong, spiking = {}, 0, 0
    for name, node in lg.sources.items():
        fed[name] = values[name]
        module = net.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(module, GraphNeuron):
            continue  # the analog input, or a value of the static region: the ANN's own value
        theta = module.neuron.threshold
        exact = module.neuron.forward_constant(ann[module.source].to(values[name].dtype), T).flatten(0, 1)
        differs = _spike_count(values[name], theta, T) != _spike_count(exact, theta, T)
        spiking += differs.numel()
        if differs.any():
            wrong += int(differs.sum())
            fed[name] = torch.where(differs.unsqueeze(0).expand(T, *differs.shape).flatten(0, 1), exact, values[name])
    for name in _written_sources(net, lg):  # the layer writes into these: its own copies
        fed[name] = fed[name].clone()
    return fed, wrong, spiking


@torch.no_grad()
def _batch_errors(snn: SpikingModel, ann_gm: fx.GraphModule, layers: list, x: torch.Tensor) -> list[dict]:
    """Per layer, on one batch: summed squared errors (total, own), elements, wrong and spike-fed inputs."""
    T = snn.timesteps
    wanted = {lg.neuron.name for _, lg in layers} | {s for _, lg in layers for s in lg.sources}
    values = run_until(snn.net, x, _last_of(snn.net, wanted), wanted)
    sources = {module.source for module, _ in layers}
    ann = run_until(ann_gm, x, _last_of(ann_gm, sources), sources)
    out = []
    for module, lg in layers:
        target = ann[module.source]
        total = float(((_rate(values[lg.neuron.name], T) - target) ** 2).sum())
        fed, wrong, spiking = _exact_inputs(snn.net, lg, values, ann, T)
        own = total if wrong == 0 else float(((_rate(_eval_spikes(snn.net, lg, fed), T) - target) ** 2).sum())
        out.append({"total": total, "own": own, "elements": target.numel(), "wrong": wrong, "spiking": spiking})
    return out


def layer_errors(qmodel: nn.Module, snn: SpikingModel, batches: Iterable, input_fn: Callable = _input_of) -> list[dict]:
    """Per neuron layer of ``snn`` (converted from ``qmodel``), its error against ``qmodel`` on ``batches``.

    ``batches`` yields input batches (``input_fn(batch)``: the first element of a tuple or list,
    else the batch itself). Each batch is simulated multi-step, and every layer's spike trains
    are held at once: keep the batches small. ``snn``'s settings and weights are not changed.

    Returns one dict per neuron layer, in order: ``index``, ``name`` (its module in
    ``snn.net``), ``layer`` (the ANN's activation path), ``total``, ``own`` and ``inherited``
    (MSEs in activation units squared, over all elements of all batches; see the module
    docstring) and ``wrong_inputs``, the share of its spike-fed input neurons whose rate is not
    the ANN's.
    """
    nodes = {n.target: n for n in snn.net.graph.nodes if n.op == "call_module"}
    layers = [(snn.net.get_submodule(layer.name), _layer_graph(snn.net, nodes[layer.name])) for layer in snn.layers]
    ann_gm = trace(qmodel)
    was_training = qmodel.training
    qmodel.eval()
    snn.eval()
    device = next(snn.parameters()).device
    sums = [{"total": 0.0, "own": 0.0, "elements": 0, "wrong": 0, "spiking": 0} for _ in layers]
    try:
        for batch in batches:
            for acc, part in zip(sums, _batch_errors(snn, ann_gm, layers, input_fn(batch).to(device))):
                for key in acc:
                    acc[key] += part[key]
    finally:
        qmodel.train(was_training)
    rows = []
    for index, (layer, acc) in enumerate(zip(snn.layers, sums)):
        total, own = acc["total"] / max(acc["elements"], 1), acc["own"] / max(acc["elements"], 1)
        wrong = acc["wrong"] / acc["spiking"] if acc["spiking"] else 0.0
        rows.append(
            {"index": index, "name": layer.name, "layer": layer.path, "total": total, "own": own}
            | {"inherited": total - own, "wrong_inputs": wrong}
        )
    return rows
