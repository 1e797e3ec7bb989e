"""bench_utils.STBIFSNN(step_mode="s"): SpikingJelly's single-step loop gives the multi-step outputs."""

import pytest
import torch

import fastsnn
from benchmarks import bench_utils
from fastsnn.backbones import create_backbone
from tests.helpers import randomize_bn

pytestmark = pytest.mark.skipif(bench_utils.spikingjelly_version() is None, reason="SpikingJelly not installed")


@pytest.mark.parametrize("name", ["vgg11", "resnet20"])
def test_single_step_gives_the_multi_step_outputs(name):
    torch.manual_seed(0)
    net = randomize_bn(create_backbone(name, num_classes=10, in_channels=1, width=0.25), bias_offset=0.3)
    q = fastsnn.quantize_model(net, 2, weight_bits=2, alpha_init=2.0).eval()
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    multi, single = bench_utils.STBIFSNN(q), bench_utils.STBIFSNN(q, step_mode="s")
    with torch.no_grad():
        m, s = multi.running_outputs(x, 3, {1, 2, 3}), single.running_outputs(x, 3, {1, 2, 3})
        for t in (1, 2, 3):
            torch.testing.assert_close(s[t], m[t], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(single(x), fastsnn.convert_to_snn(q, timesteps=3)(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="step_mode"):
        bench_utils.STBIFSNN(q, step_mode="x")
