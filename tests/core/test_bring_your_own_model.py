"""Models as people have them (torchvision's, random weights): stem max pools, refusals."""

import pytest
import torch
import torchvision
from torch import nn

from fastsnn import ConversionError, QuantReLU, convert_to_snn, quantize_model
from tests.helpers import randomize_bn


def _resnet18(bits: int) -> nn.Module:
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18(weights=None, num_classes=10), bias_offset=0.3)
    return quantize_model(model, bits, alpha_init=1.0).eval()


@pytest.mark.parametrize("bits", [2, 3])
def test_resnet_stem_max_pool_moves_in_front_of_the_first_neurons_and_stays_bit_exact(bits):
    ann = _resnet18(bits)
    snn = convert_to_snn(ann)
    first_name, first = snn.neurons()[0]
    assert first.constant_input and first.path == "relu"
    node = next(n for n in snn.net.graph.nodes if n.op == "call_module" and n.target == first_name)
    assert node.args[0].target == "maxpool"  # the pool now runs on the analog input, before the neurons
    x = torch.randn(4, 3, 32, 32)
    seen = {}
    hooks = [
        ann.maxpool.register_forward_hook(lambda m, i, o: seen.__setitem__("ann", o)),
        first.register_forward_hook(lambda m, i, o: seen.__setitem__("snn", o)),
    ]
    with torch.no_grad():
        ann(x)
        snn(x)
    for h in hooks:
        h.remove()
    T, alpha = snn.timesteps, ann.relu.alpha.item()
    ann_levels = (seen["ann"] / alpha * T).round()  # the quantized ANN's level of every unit
    spikes = seen["snn"].reshape(T, *seen["ann"].shape) / alpha
    assert torch.equal(spikes, spikes.round())  # every step is a whole spike (+1, 0 or -1)
    assert torch.equal(spikes.sum(0), ann_levels)  # the spike counts are the ANN's levels, unit by unit
    assert ann_levels.unique().numel() == T + 1  # every level occurs: the test is not trivial


def test_a_converted_torchvision_model_streams_the_multistep_outputs():
    ann = _resnet18(2)
    snn = convert_to_snn(ann)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, steps = snn(x, return_steps=True)
        snn.mode = "streaming"
        s_out, s_steps = snn(x, return_steps=True)
        q = ann(x)
    assert torch.allclose(s_steps, steps, atol=1e-5) and torch.allclose(s_out, out, atol=1e-5)
    assert out.shape == q.shape and not torch.allclose(out, torch.zeros_like(out))


def test_torchvision_models_with_other_activations_or_inner_max_pools_are_refused_by_name():
    with pytest.warns(UserWarning, match="Hardsigmoid, Hardswish"):
        ann = quantize_model(torchvision.models.mobilenet_v3_small(weights=None, num_classes=10), 2).eval()
    with pytest.raises(ConversionError, match=r"'features\.1\.block\.1\.scale_activation' \(Hardsigmoid\).*cannot"):
        convert_to_snn(ann)
    vgg = quantize_model(torchvision.models.vgg11(weights=None, num_classes=10), 2).eval()
    with pytest.raises(ConversionError, match=r"module 'features\.5' is max pooling.*max_pool='avg'"):
        convert_to_snn(vgg)  # features.2 (after the first activation) moved; features.5 cannot
    vgg = quantize_model(torchvision.models.vgg11(weights=None, num_classes=10), 2, max_pool="avg").eval()
    assert isinstance(vgg.features[2], nn.MaxPool2d) and isinstance(vgg.features[5], nn.AvgPool2d)
    assert len(convert_to_snn(vgg).neurons()) == sum(isinstance(m, QuantReLU) for m in vgg.modules())
