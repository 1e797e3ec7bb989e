import pytest
import torch
from torch import nn

from fastsnn import QuantConv2d, QuantLinear, QuantReLU, quantize_model
from fastsnn.quant import apot_levels, project_to_levels, uniform_levels


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_quant_relu_outputs_lie_on_the_levels(bits):
    q = QuantReLU(bits, alpha_init=2.5)
    x = torch.randn(10_000) * 3
    y = q(x)
    levels = torch.arange(2**bits) * 2.5 / (2**bits - 1)
    assert torch.isclose(y[:, None], levels[None]).any(1).all()
    assert y.min() >= 0 and y.max() <= 2.5 + 1e-6
    # nearest level: the error inside the range is at most half a step
    inside = (x > 0) & (x < 2.5)
    assert ((y - x)[inside].abs() <= 2.5 / (2**bits - 1) / 2 + 1e-6).all()


@pytest.mark.parametrize("fused", [False, True])
def test_quant_relu_gradients_match_hand_computed_values(fused):
    q = QuantReLU(2, alpha_init=3.0, fused=fused)  # levels 0, 1, 2, 3
    x = torch.tensor([-1.0, 0.4, 1.2, 2.9, 4.0, 7.0], requires_grad=True)
    y = q(x)
    assert y.tolist() == pytest.approx([0.0, 0.0, 1.0, 3.0, 3.0, 3.0])
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y.backward(g)
    # d y/d x: straight-through inside (0, alpha], zero for x <= 0 and x > alpha
    assert x.grad.tolist() == pytest.approx([0.0, 2.0, 3.0, 4.0, 0.0, 0.0])
    # d y/d alpha: q - x/alpha inside, 1 above, 0 where the ReLU is off
    u = torch.tensor([0.4, 1.2, 2.9]) / 3.0
    qv = torch.tensor([0.0, 1.0, 3.0]) / 3.0
    expected = (torch.tensor([2.0, 3.0, 4.0]) * (qv - u)).sum() + 5.0 + 6.0
    assert q.alpha.grad.item() == pytest.approx(expected.item(), rel=1e-5)


def test_fused_quant_relu_gives_the_eager_values_and_gradients():
    torch.manual_seed(0)
    x = (torch.randn(4, 8, 6, 6) * 3).requires_grad_(True)
    g = torch.randn(4, 8, 6, 6)
    results = []
    for fused in (False, True):
        q = QuantReLU(3, alpha_init=2.0, fused=fused)
        xi = x.detach().clone().requires_grad_(True)
        y = q(xi)
        y.backward(g)
        results.append((y.detach(), xi.grad, q.alpha.grad))
    (y0, gx0, ga0), (y1, gx1, ga1) = results
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1)
    assert torch.allclose(ga0, ga1, rtol=1e-5)
    model = quantize_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), 2, fused=True)
    assert model[1].fused


def test_unquantized_quant_relu_is_a_clipped_relu():
    q = QuantReLU(None, alpha_init=2.0)
    x = torch.tensor([-1.0, 0.5, 3.0])
    assert q(x).tolist() == [0.0, 0.5, 2.0]


def test_apot_levels_are_sums_of_powers_of_two_and_normalised():
    assert apot_levels(2) == pytest.approx((0.0, 0.25, 0.5, 1.0))
    for k in (1, 2, 3, 4):
        levels = apot_levels(k)
        assert levels[0] == 0.0 and levels[-1] == 1.0
        assert len(levels) <= 2**k and len(set(levels)) == len(levels)
    assert uniform_levels(2) == pytest.approx((0.0, 1 / 3, 2 / 3, 1.0))


def test_projection_picks_the_nearest_level():
    levels = torch.tensor(apot_levels(4))
    u = torch.rand(5000)
    nearest = levels[(u[:, None] - levels[None]).abs().argmin(1)]
    assert torch.allclose(project_to_levels(u, levels), nearest)


@pytest.mark.parametrize("mode", ["apot", "uniform"])
def test_quantized_weights_take_few_values_and_pass_gradients(mode):
    conv = QuantConv2d(4, 8, 3, weight_bits=3, weight_quant=mode)
    w = conv.quantized_weight()
    assert w.unique().numel() <= 2 * 2**2 - 1  # sign x 4 magnitudes, one shared zero
    x = torch.randn(2, 4, 6, 6)
    conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert conv.weight_quantizer.alpha.grad is not None


def _mlp():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
        nn.ReLU(),
        nn.Linear(5, 3),
    )


def test_quantize_model_replaces_relus_and_keeps_first_and_last_at_8_bits():
    model = quantize_model(_mlp(), bits=2, weight_bits=3)
    assert [type(m) for m in model if not isinstance(m, nn.Flatten)] == [
        QuantConv2d,
        QuantReLU,
        QuantConv2d,
        QuantReLU,
        QuantLinear,
        QuantReLU,
        QuantLinear,
    ]
    assert model[0].weight_quantizer.mode == "max" and model[0].weight_quantizer.bits == 8
    assert model[7].weight_quantizer.mode == "max" and model[7].weight_quantizer.bits == 8
    assert model[2].weight_quantizer.mode == "apot" and model[2].weight_quantizer.bits == 3
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_quantize_model_without_weight_bits_keeps_float_weights():
    model = quantize_model(_mlp(), bits=4)
    assert type(model[0]) is nn.Conv2d and type(model[7]) is nn.Linear
    model = quantize_model(_mlp(), bits=4, weight_bits=4, first_last_bits=None)
    assert type(model[0]) is nn.Conv2d and type(model[7]) is nn.Linear and model[2].weight_quantizer.bits == 4


def test_requantizing_changes_bits_and_keeps_learned_values():
    model = quantize_model(_mlp(), bits=4, weight_bits=4)
    with torch.no_grad():
        model[1].alpha.fill_(1.7)
    weight = model[2].weight
    quantize_model(model, bits=3, weight_bits=3)
    assert model[1].bits == 3 and model[1].alpha.item() == pytest.approx(1.7)
    assert model[2].weight is weight and model[2].weight_quantizer.bits == 3
    # same state dict keys: a 4-bit checkpoint loads into the 3-bit model
    fresh = quantize_model(_mlp(), bits=3, weight_bits=3)
    fresh.load_state_dict(model.state_dict())


def test_quantize_model_shares_parameters_with_the_original_layers():
    base = _mlp()
    w = base[2].weight
    model = quantize_model(base, bits=2, weight_bits=2)
    assert model[2].weight is w


def test_bad_bit_widths_are_refused():
    with pytest.raises(ValueError, match="bits"):
        QuantReLU(0)
    with pytest.raises(ValueError, match="weight_quant"):
        quantize_model(_mlp(), bits=2, weight_bits=2, weight_quant="log")
    with pytest.raises(ValueError, match="at least 2 bits"):
        quantize_model(_mlp(), bits=2, weight_bits=1)
