"""Property tests for fastsnn.spike_stats: synaptic operations against a brute-force count,
spike rates against an independent step-by-step simulation, MACs and energy by hand."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fastsnn import QuantReLU, convert_to_snn, quantize_model, spike_stats
from fastsnn.convert import GraphNeuron

# --------------------------------------------------------------------------- brute force


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def brute_conv_sops(spikes: torch.Tensor, conv: nn.Conv2d) -> int:
    """Loop over the non-zero input elements; for each, count the output positions its
    synapses reach (taps of the kernel that land on it, strides, padding and dilation
    included), times the out-channels of its group."""
    kh, kw = _pair(conv.kernel_size)
    sh, sw = _pair(conv.stride)
    ph, pw = _pair(conv.padding)
    dh, dw = _pair(conv.dilation)
    H, W = spikes.shape[-2:]
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    per_group = conv.out_channels // conv.groups
    reach: dict[tuple[int, int], int] = {}
    total = 0
    for *_, h, w in spikes.nonzero().tolist():
        if (h, w) not in reach:
            reach[(h, w)] = len(
                {
                    (oh, ow)
                    for oh in range(OH)
                    for ow in range(OW)
                    for i in range(kh)
                    for j in range(kw)
                    if oh * sh - ph + i * dh == h and ow * sw - pw + j * dw == w
                }
            )
        total += reach[(h, w)] * per_group
    return total


def brute_linear_sops(spikes: torch.Tensor, linear: nn.Linear) -> int:
    """Every non-zero input element reaches every output unit."""
    return sum(linear.out_features for _ in spikes.nonzero().tolist())


def test_brute_force_reference_itself():
    # one spike in the middle of a 5x5 map, 3x3 kernel, padding 1: 9 output positions
    conv = nn.Conv2d(2, 4, 3, padding=1, groups=2)
    s = torch.zeros(1, 2, 5, 5)
    s[0, 1, 2, 2] = 1
    assert brute_conv_sops(s, conv) == 9 * 2
    # a corner spike reaches 4 positions; with stride 2 (outputs at 0, 2, 4) only one
    s = torch.zeros(1, 1, 5, 5)
    s[0, 0, 0, 0] = 1
    assert brute_conv_sops(s, nn.Conv2d(1, 1, 3, padding=1)) == 4
    assert brute_conv_sops(s, nn.Conv2d(1, 1, 3, padding=1, stride=2)) == 1
    # dilation 2 without padding: the corner is tapped only by output (0, 0)
    assert brute_conv_sops(s, nn.Conv2d(1, 3, 3, dilation=2)) == 3


# --------------------------------------------------------------------------- one layer


class SpikesInto(nn.Module):
    """A first neuron layer on the analog input (threshold 1, so that its spikes are easy to
    steer), followed by the layer under test, which is the output layer."""

    def __init__(self, layer: nn.Module, bits: int):
        super().__init__()
        self.act = QuantReLU(bits, alpha_init=1.0)
        self.layer = layer

    def forward(self, x):
        return self.layer(self.act(x))


CONV_CASES = [
    # cin, cout, kernel, stride, padding, dilation, groups, (H, W)
    (3, 4, 3, 1, 1, 1, 1, (7, 7)),
    (4, 6, 3, 2, 1, 1, 2, (9, 8)),
    (4, 4, 3, 1, 2, 2, 4, (8, 8)),  # depthwise, dilated
    (6, 9, 5, 3, 0, 1, 3, (11, 10)),  # no padding, stride 3, ragged border
    (2, 5, (3, 1), (2, 1), (0, 1), (1, 1), 1, (7, 6)),  # non-square kernel, stride, padding
    (2, 4, 2, 2, 1, 3, 2, (9, 9)),  # even kernel, dilation 3, padding only partly used
]


def _captured_spikes(snn, x):
    """The first neuron layer's per-step output ([T*N, ...], in units of its threshold)."""
    seen = []
    ((_, neuron),) = snn.neurons()
    handle = neuron.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    try:
        spike_stats(snn, x)
    finally:
        handle.remove()
    return seen[0] / neuron.neuron.threshold


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("bits", [1, 2])
def test_conv_sops_equal_a_brute_force_count(case, bits):
    cin, cout, k, stride, padding, dilation, groups, (H, W) = case
    torch.manual_seed(10 * CONV_CASES.index(case) + bits)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups)
    snn = convert_to_snn(SpikesInto(conv, bits).eval())
    T = snn.timesteps
    N = 3
    # inputs on the neuron's levels plus zeros: every neuron fires a different pattern over time
    x = torch.randint(0, T + 1, (N, cin, H, W)).float() / T * (torch.rand(N, cin, H, W) < 0.4)
    stats = spike_stats(snn, x)
    spikes = _captured_spikes(snn, x)
    assert spikes.shape == (T * N, cin, H, W)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0} and 0 < spikes.sum() < spikes.numel()
    if bits == 1:  # T = 1, threshold 1: the spike tensor is the (binary) input itself
        assert torch.equal(spikes, (x > 0).float())
    else:  # the spike pattern changes over time
        steps = spikes.reshape(T, N, cin, H, W)
        assert not torch.equal(steps[0], steps[1])
    expected = brute_conv_sops(spikes, conv)
    assert stats["sops"] * N == expected
    assert stats["first_layer_macs"] == 0  # no conv / linear layer sees the analog input
    assert stats["layers"][0]["pos_rate"] == pytest.approx(float(spikes.mean()))


