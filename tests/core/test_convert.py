import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fastsnn import ConversionError, IFNeuron, QuantReLU, SpikingModel, convert_to_snn, quantize_model
from fastsnn.backbones.resnet import BasicBlock
from tests.helpers import randomize_bn


class FirstLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("signed", [True, False])
def test_first_spiking_layer_reproduces_the_quantized_ann_exactly(bits, signed):
    torch.manual_seed(bits)
    ann = quantize_model(randomize_bn(FirstLayer()), bits, alpha_init=1.5).eval()
    x = torch.randn(8, 3, 10, 10)
    snn = convert_to_snn(ann, signed=signed)
    assert snn.timesteps == 2**bits - 1
    with torch.no_grad():
        expected = ann(x)
        got = snn(x)  # the model output is the neuron layer's mean over T
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert (expected > 0).any() and (expected < 1.5).any()  # the test covers several levels


class OneHidden(nn.Module):
    """Two first-layer branches, concatenated, upsampled, pooled, output layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        b = F.interpolate(self.b(x), scale_factor=2, mode="bilinear", align_corners=False)
        y = self.head(torch.cat([self.a(x), b], 1))
        return F.adaptive_avg_pool2d(y, 1).flatten(1)


def test_one_hidden_layer_network_is_exact_through_concat_and_upsampling():
    torch.manual_seed(0)
    ann = quantize_model(randomize_bn(OneHidden()), 3, alpha_init=1.0).eval()
    x = torch.randn(4, 1, 8, 8)
    snn = convert_to_snn(ann)
    with torch.no_grad():
        assert torch.allclose(snn(x), ann(x), atol=1e-5)


class Net(nn.Module):
    """Nested Sequential, residual blocks, concat of spike trains, upsampling, avg pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(BasicBlock(8, 8), nn.Sequential(nn.AvgPool2d(2), BasicBlock(8, 8)))
        self.side = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.3))
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        s = self.stem(x)
        y = self.body(s)
        y = torch.cat([self.up(y), self.side(s)], dim=1)
        y = F.avg_pool2d(self.fuse(y), 2)
        return self.fc(y.view(y.size(0), -1))


def _reference_snn(ann, x, T, signed):
    """Independent step-by-step simulation: the ANN's own forward run T times, with every
    QuantReLU replaced by a stateful IF neuron, and the outputs averaged."""
    ref = copy.deepcopy(ann).eval()

    class Step(nn.Module):
        def __init__(self, alpha):
            super().__init__()
            self.neuron = IFNeuron(alpha.detach(), signed)

        def forward(self, z):
            return self.neuron.step(z)

    for name, m in list(ref.named_modules()):
        if isinstance(m, QuantReLU):
            parent, _, child = name.rpartition(".")
            setattr(ref.get_submodule(parent) if parent else ref, child, Step(m.alpha))
    with torch.no_grad():
        outs = [ref(x) for _ in range(T)]
    return torch.stack(outs).cumsum(0) / torch.arange(1, T + 1).reshape(T, 1, 1)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("T", [3, 7])
def test_folded_time_simulation_equals_a_step_by_step_reference(signed, T):
    torch.manual_seed(0)
    ann = quantize_model(randomize_bn(Net()), 2, alpha_init=1.0).eval()
    x = torch.randn(6, 1, 8, 8)
    snn = convert_to_snn(ann, timesteps=T, signed=signed)
    ref = _reference_snn(ann, x, T, signed)
    with torch.no_grad():
        out, steps = snn(x, return_steps=True)
        plain = snn(x)
    assert steps.shape == (T, 6, 5)
    assert torch.allclose(steps, ref, atol=1e-4), (steps - ref).abs().max()
    assert torch.allclose(out, plain, atol=1e-5) and torch.allclose(out, steps[-1])


def test_conversion_does_not_change_the_ann():
    torch.manual_seed(0)
    ann = quantize_model(randomize_bn(Net()), 2, weight_bits=3).train()
    before = {k: v.clone() for k, v in ann.state_dict().items()}
    x = torch.randn(2, 1, 8, 8)
    ann.eval()
    y = ann(x)
    ann.train()
    snn = convert_to_snn(ann)
    assert ann.training  # its mode is untouched
    after = ann.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, QuantReLU) for m in ann.modules())
    ann.eval()
    assert torch.equal(ann(x), y)
    assert not any(p is q for p in snn.parameters() for q in ann.parameters())


