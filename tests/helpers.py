"""Small helpers shared by several test modules (import as ``from tests.helpers import ...``)."""
import torch
from torch import nn


def randomize_bn(model: nn.Module, bias_offset: float = 0.0) -> nn.Module:
    """Give batch norms non-trivial statistics so that folding them is really tested;
    ``bias_offset`` shifts the BN biases up (more units active)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2 + bias_offset)
    return model
