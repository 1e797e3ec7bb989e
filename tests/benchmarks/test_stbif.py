"""bench_utils.STBIFSNN: SpikingJelly's STBIFNode (SpikeZIP's ST-BIF) simulating one of our quantized
ANNs. Under our input encoding (the image at every step) it is our signed IF neuron plus
SpikeZIP's bound of 2**b - 1 on the net spike count: the same outputs as our signed SNN for
t <= 2**b - 1 steps, different beyond, where the bound binds."""

import pytest
import torch

import fastsnn
from benchmarks import bench_utils
from fastsnn.backbones import create_backbone
from tests.helpers import randomize_bn

pytestmark = pytest.mark.skipif(bench_utils.spikingjelly_version() is None, reason="SpikingJelly not installed")


def _qmodel(name: str, bits: int) -> torch.nn.Module:
    torch.manual_seed(0)
    net = randomize_bn(create_backbone(name, num_classes=10, in_channels=1, width=0.25), bias_offset=0.3)
    return fastsnn.quantize_model(net, bits, weight_bits=bits, alpha_init=2.0).eval()


@pytest.mark.parametrize("name,bits", [("vgg11", 2), ("resnet20", 2), ("resnet20", 3)])
def test_stbif_gives_our_signed_snns_outputs_up_to_t_equal_2_pow_b_minus_1(name, bits):
    q = _qmodel(name, bits)
    T = 2**bits - 1
    x = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = fastsnn.convert_to_snn(q, timesteps=T, signed=True)
    ours.mode = "streaming"
    stbif = bench_utils.STBIFSNN(q)
    assert stbif.timesteps == T and len(stbif.neurons) == {"vgg11": 8, "resnet20": 19}[name]
    with torch.no_grad():
        _, steps = ours(x, return_steps=True)
        outs = stbif.running_outputs(x, T, set(range(1, T + 1)))
        unsigned = fastsnn.convert_to_snn(q, timesteps=T, signed=False)(x)
    for t in range(1, T + 1):
        # SpikeZIP's read-out is the sum of the outputs so far / T; ours the mean so far
        torch.testing.assert_close(outs[t] * T / t, steps[t - 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stbif(x), ours(x), atol=1e-5, rtol=1e-5)
    assert (stbif(x) - unsigned).abs().max() > 1e-3  # the comparison can tell signed from unsigned


def test_stbif_bounds_the_net_spike_count_by_the_quantization_levels():
    q = _qmodel("vgg11", 2)
    stbif = bench_utils.STBIFSNN(q)  # T = 3, level = 4: net count in [0, 3]
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 3
    counts = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: counts.append(mod.node.acc_q.detach().clone()))
        for m in stbif.neurons
    ]
    with torch.no_grad():
        long_run = stbif.running_outputs(x, 9)[9]
    for h in hooks:
        h.remove()
    assert all(float(c.min()) >= 0 and float(c.max()) <= 3 for c in counts)
    assert max(float(c.max()) for c in counts) == 3  # the bound is reached: it binds beyond t = 3
    ours = fastsnn.convert_to_snn(q, timesteps=9, signed=True)
    with torch.no_grad():
        assert (long_run * 3 / 9 - ours(x)).abs().max() > 1e-3  # ... where ours does not bound the count


def test_stbif_needs_quantized_activations():
    net = create_backbone("vgg11", num_classes=10, in_channels=1, width=0.25)
    with pytest.raises(ValueError, match="QuantReLU"):
        bench_utils.STBIFSNN(net)
    with pytest.raises(ValueError, match="bits set"):
        bench_utils.STBIFSNN(fastsnn.quantize_model(net, None))
