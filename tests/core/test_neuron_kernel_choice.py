"""compiled="auto": eager until the eager time would have paid for a compile, then measured."""

import json
import logging

import pytest
import torch

from fastsnn.neuron import IFNeuron
from fastsnn.planner import kernels

pytestmark = pytest.mark.usefixtures("fresh_kernel_choice")


def _spy_compile(monkeypatch):
    """Count builds of the fused kernel; the fused kernel itself is the eager loop (no real compile)."""
    import fastsnn.neuron as neuron_mod

    built = []

    def fake_compile(fn, dynamic=True):
        built.append(fn.__code__.co_name)
        return fn

    monkeypatch.setattr(neuron_mod, "_compiled_multistep", {})
    monkeypatch.setattr(neuron_mod.torch, "compile", fake_compile)
    return built


def test_short_runs_never_compile(monkeypatch):
    built = _spy_compile(monkeypatch)
    n = IFNeuron(1.0, compiled="auto")
    x = torch.randn(3, 4, 16)
    for _ in range(5):
        out = n(x)
    assert built == []  # five tiny calls cost far less than DEFAULT_COMPILE_S
    assert torch.equal(out, IFNeuron(1.0, compiled=False)(x))


def test_compiles_once_eager_time_reaches_compile_cost_and_caches_it(monkeypatch, caplog):
    built = _spy_compile(monkeypatch)
    monkeypatch.setattr(kernels, "DEFAULT_COMPILE_S", 0.0)
    n = IFNeuron(1.0, compiled="auto")
    x = torch.randn(3, 4, 16)
    with caplog.at_level(logging.INFO, logger="fastsnn.planner.kernels"):
        outs = [n(x) for _ in range(3)]
    assert built == ["if_multistep_T3_signed"]  # built once, then reused
    assert all(torch.equal(o, IFNeuron(1.0, compiled=False)(x)) for o in outs)
    cache = json.loads(kernels.cache_path().read_text())
    (entries,) = cache.values()
    (cls, entry) = next(iter(entries.items()))
    assert cls == kernels.kernel_class(x, 3, True, False)
    assert entry["choice"] in ("compiled", "eager") and entry["compile_s"] >= 0
    assert sum("neuron kernels" in r.message for r in caplog.records) == 1  # logged once


def test_cached_eager_decision_skips_compiling(monkeypatch):
    built = _spy_compile(monkeypatch)
    monkeypatch.setattr(kernels, "DEFAULT_COMPILE_S", 0.0)
    x = torch.randn(7, 2, 8)
    cls = kernels.kernel_class(x, 7, True, False)
    kernels._store(kernels.machine_key(x.device), cls, dict(choice="eager", compile_s=0.0))
    kernels.reset()  # a new process: only the file remains
    for _ in range(3):
        IFNeuron(1.0, compiled="auto")(x)
    assert built == []


def test_fused_kernel_with_other_outputs_is_not_used(monkeypatch, caplog):
    import fastsnn.neuron as neuron_mod

    monkeypatch.setattr(kernels, "DEFAULT_COMPILE_S", 0.0)
    monkeypatch.setattr(neuron_mod, "_compiled_multistep", {})
    monkeypatch.setattr(neuron_mod.torch, "compile", lambda fn, dynamic=True: lambda *a: fn(*a) + 1)
    n = IFNeuron(1.0, compiled="auto")
    x = torch.randn(3, 4, 16)
    with caplog.at_level(logging.WARNING, logger="fastsnn.planner.kernels"):
        outs = [n(x) for _ in range(3)]
    assert all(torch.equal(o, IFNeuron(1.0, compiled=False)(x)) for o in outs)
    assert any("differ" in r.message for r in caplog.records)


def test_broken_compiler_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    import fastsnn.neuron as neuron_mod

    def broken(fn, dynamic=True):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(kernels, "DEFAULT_COMPILE_S", 0.0)
    monkeypatch.setattr(neuron_mod, "_compiled_multistep", {})
    monkeypatch.setattr(neuron_mod.torch, "compile", broken)
    x = torch.randn(3, 4, 16)
    with caplog.at_level(logging.WARNING, logger="fastsnn.planner.kernels"):
        outs = [IFNeuron(1.0, compiled="auto")(x) for _ in range(3)]
        IFNeuron(1.0, compiled="auto").forward_constant(x[0], 5)
    assert all(torch.equal(o, IFNeuron(1.0, compiled=False)(x)) for o in outs)
    warnings = [r.message for r in caplog.records if "not usable" in r.message]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0]


def test_real_compile_gives_identical_outputs(monkeypatch):
    monkeypatch.setattr(kernels, "DEFAULT_COMPILE_S", 0.0)
    torch.manual_seed(0)
    x = torch.randn(3, 2, 5, 5) * 1.3
    eager = IFNeuron(0.7, compiled=False)
    auto = IFNeuron(0.7, compiled="auto")
    for _ in range(3):  # eager, then the probe (compile + timing), then the chosen kernel
        assert torch.equal(auto(x), eager(x))


def test_bad_setting_is_refused():
    with pytest.raises(ValueError, match="compiled must be"):
        IFNeuron(1.0, compiled="yes")


def test_a_class_due_in_two_threads_is_decided_by_one(monkeypatch):
    # calls from several threads share the tallies: the class's entry goes to one of them, and
    # the others just return their output (this raised KeyError before the tallies had a lock)
    import threading

    pending = {"k": kernels._Pending("k", "m", pays_after=0.0)}
    barrier, due = threading.Barrier(4), []

    def work():
        barrier.wait()
        out, _, entry = kernels._tally(pending, "k", lambda: torch.ones(1), torch.device("cpu"))
        assert torch.equal(out, torch.ones(1))
        due.append(entry)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(due) == 4 and sum(e is not None for e in due) == 1 and pending == {}
