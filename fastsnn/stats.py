"""Spike rates, synaptic operations and an energy estimate (docs/method.md §6).

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


class _Counters:
    """Forward hooks on the neurons and synapses of a SpikingModel, counting what :func:`spike_stats` reports.

    The counts do not depend on how the model is simulated (multi-step or streaming, whole batch
    or chunks): every layer sees the same events, only grouped differently.
    """

    def __init__(self, snn: SpikingModel):
        self.snn = snn
        self.spikes = {layer.name: [0, 0, 0] for layer in snn.layers}  # positive, negative, neuron-steps
        self.sops = 0
        self.first_macs = 0  # conv / linear on the analog input: once per image
        self.spike_macs = 0  # conv / linear on spikes: T calls' worth, per step at the end
        self.images = 0
        self._handles = []

    def __enter__(self) -> _Counters:
        for name, module in self.snn.net.named_modules():
            if isinstance(module, GraphNeuron):
                self._handles.append(module.register_forward_hook(self._neuron_hook(name)))
            elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                self._handles.append(module.register_forward_hook(self._synapse_hook(name in self.snn.static_modules)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def _neuron_hook(self, name: str):
        def hook(module, inputs, out):
            counts = self.spikes[name]
            counts[0] += int((out > 0).sum())
            counts[1] += int((out < 0).sum())
            counts[2] += out.numel()

        return hook

    def _synapse_hook(self, static: bool):
        def hook(module, inputs, out):
            if static:  # analog input: dense MACs, once per image
                self.first_macs += _macs(module, out)
            else:  # spikes: T steps' worth of inputs in all
                self.sops += _events(module, inputs[0])
                self.spike_macs += _macs(module, out)

        return hook


def _layer_rates(snn: SpikingModel, c: _Counters) -> list[dict]:
    T = snn.timesteps
    return [
        {
            "name": layer.path,
            "neurons": c.spikes[layer.name][2] // (T * c.images),
            "pos_rate": c.spikes[layer.name][0] / max(c.spikes[layer.name][2], 1),
            "neg_rate": c.spikes[layer.name][1] / max(c.spikes[layer.name][2], 1),
        }
        for layer in snn.layers
    ]


def _summary(snn: SpikingModel, c: _Counters) -> dict:
    pos = sum(s[0] for s in c.spikes.values())
    neg = sum(s[1] for s in c.spikes.values())
    steps = max(sum(s[2] for s in c.spikes.values()), 1)
    sops = c.sops / c.images
    first = c.first_macs / c.images
    ann = (c.first_macs + c.spike_macs // snn.timesteps) / c.images
    snn_uj = (first * E_MAC_PJ + sops * E_AC_PJ) * 1e-6
    ann_uj = ann * E_MAC_PJ * 1e-6
    return {
        "timesteps": snn.timesteps,
        "images": c.images,
        "layers": _layer_rates(snn, c),
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


@torch.no_grad()
def spike_stats(snn: SpikingModel, data, max_batches: int | None = None) -> dict:
    """Measure spike rates, SOPs and the energy estimate of ``snn`` on ``data``.

    ``data`` is a batch tensor or an iterable of batches (tuples: the first element is the
    input). Returns a dict with per-layer ``layers`` (``pos_rate``, ``neg_rate``, ``neurons``),
    overall ``spike_rate`` / ``pos_rate`` / ``neg_rate``, per-image ``sops``,
    ``first_layer_macs``, ``ann_macs``, and ``energy`` (``snn_uj``, ``ann_uj``, ``ratio``,
    ``note``).

    The model is simulated as it runs (``snn.mode``, ``"auto"`` included, and ``snn.chunk_size``:
    :meth:`~fastsnn.SpikingModel.simulate_steps`), so a streaming model measures with the memory
    of streaming; the numbers are the same in every mode.
    """
    device = next(snn.parameters()).device
    with _Counters(snn) as counters:
        for x in _batches(data, max_batches):
            x = x.to(device)
            snn.simulate_steps(x)
            counters.images += x.shape[0]
    if counters.images == 0:
        raise ValueError("spike_stats got no data")
    return _summary(snn, counters)
