"""fastsnn: fast spiking neural networks by converting quantized ANNs (Fast-SNN, TPAMI 2023).

The method as plain PyTorch: quantize a model, train it, convert it to a signed-IF SNN,
fine-tune it layer by layer and as a whole, count its spikes. No Lightning or Hydra needed here.
"""

from .config import SimulationConfig
from .convert import ConversionError, SpikingModel, convert_to_snn, register_linear_function, register_linear_module
from .finetune import LayerReport, NetworkReport, layerwise_finetune, network_finetune
from .neuron import IFNeuron
from .quantize import quantize_model
from .quantizers import QuantConv2d, QuantLinear, QuantReLU
from .saved import load_snn, read_snn, save_snn
from .stats import spike_stats

__all__ = [
    "ConversionError",
    "IFNeuron",
    "LayerReport",
    "NetworkReport",
    "QuantConv2d",
    "QuantLinear",
    "QuantReLU",
    "SimulationConfig",
    "SpikingModel",
    "convert_to_snn",
    "layerwise_finetune",
    "load_snn",
    "network_finetune",
    "quantize_model",
    "read_snn",
    "register_linear_function",
    "register_linear_module",
    "save_snn",
    "spike_stats",
]
