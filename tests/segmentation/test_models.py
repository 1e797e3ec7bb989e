"""DeepLab models: tracing, conversion (concat, average pooling, upsampling), exactness."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fastsnn import QuantReLU, convert_to_snn, quantize_model
from fastsnn.convert import GraphNeuron, trace
from tasks.segmentation.deeplab import ASPP, DeepLabV1, DeepLabV3
from tests.helpers import randomize_bn

NUM_CLASSES = 4


def _models():
    return {
        "deeplabv1": lambda: DeepLabV1(NUM_CLASSES, width=0.125, head_channels=64, head_dilation=2),
        "deeplabv3": lambda: DeepLabV3(NUM_CLASSES, width=0.125, aspp_channels=32, atrous_rates=(1, 2, 3)),
    }


def _quantized(name, bits, alpha=1.0):
    torch.manual_seed(0)
    net = randomize_bn(_models()[name](), bias_offset=0.3)  # most units active
    return quantize_model(net, bits, alpha_init=alpha).eval()


@pytest.mark.parametrize("name", ["deeplabv1", "deeplabv3"])
def test_models_output_logits_at_input_resolution_and_trace(name):
    net = _models()[name]()
    x = torch.randn(2, 3, 40, 56)  # not square and not a multiple of the output stride
    assert net(x).shape == (2, NUM_CLASSES, 40, 56)
    gm = trace(quantize_model(net, 2))
    assert gm(x).shape == (2, NUM_CLASSES, 40, 56)  # the fx graph handles any input size


@pytest.mark.parametrize("name", ["deeplabv1", "deeplabv3"])
def test_models_have_one_relu_per_activation_and_no_max_pooling(name):
    net = _models()[name]()
    relus = [m for m in net.modules() if type(m) is nn.ReLU]
    assert len(relus) == len({id(m) for m in relus}) > 0
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) for m in net.modules())


def _first_layer_outputs(ann, snn, x):
    first_relu = next(m for m in ann.modules() if isinstance(m, QuantReLU))
    first_neuron = snn.net.get_submodule(snn.layers[0].name)
    assert snn.layers[0].constant_input
    seen = {}
    h1 = first_relu.register_forward_hook(lambda m, i, o: seen.__setitem__("ann", o))
    h2 = first_neuron.register_forward_hook(lambda m, i, o: seen.__setitem__("snn", o))
    with torch.no_grad():
        ann(x)
        snn(x)
    h1.remove()
    h2.remove()
    T = snn.timesteps
    return seen["ann"], seen["snn"].reshape(T, x.shape[0], *seen["snn"].shape[1:]).mean(0)


@pytest.mark.parametrize("name", ["deeplabv1", "deeplabv3"])
@pytest.mark.parametrize("bits", [2, 3])
def test_first_spiking_layer_reproduces_the_quantized_ann_exactly(name, bits):
    ann = _quantized(name, bits)
    snn = convert_to_snn(ann)
    assert snn.timesteps == 2**bits - 1
    x = torch.randn(2, 3, 32, 32)
    expected, got = _first_layer_outputs(ann, snn, x)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert (expected > 0).any() and (expected < 1.0).any()  # several levels are covered


def _spiking_region_ops(snn):
    """Ops of the SNN graph whose input carries spike trains (after some neuron, before the output)."""
    gm = snn.net
    temporal, ops = set(), []
    for node in gm.graph.nodes:
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, GraphNeuron) or any(a in temporal for a in node.all_input_nodes):
            temporal.add(node)
            ops.append(node.target if node.op != "call_module" else type(module))
    return ops


def test_deeplabv3_aspp_concat_pooling_and_upsampling_run_on_spike_trains():
    ann = _quantized("deeplabv3", 3)
    snn = convert_to_snn(ann)
    ops = _spiking_region_ops(snn)
    assert torch.cat in ops  # the ASPP branches' spike trains are concatenated
    assert F.interpolate in ops  # the image-pooling branch is upsampled, and the logits
    assert nn.AdaptiveAvgPool2d in ops
    # ASPP: 5 branches + projection neurons, all converted
    aspp_layers = [layer for layer in snn.layers if layer.path.startswith("aspp.")]
    assert len(aspp_layers) == 6
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        out = snn(x)
    assert out.shape == (2, NUM_CLASSES, 48, 40)


@pytest.mark.parametrize("name", ["deeplabv1", "deeplabv3"])
def test_snn_output_is_the_classifier_on_the_mean_spike_rate_upsampled_like_the_ann(name):
    ann = _quantized(name, 2)
    snn = convert_to_snn(ann)
    last = snn.net.get_submodule(snn.layers[-1].name)
    seen = {}
    hook = last.register_forward_hook(lambda m, i, o: seen.__setitem__("spikes", o))
    x = torch.randn(2, 3, 36, 44)
    with torch.no_grad():
        out = snn(x)
        T = snn.timesteps
        rate = seen["spikes"].reshape(T, 2, *seen["spikes"].shape[1:]).mean(0)
        expected = F.interpolate(ann.classifier(rate), size=(36, 44), mode="bilinear", align_corners=False)
    hook.remove()
    assert torch.allclose(out, expected, atol=1e-5)
    # and the per-step curve: the output after t steps uses the running mean of the spikes
    with torch.no_grad():
        final, steps = snn(x, return_steps=True)
    assert steps.shape == (T, 2, NUM_CLASSES, 36, 44)
    assert torch.allclose(steps[-1], out, atol=1e-5) and torch.allclose(final, out, atol=1e-5)
    snn.mode = "streaming"  # one step at a time: same outputs
    with torch.no_grad():
        final_s, steps_s = snn(x, return_steps=True)
    assert torch.allclose(steps_s, steps, atol=1e-5) and torch.allclose(final_s, out, atol=1e-5)


@pytest.mark.parametrize("name", ["deeplabv1", "deeplabv3"])
def test_snn_approaches_the_ann_at_high_resolution(name):
    # At 6 bits (T = 63) every layer's rate is close to the ANN's activation, so the whole
    # network (concat, pooling, upsampling included) must agree with the ANN closely; a
    # converter that mixed up time steps or branches would not.
    ann = _quantized(name, 6, alpha=2.0)
    snn = convert_to_snn(ann)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, s = ann(x), snn(x)
    rel = (s - a).norm() / a.norm()
    assert rel < 0.1, rel
    assert (s.argmax(1) == a.argmax(1)).float().mean() > 0.9


def test_aspp_refuses_nothing_and_keeps_branch_order():
    aspp = ASPP(8, 4, rates=(1, 2))
    x = torch.randn(2, 8, 6, 6)
    y = torch.cat([b(x) for b in aspp.branches], 1)
    assert y.shape == (2, 16, 6, 6)
    assert aspp(x).shape == (2, 4, 6, 6)