def test_every_quant_relu_call_becomes_its_own_neuron_layer():
    class Reuse(nn.Module):  # like torchvision's BasicBlock: one ReLU instance used twice
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.relu = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.ReLU()
            self.out = nn.Conv2d(2, 1, 1)

        def forward(self, x):
            return self.out(self.relu(self.c2(self.relu(self.c1(x)))))

    snn = convert_to_snn(quantize_model(Reuse(), 2))
    assert [layer.path for layer in snn.layers] == ["relu", "relu"]
    assert len({layer.name for layer in snn.layers}) == 2
    assert [layer.constant_input for layer in snn.layers] == [True, False]


def test_state_dict_round_trip():
    torch.manual_seed(0)
    ann = quantize_model(randomize_bn(Net()), 2, weight_bits=3).eval()
    snn = convert_to_snn(ann)
    with torch.no_grad():
        for p in snn.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # as after fine-tuning
    fresh = convert_to_snn(ann)
    fresh.load_state_dict(snn.state_dict())
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), snn(x))
        assert not torch.equal(convert_to_snn(ann)(x), snn(x))


def test_timesteps_can_be_changed_after_conversion():
    ann = quantize_model(FirstLayer(), 2, alpha_init=1.0).eval()
    snn = convert_to_snn(ann)
    assert snn.timesteps == 3
    snn.timesteps = 7
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        _, steps = snn(x, return_steps=True)
    assert steps.shape[0] == 7
    # at T=7 the first layer realises 8 levels of [0, alpha]
    levels = torch.arange(8) / 7
    assert torch.isclose(steps[-1].reshape(-1, 1), levels).any(1).all()


def test_mixed_bit_widths_need_explicit_timesteps():
    ann = quantize_model(Net(), 2)
    ann.fuse[1].bits = 3
    with pytest.raises(ConversionError, match="different bit widths"):
        convert_to_snn(ann)
    assert convert_to_snn(ann, timesteps=5).timesteps == 5


def _wrap(block):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), block, nn.Conv2d(4, 2, 1))


class FunctionalSilu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()

    def forward(self, x):
        return self.act(F.silu(self.conv(x)) + x)


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(4, 4, 1), nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x) * x)


class WithGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.gelu, self.act = nn.Conv2d(4, 4, 1), nn.GELU(), nn.ReLU()

    def forward(self, x):
        return self.act(self.gelu(self.conv(x)))


@pytest.mark.parametrize(
    "block, pattern",
    [
        (
            nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.MaxPool2d(2)),
            r"module '2\.2' is max pooling.*stride-2.*max_pool='avg'",
        ),
        (FunctionalSilu(), r"forward of module '2' \(FunctionalSilu\) applies silu.*cannot represent"),
        (nn.Sequential(nn.Conv2d(4, 4, 1), nn.Sigmoid(), nn.Conv2d(4, 4, 1), nn.ReLU()), r"module '2\.1' \(Sigmoid\)"),
        (WithGelu(), r"module '2\.gelu' \(GELU\)"),
        (Gated(), r"forward of module '2' \(Gated\).*multiplies"),
        # after the last neurons, but feeding the output layer: an analog layer in disguise
        (nn.Sequential(nn.Conv2d(4, 4, 1), nn.Tanh()), r"module '2\.1' \(Tanh\)"),
    ],
)
def test_unsupported_layers_are_refused_naming_the_module(block, pattern):
    ann = quantize_model(_wrap(block), 2)
    with pytest.raises(ConversionError, match=pattern):
        convert_to_snn(ann)


def test_unquantized_relu_and_untraceable_models_get_clear_errors():
    ann = quantize_model(_wrap(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())), 2)
    ann[2][1] = nn.ReLU()
    with pytest.raises(ConversionError, match=r"module '2\.1' is a plain nn\.ReLU: quantize"):
        convert_to_snn(ann)

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv2d(1, 2, 3), nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(ConversionError, match="could not trace"):
        convert_to_snn(quantize_model(Branchy(), 2))
    with pytest.raises(ConversionError, match="no QuantReLU"):
        convert_to_snn(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_nonlinear_ops_on_the_analog_side_are_allowed():
    # max pooling of the analog input and a sigmoid after the output layer are computed
    # exactly as in the ANN (before the first / after the last neurons)
    ann = quantize_model(
        nn.Sequential(
            nn.MaxPool2d(2), nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3), nn.Sigmoid()
        ),
        2,
    ).eval()
    snn = convert_to_snn(ann)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(snn(x), ann(x), atol=1e-6)


