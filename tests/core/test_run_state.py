"""The run state (mode, T) of a SpikingModel call belongs to that call: concurrent calls in other
threads and calls nested inside it (from a hook) do not see it, and changing T during a call
takes effect at the next call. Streaming state lives in the neurons, so one model runs one
streaming call at a time and refuses a second one."""

import threading

import pytest
import torch
from torch import nn

from fastsnn import convert_to_snn, quantize_model
from fastsnn.convert import GraphNeuron
from tests.helpers import randomize_bn


def _snn(timesteps=7, mode="multistep"):
    torch.manual_seed(0)
    ann = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 12 * 12, 5),
    )
    ann = quantize_model(randomize_bn(ann), 2, alpha_init=1.0).eval()
    return convert_to_snn(ann, timesteps=timesteps, mode=mode)


def _hidden_neuron(snn) -> GraphNeuron:
    return snn.neurons()[1][1]


def _run_together(calls: dict, repeats: int = 20) -> dict:
    """Run every call ``repeats`` times in its own thread, all starting together."""
    barrier = threading.Barrier(len(calls))
    results = {name: [] for name in calls}
    errors = []

    def work(name, call):
        try:
            barrier.wait()
            with torch.no_grad():
                for _ in range(repeats):
                    results[name].append(call())
        except Exception as err:  # reported by the test, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-6)


def test_concurrent_calls_in_different_modes_each_get_the_single_threaded_result():
    snn = _snn()
    x = torch.randn(16, 1, 12, 12)
    calls = {
        "plain": lambda: snn(x),
        "return_steps": lambda: snn(x, return_steps=True),
        "forward_steps": lambda: snn.forward_steps(x),
    }
    with torch.no_grad():
        expected = {name: call() for name, call in calls.items()}
    for name, outs in _run_together(calls).items():
        assert all(_same(out, expected[name]) for out in outs), name


def test_a_streaming_call_runs_beside_multistep_calls_on_the_same_model():
    snn = _snn(mode="streaming")
    x = torch.randn(16, 1, 12, 12)
    calls = {"streaming": lambda: snn(x, return_steps=True), "steps": lambda: snn.forward_steps(x)}
    with torch.no_grad():
        expected = {name: call() for name, call in calls.items()}
    for name, outs in _run_together(calls, repeats=10).items():
        assert all(_same(out, expected[name]) for out in outs), name


def test_a_call_nested_in_another_call_sees_its_own_mode_and_timesteps():
    snn, other = _snn(timesteps=7), _snn(timesteps=3)
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        expected_outer, plain, other_steps = snn(x, return_steps=True), snn(x), other(x, return_steps=True)
    inner = {}

    def hook(module, inputs, out):
        if "started" not in inner:  # once, in the middle of the outer call (not again in the inner one)
            inner["started"] = True
            inner["plain"], inner["other"] = snn(x), other(x, return_steps=True)

    handle = _hidden_neuron(snn).register_forward_hook(hook)
    with torch.no_grad():
        outer = snn(x, return_steps=True)
    handle.remove()
    assert _same(inner["plain"], plain) and _same(inner["other"], other_steps)
    assert _same(outer, expected_outer)  # the inner calls did not end the outer call's mode


def test_timesteps_changed_during_a_call_apply_from_the_next_call():
    snn = _snn(timesteps=3)
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        at3 = snn(x, return_steps=True)
        snn.timesteps = 5
        at5 = snn(x, return_steps=True)
        snn.timesteps = 3

    def hook(module, inputs, out):
        snn.timesteps = 5

    handle = _hidden_neuron(snn).register_forward_hook(hook)
    with torch.no_grad():
        during = snn(x, return_steps=True)
    handle.remove()
    with torch.no_grad():
        after = snn(x, return_steps=True)
    assert _same(during, at3) and _same(after, at5)


def test_a_second_streaming_call_on_a_busy_model_is_refused():
    snn = _snn(mode="streaming")
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        expected = snn(x)
    started, release = threading.Event(), threading.Event()

    def hook(module, inputs, out):
        started.set()
        release.wait(timeout=30)

    handle = _hidden_neuron(snn).register_forward_hook(hook)
    first = {}
    thread = threading.Thread(target=lambda: first.update(out=snn(x).detach()))
    thread.start()
    assert started.wait(timeout=30)
    try:
        with pytest.raises(RuntimeError, match="streaming call .* already running"):
            snn(x)
    finally:
        handle.remove()
        release.set()
        thread.join()
    assert torch.allclose(first["out"], expected, atol=1e-6)  # the running call was not disturbed
    with torch.no_grad():
        assert torch.allclose(snn(x), expected, atol=1e-6)  # and the model is free again

    def nested(module, inputs, out):
        snn(x)

    handle = _hidden_neuron(snn).register_forward_hook(nested)
    with pytest.raises(RuntimeError, match="already running"), torch.no_grad():
        snn(x)
    handle.remove()
    with torch.no_grad():
        assert torch.allclose(snn(x), expected, atol=1e-6)
