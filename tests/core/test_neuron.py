import pytest
import torch

from fastsnn import IFNeuron
from fastsnn.neuron import is_channels_last


def _counts(out, theta):
    s = torch.round(out / theta)
    return s, s.cumsum(0)


@pytest.mark.parametrize("T", [1, 3, 7, 15])
@pytest.mark.parametrize("signed", [True, False])
def test_constant_input_gives_the_rounded_clipped_count(T, signed):
    theta = 1.3
    neuron = IFNeuron(theta, signed=signed)
    x = torch.linspace(-1, 2.5, 997)
    out = neuron.forward_constant(x, T)
    n = torch.round(out / theta).sum(0)
    expected = torch.clamp(torch.floor(T * x / theta + 0.5), 0, T)
    assert torch.equal(n, expected)
    # the multi-step path on a repeated input agrees with the constant path
    assert torch.equal(neuron(x.expand(T, -1)), out)


def test_signed_neuron_invariants_on_random_inputs():
    torch.manual_seed(0)
    T, theta = 7, 0.8
    neuron = IFNeuron(theta, signed=True)
    x = torch.randn(T, 20_000) * 1.2
    out = neuron(x)
    s, cum = _counts(out, theta)
    assert set(s.unique().tolist()) <= {-1.0, 0.0, 1.0}
    # net spike count stays in [0, T] at every step
    assert (cum >= 0).all() and (cum <= T).all()
    # a negative spike never comes before a positive one
    first_neg = torch.where(s < 0, torch.arange(T)[:, None].expand(T, s.shape[1]), T).min(0).values
    first_pos = torch.where(s > 0, torch.arange(T)[:, None].expand(T, s.shape[1]), T).min(0).values
    has_neg = first_neg < T
    assert (first_pos[has_neg] < first_neg[has_neg]).all()
    assert has_neg.any()  # the test exercised negative spikes


def test_signed_neuron_takes_back_an_early_spike():
    # +1 early fires a spike; then -1: the net input is 0, so the net count must return to 0
    neuron = IFNeuron(1.0, signed=True)
    out = neuron(torch.tensor([[1.0], [-1.0], [0.0]]))
    assert out.squeeze(1).tolist() == [1.0, -1.0, 0.0]
    unsigned = IFNeuron(1.0, signed=False)(torch.tensor([[1.0], [-1.0], [0.0]]))
    assert unsigned.sum().item() == 1.0  # the baseline keeps the wrong spike


def test_signed_and_unsigned_agree_on_constant_input():
    x = torch.randn(5000) * 2
    for T in (3, 7):
        a = IFNeuron(0.9, signed=True).forward_constant(x, T)
        b = IFNeuron(0.9, signed=False).forward_constant(x, T)
        assert torch.equal(a, b)


def test_streaming_steps_equal_multistep():
    torch.manual_seed(1)
    x = torch.randn(5, 3, 4)
    neuron = IFNeuron(0.7, signed=True)
    multi = neuron(x)
    neuron.reset()
    steps = torch.stack([neuron.step(x[t]) for t in range(5)])
    assert torch.equal(multi, steps)


def test_threshold_must_be_positive():
    with pytest.raises(ValueError, match="positive threshold"):
        IFNeuron(0.0)


@pytest.mark.parametrize("signed", [True, False])
def test_spikes_keep_the_input_layout_and_values(signed):
    # a converted network runs channels-last; the state and output follow the input's layout
    torch.manual_seed(2)
    T, x = 4, torch.randn(4 * 3, 8, 5, 6) * 1.5
    neuron = IFNeuron(0.6, signed=signed)
    plain = neuron(x.reshape(T, 3, 8, 5, 6))
    assert plain.is_contiguous()
    last = x.contiguous(memory_format=torch.channels_last).reshape(T, 3, 8, 5, 6)
    assert is_channels_last(last[0])
    out = neuron(last)
    assert all(is_channels_last(out[t]) for t in range(T)) and torch.equal(out, plain)
    const = neuron.forward_constant(last[0], T)
    assert is_channels_last(const[0]) and torch.equal(const, neuron.forward_constant(x[:3].contiguous(), T))
    # streaming (int8 count, one step at a time) agrees as well
    neuron.reset()
    assert torch.equal(torch.stack([neuron.step(last[t], horizon=T) for t in range(T)]), plain)
