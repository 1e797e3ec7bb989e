"""fastsnn.diagnose.layer_errors: each neuron layer's error against the quantized ANN, split into
the error the layer makes itself (fed inputs with the ANN's rates) and the error it inherits."""

import pytest
import torch
from torch import nn

import fastsnn
from fastsnn.backbones import create_backbone
from fastsnn.diagnose import layer_errors
from tests.helpers import randomize_bn

T = 3  # 2**bits - 1 for 2 bits: the first layer is exact


def _chain() -> tuple[nn.Module, nn.Module]:
    """conv -> relu -> conv -> relu -> conv -> relu -> pool -> linear, 2-bit activations, float weights."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    q = fastsnn.quantize_model(net, 2, alpha_init=1.0).eval()
    snn = fastsnn.convert_to_snn(q, timesteps=T, compiled=False, integer_kernels=False, channels_last=False)
    return q, snn


def _images(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    net = randomize_bn(create_backbone("resnet20", num_classes=10, in_channels=1, width=0.25), bias_offset=0.3)
    q = fastsnn.quantize_model(net, 2, alpha_init=1.0).eval()
    snn = fastsnn.convert_to_snn(q, timesteps=T)
    x = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    return q, snn, layer_errors(q, snn, [x])


def test_the_first_layer_is_exact_and_the_second_inherits_nothing(resnet):
    q, snn, rows = resnet
    assert [r["layer"] for r in rows] == [layer.path for layer in snn.layers]
    first, second = rows[0], rows[1]
    assert first["total"] == first["own"] == first["inherited"] == 0.0  # analog input at T = 2**bits - 1
    # the second layer's inputs are the first layer's exact spike trains: all its error is its own
    assert second["wrong_inputs"] == 0.0 and second["inherited"] == 0.0
    assert second["own"] == second["total"] > 0  # a random net at T = 3 has spike-timing errors


def test_deeper_layers_inherit_and_the_parts_add_up(resnet):
    rows = resnet[2]
    assert any(r["wrong_inputs"] > 0 and r["inherited"] != 0 for r in rows[2:])
    for r in rows:
        assert r["total"] == pytest.approx(r["own"] + r["inherited"], abs=1e-12)
        assert r["own"] >= 0 and 0 <= r["wrong_inputs"] <= 1
        assert (r["inherited"] != 0) <= (r["wrong_inputs"] > 0)  # only wrong input rates bring inherited error


def test_own_error_is_the_layer_fed_spike_trains_of_the_anns_activations():
    q, snn = _chain()
    with torch.no_grad():  # the SNN's first layer silenced: its every non-zero rate is wrong
        snn.net.get_submodule("0").weight.zero_()
        snn.net.get_submodule("0").bias.zero_()
    x = _images()
    rows = layer_errors(q, snn, [x])
    assert rows[0]["total"] > 0 and rows[0]["own"] == rows[0]["total"]  # fed the image: nothing inherited
    assert rows[1]["wrong_inputs"] > 0
    # by hand: the ANN's first activation as the trains of neurons driven by it as a constant current
    # (where the silenced layer's rate is right, the activation is 0: the same empty train)
    acts = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o)) for n, m in q.named_modules()]
    with torch.no_grad():
        q(x)
        for h in hooks:
            h.remove()
        trains = fastsnn.IFNeuron(q[1].alpha.detach()).forward_constant(acts["1"], T)
        current = q[2](trains.flatten(0, 1)).reshape(T, len(x), *acts["3"].shape[1:])
        rate = fastsnn.IFNeuron(q[3].alpha.detach())(current).mean(0)
    assert rows[1]["own"] == pytest.approx(float(((rate - acts["3"]) ** 2).mean()), rel=1e-5)
    assert rows[1]["inherited"] == pytest.approx(rows[1]["total"] - rows[1]["own"])


def test_batches_add_up_to_one_batch_of_them_all():
    q, snn = _chain()
    x1, x2 = _images(4, seed=2), _images(6, seed=3)
    apart = layer_errors(q, snn, [(x1, None), (x2, None)])  # (input, target) batches: the input is used
    together = layer_errors(q, snn, [torch.cat([x1, x2])])
    for a, b in zip(apart, together):
        for key in ("total", "own", "inherited", "wrong_inputs"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-12)


def test_leaves_the_models_as_they_were():
    q, snn = _chain()
    q.train()
    snn.mode, snn.chunk_size = "streaming", 2
    before = {k: v.clone() for k, v in snn.state_dict().items()}
    layer_errors(q, snn, [_images()])
    assert q.training and (snn.mode, snn.chunk_size) == ("streaming", 2)
    assert all(torch.equal(before[k], v) for k, v in snn.state_dict().items())
