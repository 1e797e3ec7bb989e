"""python -m benchmarks.auto_kernels runs each setting and records its times (tiny network, few batches)."""

import pytest

from benchmarks import auto_kernels
from fastsnn.planner import kernels
from tests.benchmarks.recorded import check_recorded
from tests.helpers import run_script


@pytest.mark.parametrize("setting", ["auto", "eager"])
def test_auto_kernels_runs_and_records_each_setting(setting, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSNN_CACHE_DIR", str(tmp_path / "cache"))
    kernels.reset()
    argv = ["--setting", setting, "--width", "0.25", "--batches", "3", "--batch", "2", "--image-size", "8"]
    result = run_script(auto_kernels.main, [*argv, "--max-wait", "0", "--out-dir", str(tmp_path)])
    (row,) = result["rows"]
    assert row["setting"] == setting and len(row["times_s"]) == 3
    assert 0 < row["per_batch_s"] <= row["total_s"] == pytest.approx(sum(row["times_s"]))
    check_recorded(tmp_path, f"auto_kernels_{setting}", "auto_kernels")
    assert not (tmp_path / "cache" / "kernels.json").exists()  # three tiny batches never pay for a compile
