"""Spike rates, synaptic operations and an energy estimate (METHOD.md §5).

* spike rate: spikes per neuron per time step, positive and negative apart;
* synaptic operations (SOPs): each spike (or any non-zero event) arriving at a conv /
  linear layer costs one accumulate per outgoing synapse; counted exactly, borders and
  strides included, by running the layer with all-ones weights on the event mask;
* the layers that see the analog input (the first layer) cost multiply-accumulates, once
  per image (the input is constant over time, so it is computed once);
* energy: ``E_MAC = 4.6 pJ``, ``E_AC = 0.9 pJ`` (45 nm CMOS, Horowitz 2014) -- an
  *estimate* for comparison with the ANN's MACs, not a measurement.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .convert import GraphNeuron, SpikingModel

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
ENERGY_NOTE = (
    "estimate: 45 nm CMOS, E_MAC = 4.6 pJ, E_AC = 0.9 pJ (Horowitz 2014); "
    "SNN = first-layer MACs + synaptic ACs, ANN = all MACs"
)


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates of one call of a conv / linear layer (whole batch)."""
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    per_output = (
        module.weight[0].numel()
        if not isinstance(module, nn.modules.conv._ConvTransposeNd)
        else module.weight.shape[0] // module.groups * module.weight[0, 0].numel()
    )
    return out.numel() * per_output


def _events(module: nn.Module, x: torch.Tensor) -> int:
    """Synaptic events: every non-zero input element times the outputs it reaches."""
    mask = (x != 0).to(module.weight.dtype)
    if isinstance(module, nn.Linear):
        return int(mask.sum().item()) * module.out_features
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # fan-out of every input element
        return int(mask.sum().item()) * module.weight[0].numel()
    ones = torch.ones_like(module.weight)
    return int(module._conv_forward(mask, ones, None).sum().item())


def _batches(data, max_batches: int | None) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        yield data
        return
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            return
        yield batch[0] if isinstance(batch, (list, tuple)) else batch


@torch.no_grad()
def spike_stats(snn: SpikingModel, data, max_batches: int | None = None) -> dict:
    """Measure spike rates, SOPs and the energy estimate of ``snn`` on ``data``.

    ``data`` is a batch tensor or an iterable of batches (tuples: the first element is the
    input). Returns a dict with per-layer ``layers`` (``pos_rate``, ``neg_rate``, ``neurons``),
    overall ``spike_rate`` / ``pos_rate`` / ``neg_rate``, per-image ``sops``,
    ``first_layer_macs``, ``ann_macs``, and ``energy`` (``snn_uj``, ``ann_uj``, ``ratio``,
    ``note``).
    """
    device = next(snn.parameters()).device
    T = snn.timesteps
    spikes = {layer.name: [0, 0, 0] for layer in snn.layers}  # positive, negative, neuron-steps
    totals = {"sops": 0, "first_macs": 0, "ann_macs": 0}
    handles = []

    def neuron_hook(name):
        def hook(module, inputs, out):
            spikes[name][0] += int((out > 0).sum())
            spikes[name][1] += int((out < 0).sum())
            spikes[name][2] += out.numel()

        return hook

    def synapse_hook(name):
        static = name in snn.static_modules

        def hook(module, inputs, out):
            macs = _macs(module, out)
            if static:  # analog input: dense MACs, once per image
                totals["first_macs"] += macs
                totals["ann_macs"] += macs
            else:  # per-step spikes (time folded into the batch): T calls' worth of inputs
                totals["sops"] += _events(module, inputs[0])
                totals["ann_macs"] += macs // T

        return hook

    for name, module in snn.net.named_modules():
        if isinstance(module, GraphNeuron):
            handles.append(module.register_forward_hook(neuron_hook(name)))
        elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            handles.append(module.register_forward_hook(synapse_hook(name)))
    images = 0
    try:
        for x in _batches(data, max_batches):
            x = x.to(device)
            snn.forward_steps(x)
            images += x.shape[0]
    finally:
        for h in handles:
            h.remove()
    if images == 0:
        raise ValueError("spike_stats got no data")

    layers = [
        {
            "name": layer.path,
            "neurons": spikes[layer.name][2] // (T * images),
            "pos_rate": spikes[layer.name][0] / max(spikes[layer.name][2], 1),
            "neg_rate": spikes[layer.name][1] / max(spikes[layer.name][2], 1),
        }
        for layer in snn.layers
    ]
    pos = sum(s[0] for s in spikes.values())
    neg = sum(s[1] for s in spikes.values())
    steps = max(sum(s[2] for s in spikes.values()), 1)
    sops = totals["sops"] / images
    first = totals["first_macs"] / images
    ann = totals["ann_macs"] / images
    snn_uj = (first * E_MAC_PJ + sops * E_AC_PJ) * 1e-6
    ann_uj = ann * E_MAC_PJ * 1e-6
    return {
        "timesteps": T,
        "images": images,
        "layers": layers,
        "spike_rate": (pos + neg) / steps,
        "pos_rate": pos / steps,
        "neg_rate": neg / steps,
        "sops": sops,
        "first_layer_macs": first,
        "ann_macs": ann,
        "energy": {
            "snn_uj": snn_uj,
            "ann_uj": ann_uj,
            "ratio": snn_uj / ann_uj if ann_uj else float("nan"),
            "note": ENERGY_NOTE,
        },
    }
