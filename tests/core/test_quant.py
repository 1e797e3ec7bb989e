import pytest
import torch
from torch import fx, nn
from torch.nn import functional as F

from fastsnn import ConversionError, QuantConv2d, QuantLinear, QuantReLU, convert_to_snn, quantize_model
from fastsnn.prepare import PoolConv2d, prepare_model
from fastsnn.quantizers import apot_levels, project_to_levels, uniform_levels


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


def test_weight_bits_same_follows_the_activation_bits_with_at_least_two():
    assert quantize_model(_mlp(), bits=3, weight_bits="same")[2].weight_quantizer.bits == 3
    assert quantize_model(_mlp(), bits=1, weight_bits="same")[2].weight_quantizer.bits == 2  # sign + 1 bit
    model = quantize_model(_mlp(), bits=None, weight_bits="same")  # full precision: float weights
    assert not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules())
    with pytest.raises(ValueError, match="weight_bits"):
        quantize_model(_mlp(), bits=2, weight_bits="half")


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


# --------------------------------------------------------------------------- models as people write them


def test_relu6_and_hardtanh_from_zero_become_quant_relus_with_their_clip():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU6(), nn.Conv2d(4, 4, 3), nn.Hardtanh(0.0, 2.5), nn.Conv2d(4, 2, 1))
    same = quantize_model(model, bits=2)
    assert same is model  # only modules to swap: in place, as before
    assert isinstance(model[1], QuantReLU) and model[1].alpha.item() == 6.0
    assert isinstance(model[3], QuantReLU) and model[3].alpha.item() == 2.5
    assert model[1].alpha.requires_grad  # learned, like every clip
    y = model[1](torch.tensor([-1.0, 0.9, 3.2, 5.2, 9.0]))
    assert y.tolist() == [0.0, 0.0, 4.0, 6.0, 6.0]  # 2 bits: levels 0, 2, 4, 6


class _Functional(nn.Module):
    """Conv, a ReLU written as ``form``, conv: the activation is a function call in forward."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.c1(x)
        if self.form == "F.relu":
            y = F.relu(y)
        elif self.form == "F.relu_inplace":
            y = F.relu(y, inplace=True)
        elif self.form == "torch.relu":
            y = torch.relu(y)
        elif self.form == "torch.relu_":
            torch.relu_(y)  # result not used: y itself is the activation afterwards
        elif self.form == "x.relu":
            y = y.relu()
        elif self.form == "x.relu_":
            y.relu_()
        elif self.form == "F.relu6":
            y = F.relu6(y)
        elif self.form == "F.hardtanh":
            y = F.hardtanh(y, 0.0, 6.0)
        return self.c2(y)


FUNCTIONAL_FORMS = [
    "F.relu",
    "F.relu_inplace",
    "torch.relu",
    "torch.relu_",
    "x.relu",
    "x.relu_",
    "F.relu6",
    "F.hardtanh",
]


@pytest.mark.parametrize("form", FUNCTIONAL_FORMS)
def test_relus_written_as_functions_get_a_quant_relu_each(form):
    torch.manual_seed(0)
    model = _Functional(form)
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        ref = model(x.clone())
    q = quantize_model(model, bits=None, alpha_init=100.0)  # bits=None, wide clip: the float ReLU
    assert isinstance(q, fx.GraphModule)
    relus = [m for m in q.modules() if isinstance(m, QuantReLU)]
    assert len(relus) == 1
    assert relus[0].alpha.item() == (6.0 if form in ("F.relu6", "F.hardtanh") else 100.0)
    assert q.c1.weight is model.c1.weight  # same parameters, same paths
    with torch.no_grad():
        assert torch.allclose(q(x.clone()), ref, atol=1e-6)  # same function (in-place forms included)
    quantize_model(q, bits=2)  # requantizing the returned model: in place, no new graph
    assert relus[0].bits == 2 and [m for m in q.modules() if isinstance(m, QuantReLU)] == relus
    snn = convert_to_snn(q.eval())
    assert len(snn.neurons()) == 1


class _Sites(nn.Module):
    """Two functional ReLU call sites in one forward, and a module used twice."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 2, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        y = F.relu(self.c1(x))
        y = F.relu(self.c2(y) + y)
        return self.c3(self.act(y) + self.act(-y))


