"""Fine-tuning of a converted SNN: layer by layer (docs/method.md §4), then the whole network (§4.1).

* :mod:`.layerwise` — the layer-wise objective and its loop: :func:`layerwise_finetune`;
* :mod:`.network` — the network-level phase: the SNN's output towards the ANN's, gradients
  through a straight-through estimate of every neuron's spike count: :func:`network_finetune`;
* :mod:`.sources` — where each layer's batches come from: simulated from the input for every
  layer, or carried from layer to layer (:mod:`.store`: in memory or on disk), as :mod:`.plan`
  chose; :mod:`.ranks` — data-parallel fine-tuning over the processes of a process group;
* :mod:`.graph` — graph slicing: a layer's synaptic part, evaluated on rates or spikes, the
  whole graph on rates, and :func:`run_until` (a graph run up to one node).
"""

from .graph import run_until
from .layerwise import LayerReport, layerwise_finetune
from .network import NetworkReport, network_finetune

__all__ = ["LayerReport", "NetworkReport", "layerwise_finetune", "network_finetune", "run_until"]
