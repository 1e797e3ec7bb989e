"""The simulator features the speed benchmark measures: int8 synapses (``integer_kernels=True``)
give the float simulation's outputs and step aside where they cannot be exact; the streaming
state is small (int8 spike counts, in-place membranes) and its peak memory does not grow with T."""

import copy
import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fastsnn
from benchmarks.measure import peak_memory_bytes
from fastsnn.convert import SpikeConv2d, integer_grid


class Net(nn.Module):
    """conv -> [conv, avg pool, conv, residual block with a 1x1 shortcut] -> pool -> linear."""

    def __init__(self, w=48):
        super().__init__()

        def cbr(i, o, s=1):
            return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

        self.stem = cbr(3, w)
        self.c1 = cbr(w, w)
        self.pool = nn.AvgPool2d(2)
        self.c2 = cbr(w, 64)
        self.b1 = nn.Sequential(
            nn.Conv2d(64, 64, 3, 2, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, 1, 1, bias=False),
            nn.BatchNorm2d(64),
        )
        self.short = nn.Sequential(nn.Conv2d(64, 64, 1, 2, bias=False), nn.BatchNorm2d(64))
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        x = self.c2(self.pool(self.c1(self.stem(x))))
        return self.head(self.relu(self.b1(x) + self.short(x)))


def _model(weight_bits=2, seed=0):
    torch.manual_seed(seed)
    m = Net()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
    return fastsnn.quantize_model(m, 2, weight_bits=weight_bits, alpha_init=1.0).eval()


@pytest.mark.parametrize("signed", [True, False])
def test_integer_kernels_give_the_float_outputs(signed):
    q = _model()
    x = torch.randn(6, 3, 16, 16)
    ref = fastsnn.convert_to_snn(q, signed=signed)
    fast = fastsnn.convert_to_snn(q, signed=signed, integer_kernels=True)
    convs = [m for m in fast.modules() if isinstance(m, SpikeConv2d)]
    # fed by spikes and >= 48 channels: c1 (spikes), c2 (after avg pool), b1.0, b1.3, short
    assert len(convs) == 5 and all(c._integer_weights() is not None for c in convs)
    with torch.no_grad():
        out, steps = ref(x, return_steps=True)
        f_out, f_steps = fast(x, return_steps=True)
        fast.mode = "streaming"
        s_out = fast(x)
    assert torch.allclose(f_steps, steps, atol=1e-5) and torch.allclose(s_out, out, atol=1e-5)


def test_integer_kernels_step_aside_where_they_cannot_be_exact():
    q = _model()
    x = torch.randn(4, 3, 16, 16)
    fast = fastsnn.convert_to_snn(q, integer_kernels=True)
    float_weights = fastsnn.convert_to_snn(_model(weight_bits=None), integer_kernels=True)
    assert all(m._integer_weights() is None for m in float_weights.modules() if isinstance(m, SpikeConv2d))
    conv = fast.net.get_submodule("c1.0")
    with torch.no_grad():
        conv.weight.add_(1e-3 * torch.randn_like(conv.weight))  # off the grid, e.g. by fine-tuning
    assert conv._integer_weights() is None
    ref = copy.deepcopy(fast)
    for m in ref.modules():
        if isinstance(m, SpikeConv2d):
            m.kernel = "float"
    with torch.no_grad():
        assert torch.allclose(fast(x), ref(x), atol=1e-5)
    # with gradients (layer-wise fine-tuning evaluates layers on rates) the float path runs
    conv2 = fast.net.get_submodule("b1.0")
    rates = torch.rand(2, 64, 8, 8, requires_grad=True)
    y = conv2(rates)
    assert y.requires_grad and torch.allclose(y, F.conv2d(rates, conv2.weight, conv2.bias, 2, 1))
    spikes = conv2.source.threshold * torch.randint(-1, 2, (2, 64, 8, 8)).float()
    with torch.no_grad():
        assert torch.allclose(conv2(spikes), F.conv2d(spikes, conv2.weight, conv2.bias, 2, 1), atol=1e-5)


