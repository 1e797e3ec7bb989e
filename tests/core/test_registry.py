"""Custom ops declared linear with register_linear_module / register_linear_function are accepted
between spiking layers, and refused before they are declared."""

import pytest
import torch
from torch import fx, nn

from fastsnn import ConversionError, convert_to_snn, quantize_model, register_linear_function, register_linear_module
from fastsnn.convert.rules import Registry


@fx.wrap
def halve(x):
    return x * 0.5


class Halve(nn.Module):
    """Linear, but its forward branches on a tensor property: torch.fx cannot trace through it."""

    def forward(self, x):
        return x * 0.5 if x.dim() > 0 else x


class HalveFunction(nn.Module):
    def forward(self, x):
        return halve(x)


class Scale(nn.Module):
    def forward(self, x):
        return x * 0.5


def _quantized(middle: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), middle, nn.Conv2d(4, 4, 1), nn.ReLU())
    model.append(nn.Conv2d(4, 2, 1))
    return quantize_model(model, 2, alpha_init=1.0).eval()


@pytest.mark.parametrize(
    "middle, register, refusal",
    [
        (Halve(), lambda: register_linear_module(Halve), "could not trace"),
        (HalveFunction(), lambda: register_linear_function(halve), "register_linear_function"),
    ],
)
def test_declared_ops_are_accepted_between_spiking_layers(middle, register, refusal):
    ann = _quantized(middle)
    with pytest.raises(ConversionError, match=refusal):
        convert_to_snn(ann)
    register()
    snn = convert_to_snn(ann)
    reference = convert_to_snn(_quantized(Scale()))  # the same weights, the op written inline
    x = torch.randn(3, 1, 6, 6)
    with torch.no_grad():
        assert torch.allclose(snn(x), reference(x), atol=1e-6)
        assert torch.allclose(snn(x, return_steps=True)[1], reference(x, return_steps=True)[1], atol=1e-6)


def test_module_types_match_subclasses_and_functions_match_exactly():
    modules, functions = Registry(nn.Conv2d), Registry(torch.add)
    assert modules.matches(nn.Conv2d(1, 1, 1)) and not modules.matches(nn.Linear(1, 1))
    assert torch.add in functions and torch.sub not in functions
    assert functions.add(torch.sub) is torch.sub and torch.sub in functions  # usable as a decorator