@pytest.mark.parametrize("bits", [1, 3])
def test_linear_sops_equal_a_brute_force_count(bits):
    torch.manual_seed(bits)
    linear = nn.Linear(37, 11)
    snn = convert_to_snn(SpikesInto(linear, bits).eval())
    T, N = snn.timesteps, 5
    x = torch.randint(0, T + 1, (N, 37)).float() / T * (torch.rand(N, 37) < 0.5)
    stats = spike_stats(snn, x)
    spikes = _captured_spikes(snn, x)
    assert 0 < spikes.sum() < spikes.numel()
    assert stats["sops"] * N == brute_linear_sops(spikes, linear)
    # rate * T * N * features spikes, each with 11 synapses
    assert stats["sops"] == pytest.approx(stats["layers"][0]["pos_rate"] * T * 37 * 11)


# --------------------------------------------------------------------------- a converted model


class Small(nn.Module):
    """Stem conv on the analog input, grouped stride-2 conv, dilated conv with a residual add,
    average pooling, a hidden linear layer and the output linear layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.down = nn.Sequential(
            nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.conv3 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.relu3 = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(32, 12)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):  # x: [N, 2, 8, 8]
        y = self.down(self.stem(x))
        y = self.relu3(self.bn3(self.conv3(y)) + y)
        return self.fc2(self.relu4(self.fc1(self.pool(y).flatten(1))))


# hand-computed MACs per image: output elements x (in_channels / groups) x kernel area
STEM_MACS = (6 * 8 * 8) * 2 * 9
ANN_MACS = STEM_MACS + (8 * 4 * 4) * (6 // 2) * 9 + (8 * 4 * 4) * 8 * 9 + 12 * 32 + 5 * 12
NEURONS = {"stem.2": 6 * 8 * 8, "down.2": 8 * 4 * 4, "relu3": 8 * 4 * 4, "relu4": 12}


def _small_ann():
    torch.manual_seed(0)
    model = Small()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial batch norms, so that folding them matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.3 + 0.3)
    return quantize_model(model, 2, alpha_init=1.0).eval()


class _RefIF(nn.Module):
    """An IF neuron written from docs/method.md §3, independent of fastsnn.neuron; counts spikes."""

    def __init__(self, theta: float, signed: bool):
        super().__init__()
        self.theta, self.signed = theta, signed
        self.v = self.count = None
        self.pos = self.neg = self.neuron_steps = 0

    def forward(self, z):
        if self.v is None:
            self.v = torch.full_like(z, self.theta / 2)
            self.count = torch.zeros_like(z)
        self.v = self.v + z
        pos = self.v >= self.theta
        neg = (self.v < -1e-6 * self.theta) & (self.count > 0) & ~pos if self.signed else torch.zeros_like(pos)
        s = pos.float() - neg.float()
        self.count += s
        self.v = self.v - s * self.theta
        self.pos += int(pos.sum())
        self.neg += int(neg.sum())
        self.neuron_steps += z.numel()
        return s * self.theta


def _reference_run(ann, x, T, signed):
    """Run the ANN's own forward T times with every QuantReLU replaced by a reference IF
    neuron; count spikes per layer and, with the brute-force counters, the synaptic
    operations of every conv / linear layer that receives spikes (all but the stem)."""
    ref = copy.deepcopy(ann)
    neurons = {}
    for name, m in list(ref.named_modules()):
        if isinstance(m, QuantReLU):
            neurons[name] = _RefIF(m.alpha.item(), signed)
            parent, _, child = name.rpartition(".")
            setattr(ref.get_submodule(parent) if parent else ref, child, neurons[name])
    sops = [0]

    def count(module, inputs, out):
        counter = brute_conv_sops if isinstance(module, nn.Conv2d) else brute_linear_sops
        sops[0] += counter(inputs[0], module)

    handles = [
        m.register_forward_hook(count)
        for n, m in ref.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and n != "stem.0"
    ]
    with torch.no_grad():
        out = torch.stack([ref(x) for _ in range(T)]).mean(0)
    for h in handles:
        h.remove()
    return out, neurons, sops[0]


@pytest.mark.parametrize("signed", [True, False])
def test_rates_sops_macs_and_energy_of_a_converted_model(signed):
    ann = _small_ann()
    snn = convert_to_snn(ann, signed=signed)
    T, N = snn.timesteps, 6
    torch.manual_seed(2)
    x = torch.randn(N, 2, 8, 8)
    stats = spike_stats(snn, x)
    ref_out, ref_neurons, ref_sops = _reference_run(ann, x, T, signed)
    with torch.no_grad():
        assert torch.allclose(snn(x), ref_out, atol=1e-4)  # the reference simulates the same SNN

    assert stats["timesteps"] == T == 3 and stats["images"] == N
    assert [layer["name"] for layer in stats["layers"]] == list(NEURONS)
    for layer in stats["layers"]:
        ref = ref_neurons[layer["name"]]
        assert layer["neurons"] == NEURONS[layer["name"]]
        assert ref.neuron_steps == layer["neurons"] * T * N
        assert layer["pos_rate"] == pytest.approx(ref.pos / ref.neuron_steps, abs=1e-12)
        assert layer["neg_rate"] == pytest.approx(ref.neg / ref.neuron_steps, abs=1e-12)
        assert 0 <= layer["neg_rate"] <= 1 and 0 < layer["pos_rate"] <= 1
        assert layer["pos_rate"] + layer["neg_rate"] <= 1
    if signed:
        assert any(layer["neg_rate"] > 0 for layer in stats["layers"][1:])  # the test sees negative spikes
    else:
        assert all(layer["neg_rate"] == 0 for layer in stats["layers"])
    total_steps = sum(r.neuron_steps for r in ref_neurons.values())
    assert stats["pos_rate"] == pytest.approx(sum(r.pos for r in ref_neurons.values()) / total_steps)
    assert stats["neg_rate"] == pytest.approx(sum(r.neg for r in ref_neurons.values()) / total_steps)
    assert stats["spike_rate"] == pytest.approx(stats["pos_rate"] + stats["neg_rate"])

    # the first layer is exact: its spikes per neuron are the quantized ANN's level x T
    first = {}
    h = ann.stem[2].register_forward_hook(lambda m, i, o: first.setdefault("act", o))
    with torch.no_grad():
        ann(x)
    h.remove()
    alpha = ann.stem[2].alpha.item()
    levels = torch.round(first["act"] / alpha * T)
    assert stats["layers"][0]["pos_rate"] == pytest.approx(float(levels.sum()) / (T * levels.numel()))
    assert stats["layers"][0]["neg_rate"] == 0

    assert stats["sops"] == pytest.approx(ref_sops / N) and ref_sops > 0
    assert stats["first_layer_macs"] == STEM_MACS
    assert stats["ann_macs"] == ANN_MACS
    e = stats["energy"]
    assert e["snn_uj"] == pytest.approx((STEM_MACS * 4.6 + stats["sops"] * 0.9) * 1e-6)
    assert e["ann_uj"] == pytest.approx(ANN_MACS * 4.6 * 1e-6)
    assert e["ratio"] == pytest.approx(e["snn_uj"] / e["ann_uj"])
    assert "estimate" in e["note"]


def test_signed_and_unsigned_models_differ_only_in_their_spikes():
    ann = _small_ann()
    x = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    signed, unsigned = spike_stats(convert_to_snn(ann), x), spike_stats(convert_to_snn(ann, signed=False), x)
    assert signed["ann_macs"] == unsigned["ann_macs"] and signed["first_layer_macs"] == unsigned["first_layer_macs"]
    # the first layer is exact in both; later layers' spikes (and so the SOPs) differ
    assert signed["layers"][0] == unsigned["layers"][0]
    assert signed["sops"] != unsigned["sops"]


# --------------------------------------------------------------------------- inputs


def test_batch_tensor_dataloader_and_max_batches_agree():
    snn = convert_to_snn(_small_ann())
    x = torch.randn(10, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    y = torch.zeros(10, dtype=torch.long)
    whole = spike_stats(snn, x)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # batches of 4, 4, 2
    from_loader = spike_stats(snn, loader)
    assert from_loader["images"] == 10
    for key in ("sops", "first_layer_macs", "ann_macs", "spike_rate", "pos_rate", "neg_rate"):
        assert from_loader[key] == pytest.approx(whole[key], rel=1e-9), key
    for a, b in zip(from_loader["layers"], whole["layers"]):
        assert a["neurons"] == b["neurons"]
        assert a["pos_rate"] == pytest.approx(b["pos_rate"]) and a["neg_rate"] == pytest.approx(b["neg_rate"])

    first_two = spike_stats(snn, loader, max_batches=2)
    head = spike_stats(snn, x[:8])
    assert first_two["images"] == 8
    assert first_two["sops"] == pytest.approx(head["sops"])
    for a, b in zip(first_two["layers"], head["layers"]):
        assert a["pos_rate"] == pytest.approx(b["pos_rate"]) and a["neg_rate"] == pytest.approx(b["neg_rate"])
    # the last two images change the result: max_batches really stopped early
    tail = spike_stats(snn, x[8:])
    assert tail["sops"] != pytest.approx(head["sops"])

    # an iterable of plain tensors works too
    plain = spike_stats(snn, [x[:5], x[5:]])
    assert plain["images"] == 10 and plain["sops"] == pytest.approx(whole["sops"])


def test_empty_data_raises():
    snn = convert_to_snn(_small_ann())
    x = torch.randn(4, 2, 8, 8)
    with pytest.raises(ValueError, match="no data"):
        spike_stats(snn, [])
    with pytest.raises(ValueError, match="no data"):
        spike_stats(snn, DataLoader(TensorDataset(x[:0], torch.zeros(0)), batch_size=2))
    with pytest.raises(ValueError, match="no data"):
        spike_stats(snn, DataLoader(TensorDataset(x, torch.zeros(4)), batch_size=2), max_batches=0)


def test_stats_leave_the_model_as_it_was():
    snn = convert_to_snn(_small_ann())
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        before = snn(x)
    spike_stats(snn, x)
    assert not any(m._forward_hooks for m in snn.modules())  # hooks removed
    assert snn.ctx.mode == "mean"
    with torch.no_grad():
        assert torch.equal(snn(x), before)
    assert all(isinstance(snn.net.get_submodule(layer.name), GraphNeuron) for layer in snn.layers)
