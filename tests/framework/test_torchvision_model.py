"""model=tv_resnet18 / model=torchvision model.name=<builder>: torchvision models through the configs."""

import torch
from hydra.utils import instantiate

from fastsnn import QuantReLU, convert_to_snn
from tests.helpers import TINY


def test_tv_resnet18_composes_and_builds_a_convertible_net_for_the_data(make_config):
    cfg = make_config("model=tv_resnet18", *TINY, tiny=False)
    assert cfg.model.net.name == "resnet18" and cfg.model.net.max_pool == "avg"
    data = instantiate(cfg.data)  # digits: 1 channel, 10 classes
    net = instantiate(cfg.model.net, num_classes=data.num_classes, in_channels=data.in_channels)
    net = instantiate(cfg.quant)(net, bits=2)
    assert net.conv1.in_channels == 1 and net.fc.out_features == 10
    # one QuantReLU per activation site: torchvision's blocks call their ReLU twice
    assert sum(isinstance(m, QuantReLU) for m in net.modules()) == 17
    snn = convert_to_snn(net.eval())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert snn(x).shape == net(x).shape == (2, 10)
    assert snn.layers[0].constant_input and len(snn.layers) == 17


def test_any_builder_by_name(make_config):
    cfg = make_config("model=torchvision", "model.name=mobilenet_v2", "model.net.small_input=true", tiny=False)
    net = instantiate(cfg.model.net, num_classes=5, in_channels=3)
    net = instantiate(cfg.quant)(net, bits=2)
    assert {m.alpha.item() for m in net.modules() if isinstance(m, QuantReLU)} == {6.0}  # ReLU6: clip from 6
    assert net.features[0][0].stride == (1, 1)
    with torch.no_grad():
        assert convert_to_snn(net.eval())(torch.randn(1, 3, 32, 32)).shape == (1, 5)
