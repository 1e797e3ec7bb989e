"""Test-session settings shared by every test directory."""

import os
import tempfile

import pytest


def pytest_configure(config):
    # The automatic kernel choices cache their measurements per user; tests must neither
    # read a cached decision of this machine nor leave one behind.
    os.environ["FASTSNN_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastsnn-test-cache-")


@pytest.fixture
def fresh_kernel_choice(tmp_path, monkeypatch):
    """An empty kernel-choice cache and no decisions in this process, before and after the test."""
    from fastsnn import kernel_choice

    monkeypatch.setenv("FASTSNN_CACHE_DIR", str(tmp_path))
    kernel_choice.reset()
    yield
    kernel_choice.reset()
