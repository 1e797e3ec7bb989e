"""Test-session settings shared by every test directory."""

import os
import tempfile

import pytest
import torch


def pytest_configure(config):
    # The automatic kernel choices cache their measurements per user; tests must neither
    # read a cached decision of this machine nor leave one behind.
    os.environ["FASTSNN_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastsnn-test-cache-")
    # Many tests compare two simulations' outputs exactly. An int8 probe falls due after a
    # timing-dependent amount of float work and would switch a conv's kernel (the same values up
    # to float rounding) between them; the tests of the probe set the threshold themselves.
    from fastsnn.planner import kernels

    kernels.INTEGER_PROBE_AFTER_S = float("inf")


@pytest.fixture
def fresh_kernel_choice(tmp_path, monkeypatch):
    """An empty kernel-choice cache and no decisions in this process, before and after the test."""
    from fastsnn.planner import kernels

    monkeypatch.setenv("FASTSNN_CACHE_DIR", str(tmp_path))
    kernels.reset()
    yield
    kernels.reset()


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models gain nothing from more, two spinning OpenMP threads on a
    shared 2-core machine slow them several times, and it fixes the float reduction order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