def test_a_refused_int8_gemm_falls_back_to_float_once_with_a_warning_naming_the_layer(monkeypatch, caplog):
    q = _model()
    x = torch.randn(4, 3, 16, 16)
    ref = fastsnn.convert_to_snn(q)
    fast = fastsnn.convert_to_snn(q, integer_kernels=True)
    calls = []

    def refuse(a, b):
        calls.append(a.shape)
        raise RuntimeError("self.size(0) needs to be greater than 16")

    monkeypatch.setattr(torch, "_int_mm", refuse)
    with caplog.at_level(logging.WARNING, logger="fastsnn"), torch.no_grad():
        first = fast(x)
        tried = len(calls)
        again = fast(x)
    assert tried == 5 and len(calls) == tried  # each of the 5 integer convs tried once, then no more
    assert torch.allclose(first, ref(x), atol=1e-5) and torch.equal(again, first)
    warnings = [r for r in caplog.records if r.name.startswith("fastsnn") and r.levelno == logging.WARNING]
    assert len(warnings) == 5  # once per layer, not once per call
    assert "'c1.0'" in warnings[0].getMessage()
    assert all("greater than 16" in w.getMessage() and "float convolution" in w.getMessage() for w in warnings)


def test_integer_grid_recovers_quantized_weights_and_refuses_float_ones():
    levels = torch.tensor([0.0, 0.25, 0.5, 1.0])
    ints = torch.randint(-3, 4, (8, 5, 3, 3))
    w = torch.sign(ints) * levels[ints.abs()] * torch.rand(8, 1, 1, 1) * 3
    got, scale = integer_grid(w)
    assert torch.allclose(got.float() * scale[:, None, None, None], w, atol=1e-6)
    assert got.abs().max() <= 4
    assert integer_grid(torch.randn(8, 5, 3, 3)) is None


def test_streaming_state_is_small_and_its_memory_does_not_grow_with_t():
    q = _model(weight_bits=None)
    x = torch.randn(8, 3, 16, 16)
    snn = fastsnn.convert_to_snn(q, timesteps=15, mode="streaming")
    neuron = snn.neurons()[1][1].neuron
    seen = []
    orig = neuron.step

    def spy(x_t, horizon=None):
        out = orig(x_t, horizon)
        seen.append((neuron.v.dtype, neuron.count.dtype))
        return out

    neuron.step = spy
    with torch.no_grad():
        snn(x)
    assert seen and all(s == (torch.float32, torch.int8) for s in seen)
    neuron.step = orig
    mem = {}
    for T in (3, 15):
        for mode in ("streaming", "multistep"):
            s = fastsnn.convert_to_snn(q, timesteps=T, mode=mode)
            with torch.no_grad():
                mem[mode, T] = peak_memory_bytes(lambda s=s: s(x), torch.device("cpu"))
    assert mem["streaming", 15] == mem["streaming", 3]
    assert mem["multistep", 15] > 3 * mem["multistep", 3] / 2 and mem["streaming", 15] < mem["multistep", 15] / 2


def test_compiled_neurons_get_one_code_object_per_kernel(monkeypatch):
    """torch.compile keeps its kernels per code object and silently runs the eager loop once one
    code object has 8 of them; the unrolled T loop needs a kernel per (T, signed, constant), so
    each gets its own code object (a model evaluated at 5 T used to hit the limit)."""
    from fastsnn import neuron as neuron_mod

    compiled_codes = []

    def fake_compile(fn, dynamic=None):
        compiled_codes.append(fn.__code__)
        return fn  # the (identical) eager function under its new code object

    monkeypatch.setattr(neuron_mod.torch, "compile", fake_compile)
    monkeypatch.setattr(neuron_mod, "_compiled_multistep", {})
    torch.manual_seed(0)
    q = fastsnn.quantize_model(
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)),
        2,
        alpha_init=1.0,
    ).eval()
    x = torch.randn(2, 1, 4, 4)
    compiled, eager = fastsnn.convert_to_snn(q, compiled=True), fastsnn.convert_to_snn(q)
    with torch.no_grad():
        for T in range(1, 6):
            compiled.timesteps = eager.timesteps = T
            for _ in range(2):
                assert torch.equal(compiled(x), eager(x))
    assert len(compiled_codes) == 10 == len(set(map(id, compiled_codes)))  # 5 T x (constant, spiking)
    assert all(c is not neuron_mod.if_multistep.__code__ for c in compiled_codes)
    assert {c.co_name for c in compiled_codes} >= {"if_multistep_T5_signed", "if_multistep_T5_signed_constant"}
