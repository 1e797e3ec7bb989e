"""integer_kernels="auto": float convolutions until a conv class has run for a while, then both
kernels measured once, the faster kept (cached per machine), with the chosen path's outputs."""

import json
import logging

import pytest
import torch
from torch import nn

import fastsnn
from fastsnn.convert import SpikeConv2d
from fastsnn.planner import kernels

pytestmark = pytest.mark.usefixtures("fresh_kernel_choice")


def _qmodel(weight_bits=2):
    torch.manual_seed(0)

    def cbr(i, o):
        return [nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    net = nn.Sequential(
        *cbr(3, 16), *cbr(16, 48), *cbr(48, 48), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 5)
    )
    return fastsnn.quantize_model(net, 2, weight_bits=weight_bits, alpha_init=1.0).eval()


def _outputs(snn, x, calls=1):
    with torch.no_grad():
        return [snn(x, return_steps=True)[1] for _ in range(calls)]


def _count_int_mm(monkeypatch):
    calls = []
    real = torch._int_mm

    def counted(a, b):
        calls.append(a.shape)
        return real(a, b)

    monkeypatch.setattr(torch, "_int_mm", counted)
    return calls


def _cache_entries():
    (entries,) = json.loads(kernels.cache_path().read_text()).values()
    return {name: e for name, e in entries.items() if " conv " in name}


def test_auto_covers_narrow_spike_fed_convs_and_float_weights_stay_float(monkeypatch):
    q = _qmodel()
    auto = [n for n, m in fastsnn.convert_to_snn(q).named_modules() if isinstance(m, SpikeConv2d)]
    explicit = [
        n for n, m in fastsnn.convert_to_snn(q, integer_kernels=True).named_modules() if isinstance(m, SpikeConv2d)
    ]
    assert len(auto) == 2 and len(explicit) == 1  # the 16-channel conv too, under "auto"
    # which kernel a layer runs is its own explicit state
    kinds = {m.kernel for m in fastsnn.convert_to_snn(q).modules() if isinstance(m, SpikeConv2d)}
    assert kinds == {"auto"}
    assert {m.kernel for m in fastsnn.convert_to_snn(q, integer_kernels=True).modules() if hasattr(m, "kernel")} == {
        "integer"
    }
    monkeypatch.setattr(kernels, "INTEGER_PROBE_AFTER_S", 0.0)
    calls = _count_int_mm(monkeypatch)
    q, x = _qmodel(weight_bits=None), torch.randn(4, 3, 8, 8)
    snn = fastsnn.convert_to_snn(q)
    outs = _outputs(snn, x, calls=2)
    assert calls == [] and all(
        torch.equal(o, _outputs(fastsnn.convert_to_snn(q, integer_kernels=False), x)[0]) for o in outs
    )
    assert all(m._off_grid == m._weight_version() for m in snn.modules() if isinstance(m, SpikeConv2d))


def test_short_runs_never_probe_and_give_the_float_outputs(monkeypatch):
    calls = _count_int_mm(monkeypatch)
    q, x = _qmodel(), torch.randn(4, 3, 8, 8)
    (ref,) = _outputs(fastsnn.convert_to_snn(q, integer_kernels=False), x)
    outs = _outputs(fastsnn.convert_to_snn(q), x, calls=3)
    assert calls == []  # three tiny calls are far below INTEGER_PROBE_AFTER_S
    assert all(torch.equal(o, ref) for o in outs)


def test_probes_once_per_class_caches_and_logs_it(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "INTEGER_PROBE_AFTER_S", 0.0)
    calls = _count_int_mm(monkeypatch)
    q, x = _qmodel(), torch.randn(4, 3, 8, 8)
    (ref,) = _outputs(fastsnn.convert_to_snn(q, integer_kernels=False), x)
    with caplog.at_level(logging.INFO, logger="fastsnn.planner.kernels"):
        outs = _outputs(fastsnn.convert_to_snn(q), x, calls=3)
    entries = _cache_entries()
    assert len(entries) == 2 and all(e["choice"] in ("integer", "float") for e in entries.values())
    assert sum("spike-fed convs" in r.message for r in caplog.records) == 2  # once per class
    probes = len(calls)
    outs += _outputs(fastsnn.convert_to_snn(q), x)  # decided in this process: no more probing
    uses = sum(e["choice"] == "integer" for e in entries.values())  # one int8 GEMM per chosen conv
    assert probes >= 2 and len(calls) == probes + uses
    assert all(torch.allclose(o, ref, atol=1e-5) for o in outs)


@pytest.mark.parametrize("choice", ["integer", "float"])
def test_a_cached_choice_applies_at_once_with_that_paths_outputs(monkeypatch, choice):
    monkeypatch.setattr(kernels, "INTEGER_PROBE_AFTER_S", 0.0)
    q, x = _qmodel(), torch.randn(4, 3, 8, 8)
    _outputs(fastsnn.convert_to_snn(q), x)  # learn the classes' names
    machine = kernels.machine_key(x.device)
    for name in _cache_entries():
        kernels._store(machine, name, dict(choice=choice))
    kernels.reset()  # a new process: only the file remains
    calls = _count_int_mm(monkeypatch)
    (got,) = _outputs(fastsnn.convert_to_snn(q), x)
    if choice == "float":
        assert calls == [] and torch.equal(got, _outputs(fastsnn.convert_to_snn(q, integer_kernels=False), x)[0])
    else:  # both convs run int8, as integer_kernels=True runs its one wide conv
        assert len(calls) == 2 and torch.allclose(got, _outputs(fastsnn.convert_to_snn(q, integer_kernels=True), x)[0])


def test_int8_outputs_that_differ_are_refused(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "INTEGER_PROBE_AFTER_S", 0.0)
    real = SpikeConv2d._integer_forward
    monkeypatch.setattr(SpikeConv2d, "_integer_forward", lambda self, x, cache: real(self, x, cache) + 1)
    q, x = _qmodel(), torch.randn(4, 3, 8, 8)
    (ref,) = _outputs(fastsnn.convert_to_snn(q, integer_kernels=False), x)
    with caplog.at_level(logging.WARNING, logger="fastsnn.planner.kernels"):
        outs = _outputs(fastsnn.convert_to_snn(q), x, calls=2)
    assert all(torch.equal(o, ref) for o in outs)
    assert sum("differ" in r.message for r in caplog.records) == 2


def test_a_bad_setting_is_refused():
    with pytest.raises(ValueError, match="integer_kernels must be True, False or 'auto'"):
        fastsnn.convert_to_snn(_qmodel(), integer_kernels="yes")
