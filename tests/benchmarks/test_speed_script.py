"""python -m benchmarks.speed in a tiny configuration: it runs, records where it ran, and the numbers
in its result are the ones it claims (ratios recomputed from the raw times, memory that behaves as
the simulation modes say). The SpikingJelly parts run only where it is installed."""

import math

import pytest

from benchmarks import speed
from fastsnn.peers import spikingjelly as peers
from tests.benchmarks.recorded import check_recorded
from tests.helpers import run_script

HAVE_SJ = peers.spikingjelly_version() is not None
OURS = ["fastsnn_default", "fastsnn_eager", "fastsnn_streaming", "fastsnn_contiguous"]
TINY = ["--archs", "vgg11", "resnet20", "--width", "0.125", "--batch", "4", "--timesteps", "3", "7", "--repeats", "2"]
TINY += ["--max-wait", "0", "--device", "cpu", "--variants", *OURS, *speed.PEERS]
# (the torch.compile-d variants would spend most of a minute compiling; tests/core and
# test_simulator_kernels.py check them)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    return out, run_script(speed.main, [*TINY, "--out-dir", str(out)])


def test_records_the_rows_targets_machine_and_versions(run):
    out, result = run
    saved = check_recorded(out, "speed", "speed")
    assert set(saved) >= {"inference", "targets", "config"} and saved["config"]["batch"] == 4
    md = (out / "speed.md").read_text()
    assert "### Inference speed and memory" in md and "### Targets" in md
    assert md.count("| vgg11 |") == md.count("| resnet20 |") == len(result["inference"]) // 2


def test_every_method_is_measured_at_every_timestep(run):
    rows = run[1]["inference"]
    methods = set(OURS) | (set(speed.PEERS) if HAVE_SJ else set())
    for arch in ("vgg11", "resnet20"):
        for T in (3, 7):
            group = [r for r in rows if r["arch"] == arch and r["group_T"] == T]
            assert {r["method"] for r in group if r["T"] == T} == methods
            assert {r["method"] for r in group if r["T"] is None} == {"ann_float", "ann_quant"}
    for r in rows:
        assert len(r["times_s"]) == 2 and all(t > 0 for t in r["times_s"])
        assert r["min_s"] == min(r["times_s"]) and math.isclose(r["images_per_s"], 4 / r["min_s"])
        assert r["peak_mib"] > 0


def test_ratios_are_recomputed_from_the_raw_times_of_the_same_group(run):
    rows = run[1]["inference"]
    for r in rows:
        if r["T"] is None:
            continue
        group = {g["method"]: g for g in rows if g["arch"] == r["arch"] and g["group_T"] == r["T"]}
        assert math.isclose(r["vs_T_x_quant_ann"], r["min_s"] / (r["T"] * min(group["ann_quant"]["times_s"])))
        if HAVE_SJ:
            peer = min(min(group[m]["times_s"]) for m in ("sj_single_step", "sj_multi_step"))
            assert math.isclose(r["vs_spikingjelly"], peer / r["min_s"])


@pytest.mark.skipif(not HAVE_SJ, reason="SpikingJelly not installed")
def test_stbif_gives_our_snns_outputs(run):
    rows = [r for r in run[1]["inference"] if r["method"].startswith("stbif")]
    assert len(rows) == 2 * 2 * 2  # 2 archs x 2 T x single / multi-step
    assert all(r["max_abs_diff_vs_fastsnn"] < 1e-4 for r in rows)  # T = 2**bits - 1: the same SNN


def test_streaming_memory_does_not_grow_with_t_while_multistep_does(run):
    rows = run[1]["inference"]

    def mem(arch, method, T):
        return next(r["peak_mib"] for r in rows if r["arch"] == arch and r["method"] == method and r["T"] == T)

    for arch in ("vgg11", "resnet20"):
        assert mem(arch, "fastsnn_streaming", 7) <= 1.05 * mem(arch, "fastsnn_streaming", 3)
        assert mem(arch, "fastsnn_eager", 7) > 1.2 * mem(arch, "fastsnn_eager", 3)
        assert mem(arch, "fastsnn_streaming", 7) < mem(arch, "fastsnn_eager", 7)


def test_targets_name_each_requirement(run):
    targets = run[1]["targets"]
    names = " ".join(t["target"] for t in targets)
    assert "T=3: SNN time <= 1.1 x T x quantized ANN (fastsnn_default)" in names  # the default is judged
    assert "streaming peak memory <= 1.5 x quantized ANN" in names
    assert ("throughput >= 1.5 x SpikingJelly" in names) == HAVE_SJ
    for t in targets:
        assert t["met"] == (t["value"] >= t["limit"] if "throughput" in t["target"] else t["value"] <= t["limit"])


def test_runs_without_spikingjelly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(peers, "spikingjelly_version", lambda: None)
    argv = ["--archs", "vgg11", "--width", "0.125", "--batch", "2", "--timesteps", "3", "--repeats", "1"]
    argv += ["--max-wait", "0", "--variants", "fastsnn_eager", "sj_single_step", "--out-dir", str(tmp_path)]
    result = run_script(speed.main, argv)
    assert "SpikingJelly skipped: not installed" in capsys.readouterr().err
    methods = {r["method"] for r in result["inference"]}
    assert result["spikingjelly_skipped"] and methods == {"ann_float", "ann_quant", "fastsnn_eager"}
    assert (tmp_path / "speed.json").exists()


def test_timesteps_must_be_two_to_the_bits_minus_one():
    with pytest.raises(SystemExit):
        speed.parse_args(["--timesteps", "5"])
