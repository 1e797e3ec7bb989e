"""benchmarks/memory_large.py in a small configuration: every method gets a row, the meta-device
count agrees with real CPU runs for our simulations, and the memory behaves as the modes say."""

import json

import pytest

from benchmarks import bench_utils, memory_large
from tests.helpers import run_script

HAVE_SJ = bench_utils.spikingjelly_version() is not None


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory_large")
    argv = ["--models", "resnet20", "--resnet-batch", "8", "--resnet-chunk", "4", "--timesteps", "3", "7"]
    return out, run_script(memory_large.main, [*argv, "--out-dir", str(out)])


def _peak(rows, method, T):
    return next(r["peak_mib"] for r in rows if r["method"] == method and r["T"] == T)


def test_writes_json_and_markdown(resnet):
    out, result = resnet
    saved = json.loads((out / "memory_large.json").read_text())
    md = (out / "memory_large.md").read_text()
    assert set(saved) >= {"rows", "validation", "targets", "environment", "load", "command"}
    assert "Peak memory at detection and segmentation sizes" in md and "Validation" in md and "Targets" in md


def test_every_method_has_a_row_and_memory_behaves_as_the_modes_say(resnet):
    rows = resnet[1]["rows"]
    expected = set(memory_large.METHODS) - (set() if HAVE_SJ else set(memory_large.PEERS))
    for T in (3, 7):
        assert {r["method"] for r in rows if r["T"] == T and r["method"] != "neuron_state"} == expected - {"ann_quant"}
        assert _peak(rows, "fastsnn_streaming", T) < _peak(rows, "fastsnn_multistep", T) or T == 3
        assert _peak(rows, "fastsnn_chunked", T) < _peak(rows, "fastsnn_multistep", T)
        assert _peak(rows, "fastsnn_auto", T) == _peak(rows, "fastsnn_multistep", T)  # small: multistep
    assert _peak(rows, "fastsnn_streaming", 7) == _peak(rows, "fastsnn_streaming", 3)  # does not grow with T
    assert _peak(rows, "fastsnn_multistep", 7) > 1.5 * _peak(rows, "fastsnn_multistep", 3)
    state = [r for r in rows if r["method"] == "neuron_state"]
    assert state and state[0]["neurons_per_sample"] > 0 and state[0]["bytes_per_neuron"] == 5


def test_the_meta_count_matches_real_runs_of_our_simulations(resnet):
    checks = resnet[1]["validation"]
    ours = [r for r in checks if r["method"] in ("ann_quant", *memory_large.OURS)]
    assert len(ours) == 1 + len(memory_large.OURS)
    for r in ours:
        assert 0.9 <= r["ratio"] <= 1.1, r
        assert r["seconds"] > 0


def test_detection_and_segmentation_models_at_small_sizes(tmp_path):
    result = run_script(
        memory_large.main,
        [
            "--quick",
            "--timesteps",
            "7",
            "15",
            "--models",
            "yolo_r34",
            "deeplabv3",
            "--no-validate",
            "--out-dir",
            str(tmp_path),
        ],
    )
    rows = result["rows"]
    for model in ("yolo_r34", "deeplabv3"):
        mine = [r for r in rows if r["model"] == model]
        ours = [r for r in mine if r["method"] not in memory_large.PEERS]
        assert all(r.get("peak_mib") for r in ours), [r for r in ours if not r.get("peak_mib")]
        # peers: a figure, or the peer's own refusal (SpikingJelly's rate-coding recipe refuses both models)
        assert all(r.get("peak_mib") or r["error"].startswith("Refused: ") for r in mine)
        if HAVE_SJ:
            assert all(r.get("peak_mib") for r in mine if r["method"].startswith("stbif"))
        peak = {(r["method"], r["T"]): r.get("peak_mib") for r in mine}
        # streaming keeps one state whatever T; multi-step grows with T and needs more by T = 15
        assert peak["fastsnn_streaming", 7] == peak["fastsnn_streaming", 15] < peak["fastsnn_multistep", 15]
        assert peak["fastsnn_multistep", 15] > 1.5 * peak["fastsnn_multistep", 7]