def test_each_functional_call_site_gets_its_own_quant_relu_and_shared_modules_can_be_split():
    q = quantize_model(_Sites(), bits=2)
    names = sorted(n for n, m in q.named_modules() if isinstance(m, QuantReLU))
    assert names == ["act", "relu", "relu_1"]  # two sites in the top-level forward, the shared module kept
    split = prepare_model(_Sites(), split_shared=True)
    assert sorted(n for n, m in split.named_modules() if isinstance(m, nn.ReLU)) == ["act", "act_1", "relu", "relu_1"]
    # registration order follows the forward: the first and last layers are the real ones
    q = quantize_model(_Sites(), bits=2, weight_bits=3)
    assert q.c1.weight_quantizer.mode == "max" and q.c3.weight_quantizer.mode == "max"
    assert q.c2.weight_quantizer.mode == "apot"


def test_other_activations_are_left_alone_with_one_warning():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.act, self.gelu = nn.Conv2d(1, 4, 3), nn.SiLU(), nn.GELU()

        def forward(self, x):
            return torch.sigmoid(self.gelu(self.act(self.c(x))))

    model = Mixed()
    with pytest.warns(UserWarning, match="left these activations as they are: GELU, SiLU, sigmoid") as record:
        q = quantize_model(model, bits=2)
    assert len(record) == 1 and q is model
    assert isinstance(model.act, nn.SiLU) and isinstance(model.gelu, nn.GELU)


def _vgg_like():
    """Stem conv -> relu -> maxpool (movable), conv -> relu -> maxpool (between spiking layers)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def test_max_pool_avg_replaces_the_pools_between_spiking_layers_only():
    plain = _vgg_like()
    with pytest.raises(ConversionError, match=r"module '5' is max pooling.*max_pool='avg'"):
        convert_to_snn(quantize_model(_vgg_like(), 2).eval())
    model = quantize_model(plain, 2, max_pool="avg")
    assert model is plain  # module max pools: swapped in place
    assert isinstance(model[2], nn.MaxPool2d)  # the stem pool stays (the converter moves it, exactly)
    pool = model[5]
    assert isinstance(pool, nn.AvgPool2d) and not pool.count_include_pad and pool.ceil_mode
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    x = torch.randn(2, 3, 13, 13)
    with torch.no_grad():
        assert model[:6](x).shape == _vgg_like()[:6](x).shape  # same output size as the max pool
    convert_to_snn(model.eval())


def test_max_pool_conv_is_a_depthwise_strided_conv_starting_as_the_average():
    model = quantize_model(_vgg_like(), 2, weight_bits=2, max_pool="conv")
    conv = model[5]
    assert isinstance(conv, PoolConv2d) and conv.groups == conv.in_channels == 8 and conv.stride == (2, 2)
    assert conv.weight.shape == (8, 1, 3, 3) and torch.allclose(conv.weight, torch.full_like(conv.weight, 1 / 9))
    x = torch.relu(torch.randn(2, 8, 13, 13))
    avg = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=True)
    assert torch.allclose(conv(x), avg(x), atol=1e-6)  # starts as (zero-padded) average pooling
    assert type(model[3]) is QuantConv2d  # the model's convs are quantized; the pool conv keeps float weights
    snn = convert_to_snn(model.eval())
    assert len(snn.neurons()) == 3


def test_functional_max_pools_are_replaced_too():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.c3 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = F.max_pool2d(F.relu(self.c1(x)), 2)  # stem: kept
            return self.c3(F.relu(F.max_pool2d(F.relu(self.c2(y)), kernel_size=2, stride=2)))

    q = quantize_model(Functional(), 2, max_pool="avg")
    pools = [type(m) for m in q.modules() if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d))]
    assert pools == [nn.AvgPool2d]
    assert sum(n.target is F.max_pool2d for n in q.graph.nodes) == 1
    convert_to_snn(q.eval())
    with pytest.raises(ConversionError, match="calls max pooling"):
        convert_to_snn(quantize_model(Functional(), 2).eval())
