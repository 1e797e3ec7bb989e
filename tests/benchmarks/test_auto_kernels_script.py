"""benchmarks/auto_kernels.py runs each setting and reports times (tiny network, few batches)."""

import pytest

from benchmarks import auto_kernels
from fastsnn.planner import kernels


@pytest.mark.parametrize("setting", ["auto", "eager"])
def test_auto_kernels_script_runs(setting, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSNN_CACHE_DIR", str(tmp_path))
    kernels.reset()
    argv = ["--setting", setting, "--width", "0.25", "--batches", "3", "--batch", "2", "--image-size", "8"]
    result = auto_kernels.main(argv)
    assert result["setting"] == setting and 0 < result["per_batch_s"] <= result["total_s"]
    assert not (tmp_path / "kernels.json").exists()  # three tiny batches never pay for a compile
