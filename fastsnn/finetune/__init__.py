"""Layer-wise fine-tuning of a converted SNN (docs/method.md §4).

* :mod:`.layerwise` — the layer-wise objective and its loop: :func:`layerwise_finetune`;
* :mod:`.sources` — where each layer's batches come from: simulated from the input for every
  layer, or carried from layer to layer in memory when they fit;
* :mod:`.graph` — graph slicing: a layer's synaptic part, evaluated on rates or spikes, and
  :func:`run_until` (a graph run up to one node).
"""

from .graph import run_until
from .layerwise import LayerReport, layerwise_finetune

__all__ = ["LayerReport", "layerwise_finetune", "run_until"]
