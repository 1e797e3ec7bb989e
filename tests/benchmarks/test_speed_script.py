"""benchmarks/speed.py in a tiny configuration: it runs, writes its JSON and markdown, and the
numbers in them are the ones it claims (ratios recomputed from the raw times, memory that
behaves as the simulation modes say). SpikingJelly parts run only where it is installed."""

import json
import math

import pytest
import torch

from benchmarks import bench_utils, speed
from tests.helpers import run_script

HAVE_SJ = bench_utils.spikingjelly_version() is not None
TINY = [
    "--archs",
    "vgg11",
    "resnet20",
    "--width",
    "0.125",
    "--batch",
    "4",
    "--timesteps",
    "3",
    "7",
    "--repeats",
    "2",
    "--train-steps",
    "2",
    "--finetune-batches",
    "1",
    "--max-wait",
    "0",
    "--variants",
    "fastsnn_default",
    "fastsnn_eager",
    "fastsnn_streaming",
    "fastsnn_contiguous",
    "sj_single_step",
    "sj_multi_step",
    "stbif_single_step",
    "stbif_multi_step",
]
# (the torch.compile-d variants would spend most of a minute compiling; tests/core and
# test_simulator_kernels.py check them)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    return out, run_script(speed.main, [*TINY, "--out-dir", str(out)])


def test_writes_json_and_markdown_with_every_section(run):
    out, result = run
    saved = json.loads((out / "speed.json").read_text())
    md = (out / "speed.md").read_text()
    assert set(saved) >= {"environment", "config", "load", "inference", "training", "finetune", "targets", "command"}
    assert saved["environment"]["device"] == "cpu" and saved["environment"]["torch"] == torch.__version__
    assert "load_before" in saved["load"] and saved["command"].startswith("python ")
    for title in ("Inference speed and memory", "Training step", "Layer-wise fine-tuning", "Targets"):
        assert title in md
    assert md.count("| vgg11 |") >= 7 and md.count("| resnet20 |") >= 7


def test_every_method_is_measured_at_every_timestep(run):
    rows = run[1]["inference"]
    peers = {"sj_single_step", "sj_multi_step", "stbif_single_step", "stbif_multi_step"}
    methods = {"fastsnn_default", "fastsnn_eager", "fastsnn_streaming", "fastsnn_contiguous"} | (
        peers if HAVE_SJ else set()
    )
    for arch in ("vgg11", "resnet20"):
        for T in (3, 7):
            assert {r["method"] for r in rows if r["arch"] == arch and r["T"] == T} == methods
        assert {r["method"] for r in rows if r["arch"] == arch and r["T"] is None} == {"ann_float", "ann_quant"}
    for r in rows:
        assert len(r["times_s"]) >= 2 and all(t > 0 for t in r["times_s"])
        assert r["min_s"] == min(r["times_s"]) and math.isclose(r["images_per_s"], 4 / r["min_s"])
        assert r["peak_mem_mb"] > 0


@pytest.mark.skipif(not HAVE_SJ, reason="SpikingJelly not installed")
def test_stbif_gives_our_snns_outputs_and_is_reported(run):
    out, result = run
    rows = [r for r in result["inference"] if r["method"].startswith("stbif")]
    assert len(rows) == 2 * 2 * 2  # 2 archs x 2 T x single / multi-step
    assert all(r["max_abs_diff_vs_fastsnn"] < 1e-4 for r in rows)  # T = 2**bits - 1: the same SNN
    md = (out / "speed.md").read_text()
    assert "STBIF (SpikingJelly's STBIFNode on our quantized ANN) vs our SNN" in md


def test_ratios_are_recomputed_from_the_raw_times(run):
    result = run[1]
    for g in result["groups"]:
        ann = min(g["times"]["ann_quant"])
        for r in result["inference"]:
            if r["arch"] == g["arch"] and r["T"] == g["T"]:
                assert math.isclose(r["vs_T_x_quant_ann"], r["min_s"] / (g["T"] * ann), rel_tol=1e-9)


def test_streaming_memory_does_not_grow_with_t_while_multistep_does(run):
    rows = run[1]["inference"]

    def mem(arch, method, T):
        return next(r["peak_mem_mb"] for r in rows if r["arch"] == arch and r["method"] == method and r["T"] == T)

    for arch in ("vgg11", "resnet20"):
        assert mem(arch, "fastsnn_streaming", 7) <= 1.05 * mem(arch, "fastsnn_streaming", 3)
        assert mem(arch, "fastsnn_eager", 7) > 1.2 * mem(arch, "fastsnn_eager", 3)
        assert mem(arch, "fastsnn_streaming", 7) < mem(arch, "fastsnn_eager", 7)


def test_training_and_finetuning_timings(run):
    result = run[1]
    train = {(r["arch"], r["model"]): r for r in result["training"]}
    models = ("float", "quant_a2", "quant_a2_w2_apot", "quant_a2_w2_apot_fused")
    assert set(train) == {(a, m) for a in ("vgg11", "resnet20") for m in models}
    assert all(math.isclose(train[(a, "float")]["vs_float"], 1.0) for a in ("vgg11", "resnet20"))
    ft = result["finetune"]
    # every neuron layer but the first (constant input): VGG-11 has 8, ResNet-20 19
    assert len([r for r in ft if r["arch"] == "vgg11"]) == 7 and len([r for r in ft if r["arch"] == "resnet20"]) == 18
    assert all(r["seconds"] > 0 for r in ft)


def test_targets_name_each_requirement(run):
    targets = run[1]["targets"]
    names = " ".join(t["target"] for t in targets)
    assert "1.1 x T x quantized ANN" in names and "streaming peak memory" in names and "training step" in names
    assert "training step <= 1.3 x float ANN (fused QuantReLU)" in names
    assert "T=3: SNN time <= 1.1 x T x quantized ANN (fastsnn_default)" in names  # the default is judged
    assert ("SpikingJelly" in names) == HAVE_SJ
    for t in targets:
        assert t["met"] == (t["value"] >= t["limit"] if "throughput" in t["target"] else t["value"] <= t["limit"])


def test_runs_without_spikingjelly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_utils, "spikingjelly_version", lambda: None)
    result = run_script(
        speed.main,
        [
            "--archs",
            "vgg11",
            "--width",
            "0.125",
            "--batch",
            "2",
            "--timesteps",
            "3",
            "--repeats",
            "1",
            "--no-train",
            "--finetune-timesteps",
            "--max-wait",
            "0",
            "--variants",
            "fastsnn_eager",
            "sj_single_step",
            "--out-dir",
            str(tmp_path),
        ],
    )
    assert "SpikingJelly not installed: skipped" in capsys.readouterr().err
    assert result["spikingjelly_skipped"] and not any(r["method"].startswith("sj") for r in result["inference"])
    assert (tmp_path / "speed.json").exists()
