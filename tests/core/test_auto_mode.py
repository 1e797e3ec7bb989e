"""mode="auto": streaming when the estimated multi-step peak memory exceeds the budget, multi-step
otherwise; the same outputs as the chosen explicit mode; one log line per choice; the estimate (a
meta-device pass) against the CPU allocator's measured peak; the budget settings; the run config."""

import logging

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

import fastsnn
from benchmarks.measure import peak_memory_bytes
from fastsnn.backbones import create_backbone
from fastsnn.planner import machine
from fastsnn.planner.simulation import SimulationPlanner
from tests.helpers import compose_config, randomize_bn


def _qmodel(name="resnet20", bits=2, width=0.25, in_channels=1):
    torch.manual_seed(0)
    net = randomize_bn(create_backbone(name, num_classes=10, in_channels=in_channels, width=width), bias_offset=0.3)
    return fastsnn.quantize_model(net, bits, weight_bits=bits, alpha_init=2.0).eval()


X = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["vgg11", "resnet20"])
@pytest.mark.parametrize("budget,chosen", [(1, "streaming"), (2**40, "multistep")])
def test_auto_gives_the_chosen_explicit_modes_outputs(name, budget, chosen):
    q = _qmodel(name)
    auto = fastsnn.convert_to_snn(q, timesteps=5, mode="auto", memory_budget=budget)
    explicit = fastsnn.convert_to_snn(q, timesteps=5, mode=chosen)
    with torch.no_grad():
        assert auto.planner.mode(X) == chosen
        assert torch.equal(auto(X), explicit(X))
        (a, a_steps), (e, e_steps) = auto(X, return_steps=True), explicit(X, return_steps=True)
    assert torch.equal(a, e) and torch.equal(a_steps, e_steps)
    # and streaming == multistep, whichever auto picked
    other = fastsnn.convert_to_snn(q, timesteps=5, mode="multistep" if chosen == "streaming" else "streaming")
    with torch.no_grad():
        torch.testing.assert_close(auto(X), other(X), atol=1e-5, rtol=1e-5)


def test_each_choice_is_logged_once_per_input_shape(caplog):
    snn = fastsnn.convert_to_snn(_qmodel(), timesteps=3, mode="auto", memory_budget=2**40)
    with caplog.at_level(logging.INFO, logger="fastsnn"), torch.no_grad():
        snn(X)
        snn(X)
        snn(X[:2])
        snn.timesteps = 7
        snn(X)
    lines = [r.getMessage() for r in caplog.records if "mode='auto'" in r.getMessage()]
    assert len(lines) == 3, lines
    assert all("multistep for input" in m and "within the budget" in m for m in lines)
    assert "(6, 1, 32, 32)" in lines[0] and "(2, 1, 32, 32)" in lines[1] and "T=7" in lines[2]


def test_streaming_is_chosen_over_the_budget_and_the_log_says_why(caplog):
    snn = fastsnn.convert_to_snn(_qmodel(), timesteps=3, mode="auto", memory_budget=1000)
    with caplog.at_level(logging.INFO, logger="fastsnn"), torch.no_grad():
        snn(X)
    assert "mode='auto': streaming for input (6, 1, 32, 32)" in caplog.text
    assert "over the budget of 0.0 MiB (memory_budget)" in caplog.text


