"""The conversion callback: the Lightning glue that swaps a task's activations for IF neurons.

It works with any LightningModule that follows :class:`fastsnn.protocol.SpikingTask`. The
fine-tuning that follows conversion is a stage of its own (:mod:`tasks.finetune_stage`).
"""

from __future__ import annotations

import torch
from lightning.pytorch import Callback

from .config import SimulationConfig
from .convert import SpikingModel, convert_to_snn
from .protocol import SpikingTask
from .stats import spike_stats


class SNNConversion(Callback):
    """Swaps the quantized activations for (signed) IF neurons and measures the SNN.

    * ``convert(module)`` converts ``module.net`` with the settings ``simulation`` (a
      :class:`~fastsnn.config.SimulationConfig`: T, signed neurons, simulation mode, kernels,
      chunks, memory budget, layout) and attaches the SNN (``module.snn``). The pipeline calls it
      after loading the best checkpoint of training, or a given checkpoint.
    * with ``convert_on_fit_end=True``, ``on_fit_end`` converts the final weights, so a plain
      ``Trainer`` with this callback ends with an SNN too (the pipeline converts the best
      checkpoint instead, and a full-precision stage has nothing to convert).
    * In every SNN test pass (``module.eval_label != "ann"``) it converts if no SNN is there
      yet, and logs spike statistics on the first ``stats_batches`` test batches:
      ``<label>/spike_rate``, ``pos_rate``, ``neg_rate``, ``sops``, ``energy_ratio`` and the
      per-layer rates ``<label>/layer_rate/<layer>``.
    """

    def __init__(
        self,
        simulation: SimulationConfig | None = None,
        stats_batches: int = 4,
        convert_on_fit_end: bool = False,
    ):
        self.simulation = simulation or SimulationConfig()
        self.stats_batches = stats_batches
        self.convert_on_fit_end = convert_on_fit_end
        self._inputs: list[torch.Tensor] = []
        self.last_stats: dict | None = None

    def convert(self, module: SpikingTask) -> SpikingModel:
        with torch.inference_mode(False):  # called from a test pass too: the SNN's weights stay normal tensors
            snn = convert_to_snn(module.net, self.simulation)
        module.set_snn(snn.to(module.device))
        return snn

    def on_fit_end(self, trainer, module):
        if self.convert_on_fit_end:
            self.convert(module)

    def on_test_epoch_start(self, trainer, module):
        self._inputs = []
        if module.eval_label != "ann" and module.snn is None:
            self.convert(module)

    def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if module.eval_label != "ann" and len(self._inputs) < self.stats_batches:
            self._inputs.append(module.inputs(batch))

    def on_test_epoch_end(self, trainer, module):
        if module.eval_label == "ann" or not self._inputs or not isinstance(module.snn, SpikingModel):
            self._inputs = []  # the ANN, or another library's SNN under test (a comparison): no statistics
            return
        stats = spike_stats(module.snn, self._inputs)
        label = module.eval_label
        for key in ("spike_rate", "pos_rate", "neg_rate", "sops", "first_layer_macs", "ann_macs"):
            module.log(f"{label}/{key}", float(stats[key]), sync_dist=True)
        module.log(f"{label}/energy_ratio", float(stats["energy"]["ratio"]), sync_dist=True)
        for layer in stats["layers"]:
            module.log(f"{label}/layer_rate/{layer['name']}", layer["pos_rate"] + layer["neg_rate"], sync_dist=True)
        self.last_stats = stats
        self._inputs = []