def test_batch_norm_is_folded_and_the_snn_stays_in_eval_mode():
    ann = quantize_model(randomize_bn(Net()), 2).eval()
    snn = convert_to_snn(ann)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in snn.modules())
    snn.train()
    assert not any(m.training for m in snn.net.modules())
    assert isinstance(snn, SpikingModel) and isinstance(snn, nn.Module)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_models_convert_and_run():
    ann = quantize_model(randomize_bn(Net()), 2).eval().cuda()
    snn = convert_to_snn(ann)
    x = torch.randn(4, 1, 8, 8, device="cuda")
    with torch.no_grad():
        out, steps = snn(x, return_steps=True)
    assert out.device.type == "cuda" and steps.shape == (3, 4, 5)
    cpu = convert_to_snn(ann.cpu())
    with torch.no_grad():
        assert torch.allclose(cpu(x.cpu()), out.cpu(), atol=1e-4)


@pytest.mark.parametrize("signed", [True, False])
def test_streaming_mode_gives_the_multistep_outputs(signed):
    torch.manual_seed(0)
    ann = quantize_model(randomize_bn(Net()), 2, alpha_init=1.0).eval()
    x = torch.randn(5, 1, 8, 8)
    snn = convert_to_snn(ann, timesteps=7, signed=signed)
    with torch.no_grad():
        out, steps = snn(x, return_steps=True)
        snn.mode = "streaming"
        s_out, s_steps = snn(x, return_steps=True)
        plain = snn(x)
    assert torch.allclose(s_steps, steps, atol=1e-5) and torch.allclose(s_out, out, atol=1e-5)
    assert torch.allclose(plain, out, atol=1e-5)
    assert all(n.neuron.v is None for _, n in snn.neurons())  # no state left behind
    with pytest.raises(ValueError, match="mode"):
        snn.mode = "fast"


class InputSkip(nn.Module):
    """The analog input, through its own conv, joins the spikes of the second layer."""

    def __init__(self):
        super().__init__()
        self.c1, self.a1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)
        self.skip, self.a2, self.out = nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(self.a2(self.c2(self.a1(self.c1(x))) + self.skip(x)))


def test_streaming_mode_feeds_analog_values_that_meet_spikes_once_per_step():
    # the skip's value is computed once, before the steps; it must not be repeated over T there
    torch.manual_seed(0)
    snn = convert_to_snn(quantize_model(InputSkip(), 2, alpha_init=1.0).eval(), timesteps=5)
    x = torch.randn(3, 1, 6, 6)
    with torch.no_grad():
        out, steps = snn(x, return_steps=True)
        snn.mode = "streaming"
        s_out, s_steps = snn(x, return_steps=True)
    assert torch.allclose(s_steps, steps, atol=1e-5) and torch.allclose(s_out, out, atol=1e-5)


@pytest.mark.parametrize("mode", ["multistep", "streaming"])
def test_chunked_batches_give_the_whole_batch_outputs(mode):
    torch.manual_seed(0)
    ann = quantize_model(randomize_bn(Net()), 2, alpha_init=1.0).eval()
    x = torch.randn(7, 1, 8, 8)
    snn = convert_to_snn(ann, timesteps=5, mode=mode)
    with torch.no_grad():
        out, steps = snn(x, return_steps=True)
        snn.chunk_size = 3  # chunks of 3, 3 and 1 samples
        c_out, c_steps = snn(x, return_steps=True)
        c_plain = snn(x)
    assert steps.shape == c_steps.shape == (5, 7, *out.shape[1:])
    assert torch.allclose(c_steps, steps, atol=1e-6) and torch.allclose(c_out, out, atol=1e-6)
    assert torch.allclose(c_plain, out, atol=1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        convert_to_snn(ann, chunk_size=0)


def test_compiled_neurons_give_the_eager_outputs():
    torch.manual_seed(0)
    ann = quantize_model(randomize_bn(Net()), 2, alpha_init=1.0).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        eager = convert_to_snn(ann, compiled=False)(x, return_steps=True)
        fused = convert_to_snn(ann, compiled=True)(x, return_steps=True)
    assert torch.allclose(eager[1], fused[1], atol=1e-5)