def test_explicit_modes_never_estimate(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("estimated")

    monkeypatch.setattr(SimulationPlanner, "estimate_multistep_bytes", boom)
    for mode in ("multistep", "streaming"):
        snn = fastsnn.convert_to_snn(_qmodel(), timesteps=3, mode=mode)
        with torch.no_grad():
            snn(X)
        assert snn.planner.mode(X) == mode


def test_a_failed_estimate_keeps_multistep_and_warns(monkeypatch, caplog):
    def fails(*a, **k):
        raise RuntimeError("no meta kernel")

    snn = fastsnn.convert_to_snn(_qmodel(), timesteps=3, mode="auto", memory_budget=1)
    monkeypatch.setattr(snn.planner, "estimate_multistep_bytes", fails)
    with caplog.at_level(logging.INFO, logger="fastsnn"):
        assert snn.planner.mode(X) == "multistep"
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "estimate failed (RuntimeError: no meta kernel)" in warning[0].getMessage()


def _conv_scratch_bytes(snn, x) -> int:
    """What the largest conv call of ``snn(x)`` allocates beyond its output: the convolution
    library's scratch buffer (oneDNN takes 3.5 MiB per call on some CPUs), which the meta-device
    estimate cannot see."""
    calls = []
    hooks = [
        m.register_forward_hook(lambda m, inp, out: calls.append((m, inp[0].clone())))
        for m in snn.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        snn(x)
    for h in hooks:
        h.remove()
    scratch = 0
    with torch.no_grad():
        for conv, inp in calls:
            out_bytes = conv(inp).numel() * 4
            scratch = max(scratch, peak_memory_bytes(lambda c=conv, i=inp: c(i), torch.device("cpu")) - out_bytes)
    return scratch


def test_the_estimate_is_close_to_the_measured_cpu_peak():
    q = _qmodel("resnet20", bits=3, width=0.5, in_channels=3)
    x = torch.randn(8, 3, 32, 32)
    for T in (3, 7):
        snn = fastsnn.convert_to_snn(q, timesteps=T)
        estimate = snn.planner.estimate_multistep_bytes(x)
        with torch.no_grad():
            measured = peak_memory_bytes(lambda snn=snn: snn(x), torch.device("cpu"))
        scratch = _conv_scratch_bytes(snn, x)
        assert 0.75 * (measured - scratch) <= estimate <= 1.25 * measured, (T, estimate, measured, scratch)
    assert snn.planner.estimate_multistep_bytes(x, "steps") >= snn.planner.estimate_multistep_bytes(
        x
    )  # output region T-fold


def test_the_choice_is_made_on_one_chunk(monkeypatch):
    snn = fastsnn.convert_to_snn(_qmodel(), timesteps=3, mode="auto", chunk_size=2, memory_budget=2**40)
    seen = []
    real = snn.planner.estimate_multistep_bytes
    monkeypatch.setattr(
        snn.planner, "estimate_multistep_bytes", lambda x, run="mean": seen.append(x.shape) or real(x, run)
    )
    with torch.no_grad():
        snn(X)
    assert seen == [torch.Size([2, 1, 32, 32])]


def test_fraction_budgets_refer_to_the_available_memory(monkeypatch, caplog):
    snn = fastsnn.convert_to_snn(_qmodel(), timesteps=3, mode="auto")
    estimate = snn.planner.estimate_multistep_bytes(X)
    monkeypatch.setattr(machine, "available_memory", lambda device: int(estimate * 1.5))
    assert snn.planner.mode(X) == "streaming"  # default: half of it
    snn.memory_budget = 0.9
    assert snn.planner.mode(X) == "multistep"
    monkeypatch.setattr(machine, "available_memory", lambda device: None)
    snn.memory_budget = 0.5
    with caplog.at_level(logging.INFO, logger="fastsnn"):
        snn.timesteps = 4  # a new choice
        assert snn.planner.mode(X) == "multistep"
    assert "available memory of cpu is unknown" in caplog.text
    for bad in (0, -1.0, True, "x"):
        with pytest.raises((ValueError, TypeError)):
            snn.memory_budget = bad
    with pytest.raises(ValueError, match="auto"):
        snn.mode = "fast"


def test_the_model_copies_and_pickles_with_its_choices():
    import copy
    import io

    snn = fastsnn.convert_to_snn(_qmodel(), timesteps=3, mode="auto")
    with torch.no_grad():
        out = snn(X)
        twin = copy.deepcopy(snn)
        torch.testing.assert_close(twin(X), out)
        buf = io.BytesIO()
        torch.save(snn, buf)
        buf.seek(0)
        torch.testing.assert_close(torch.load(buf, weights_only=False)(X), out)
    assert "_meta" not in dict(snn.named_modules()) and not any(".meta" in k for k in snn.state_dict())


def test_mode_auto_from_the_run_config(tmp_path):
    cfg = compose_config(tmp_path, "snn.mode=auto")
    callback = instantiate(cfg.callbacks.snn_conversion)
    assert callback.simulation.mode == "auto"

    class Module:  # what SNNConversion.convert needs of a task
        net = _qmodel()
        device = torch.device("cpu")

        def set_snn(self, snn):
            self.snn = snn

    snn = callback.convert(Module())
    assert snn.mode == "auto" and snn.planner.mode(X) in ("multistep", "streaming")
