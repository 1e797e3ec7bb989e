"""convert_to_snn(channels_last=True), the default: the network runs on channels-last tensors, and
on a network whose float sums are exact (weights, inputs and thresholds on power-of-two grids) it
gives the same outputs as the contiguous network, bit for bit."""

import pytest
import torch
from torch import nn

from fastsnn import IFNeuron, convert_to_snn, quantize_model
from fastsnn.neuron import is_channels_last


class GridNet(nn.Module):
    """Stem, a residual block, a non-global pool and a linear layer fed through ``view``."""

    def __init__(self):
        super().__init__()
        self.stem, self.act0 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv1, self.act1 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        h = self.act0(self.stem(x))
        h = self.act2(self.conv2(self.act1(self.conv1(h))) + h)
        h = self.pool(h)
        return self.fc(h.view(h.size(0), -1))  # merges C with H, W: a view fails on channels-last


def grid_model(bits: int) -> nn.Module:
    torch.manual_seed(bits)
    model = GridNet()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-4, 5, p.shape) / 16)
    return quantize_model(model, bits, alpha_init=2.0).eval()


def neuron_layouts(snn, x) -> list[bool]:
    """Whether each neuron layer's input steps were channels-last, in call order."""
    seen = []
    hooks = [
        m.register_forward_pre_hook(lambda _, args: seen.append(is_channels_last(args[0][0])))
        for m in snn.modules()
        if isinstance(m, IFNeuron)
    ]
    try:
        with torch.no_grad():
            snn(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize("mode", ["multistep", "streaming"])
def test_channels_last_gives_the_contiguous_outputs_on_an_exact_grid(bits, mode):
    q = grid_model(bits)
    x = torch.randint(-8, 9, (6, 3, 8, 8)) / 8
    last = convert_to_snn(q, mode=mode)
    plain = convert_to_snn(q, mode=mode, channels_last=False)
    with torch.no_grad():
        got, expected = last(x), plain(x)
    assert torch.equal(got, expected)
    assert got.abs().sum() > 0 and (got != got[0]).any()  # a non-trivial output


def test_channels_last_reaches_every_spiking_layer():
    q, x = grid_model(2), torch.randint(-8, 9, (4, 3, 8, 8)) / 8
    # the two neuron layers fed by spikes (the first one runs forward_constant, which the hook does not see)
    assert neuron_layouts(convert_to_snn(q, mode="multistep"), x) == [True, True]
    assert neuron_layouts(convert_to_snn(q, mode="multistep", channels_last=False), x) == [False, False]
