"""Test-session settings shared by every test directory."""

import os
import tempfile


def pytest_configure(config):
    # The automatic neuron-kernel choice caches its measurements per user; tests must neither
    # read a cached decision of this machine nor leave one behind.
    os.environ["FASTSNN_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastsnn-test-cache-")
