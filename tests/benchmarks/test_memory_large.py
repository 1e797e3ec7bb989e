"""python -m benchmarks.memory_large at small sizes: every method gets a row, the meta-device count
agrees with real CPU runs of our simulations, the memory behaves as the modes say, and the result
records where it ran."""

import pytest

from benchmarks import memory_large
from fastsnn.peers import spikingjelly as peers
from tests.benchmarks.recorded import check_recorded
from tests.helpers import run_script

HAVE_SJ = peers.spikingjelly_version() is not None
OURS = {"fastsnn_default", "fastsnn_multistep", "fastsnn_streaming", "fastsnn_chunked", "fastsnn_streaming_chunked"}


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory_large")
    argv = ["--recipes", "cifar10_resnet20", "--timesteps", "3", "7", "--max-wait", "0", "--out-dir", str(out)]
    return out, run_script(memory_large.main, argv)


def _peak(rows, method, T):
    return next(r["peak_mib"] for r in rows if r["method"] == method and r["T"] == T)


def test_records_rows_validation_targets_machine_and_versions(resnet):
    out, _ = resnet
    saved = check_recorded(out, "memory_large", "memory_large")
    assert saved["rows"] and saved["validation"] and saved["targets"]
    md = (out / "memory_large.md").read_text()
    assert "### Peak memory at detection and segmentation sizes" in md and "### Validation" in md
    assert "### Targets" in md and "### Streaming state" in md


def test_every_method_has_a_row_and_memory_behaves_as_the_modes_say(resnet):
    rows = resnet[1]["rows"]
    expected = OURS | {"fastsnn_auto"} | (set(memory_large.PEERS) if HAVE_SJ else set())
    for T in (3, 7):
        assert {r["method"] for r in rows if r["T"] == T and r["method"] != "neuron_state"} == expected
        assert _peak(rows, "fastsnn_chunked", T) < _peak(rows, "fastsnn_multistep", T)
        assert _peak(rows, "fastsnn_auto", T) == _peak(rows, "fastsnn_multistep", T)  # small: multistep
    assert _peak(rows, "fastsnn_streaming", 7) == _peak(rows, "fastsnn_streaming", 3)  # does not grow with T
    assert _peak(rows, "fastsnn_multistep", 7) > 1.5 * _peak(rows, "fastsnn_multistep", 3)
    state = [r for r in rows if r["method"] == "neuron_state"]
    assert len(state) == 2 and state[0]["neurons_per_sample"] > 0 and state[0]["state_mib"] > 0


def test_the_meta_count_matches_real_runs_of_our_simulations(resnet):
    checks = resnet[1]["validation"]
    ours = [r for r in checks if r["method"] in OURS | {"ann_quant"}]
    assert len(ours) == 1 + len(OURS)
    for r in ours:
        assert 0.9 <= r["ratio"] <= 1.1, r
        assert r["seconds"] > 0


def test_targets_judge_the_streaming_simulations_at_the_largest_t(resnet):
    targets = resnet[1]["targets"]
    assert [t["target"] for t in targets] == [
        "cifar10_resnet20 T=7: fastsnn_streaming <= 2 x quantized ANN",
        "cifar10_resnet20 T=7: fastsnn_streaming_chunked <= 2 x quantized ANN",
    ]
    assert all(t["met"] == (t["value"] <= t["limit"]) for t in targets)


@pytest.mark.slow
def test_detection_and_segmentation_recipes_at_small_sizes(tmp_path):
    argv = ["--quick", "--timesteps", "7", "15", "--recipes", "voc_yolo_r34", "voc_deeplabv3", "--no-validate"]
    result = run_script(memory_large.main, [*argv, "--max-wait", "0", "--out-dir", str(tmp_path)])
    for recipe in ("voc_yolo_r34", "voc_deeplabv3"):
        mine = [r for r in result["rows"] if r["recipe"] == recipe and r["method"] != "neuron_state"]
        assert all(r["size"] == 128 for r in mine)  # --quick: at most 128 px
        assert all(r.get("peak_mib") for r in mine if r["method"] not in memory_large.PEERS)
        # peers: a figure, or the peer's own refusal (SpikingJelly's rate coding refuses both networks)
        assert all(r.get("peak_mib") or r["error"].startswith("Refused: ") for r in mine)
        if HAVE_SJ:
            assert all(r.get("peak_mib") for r in mine if r["method"].startswith("stbif"))
        peak = {(r["method"], r["T"]): r.get("peak_mib") for r in mine}
        # streaming keeps one state whatever T; multi-step grows with T and needs more by T = 15
        assert peak["fastsnn_streaming", 7] == peak["fastsnn_streaming", 15] < peak["fastsnn_multistep", 15]
        assert peak["fastsnn_multistep", 15] > 1.5 * peak["fastsnn_multistep", 7]
