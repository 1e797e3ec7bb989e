"""benchmarks/fidelity.py in a tiny configuration (tiny nets, a few dozen images, one epoch):
it runs, writes its JSON and markdown, and what they say is consistent with the raw curves.
SpikingJelly parts run only where it is installed."""

import json

import pytest

from benchmarks import bench_utils, fidelity
from tests.helpers import run_script

HAVE_SJ = bench_utils.spikingjelly_version() is not None
TINY = [
    "--models",
    "vgg11",
    "resnet20",
    "--width-scale",
    "0.25",
    "--subset",
    "48",
    "--fp-epochs",
    "1",
    "--q-epochs",
    "1",
    "--bits",
    "2",
    "--sj-timesteps",
    "1",
    "3",
    "7",
    "--our-timesteps",
    "1",
    "2",
    "3",
    "--our-max-t",
    "3",
    "--stats-images",
    "8",
    "--epochs-per-layer",
    "1",
    "--no-compile",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fidelity")
    return out, run_script(fidelity.main, [*TINY, "--out-dir", str(out)])


def test_writes_json_and_markdown(run):
    out, result = run
    saved = json.loads((out / "fidelity.json").read_text())
    md = (out / "fidelity.md").read_text()
    assert set(saved) >= {"environment", "config", "splits", "results", "summary", "targets", "command"}
    assert saved["splits"] == {"train": 48, "val": 48, "test": 48}
    assert [r["model"] for r in saved["results"]] == ["vgg11", "resnet20"]
    assert "Smallest T within 1 point" in md and "#### vgg11" in md and "#### resnet20" in md
    assert ("| max |" in md) == HAVE_SJ


def test_every_method_has_a_curve_of_valid_accuracies(run):
    for res in run[1]["results"]:
        assert 0 <= res["float_ann"] <= 100
        assert [sj["mode"] for sj in res["spikingjelly"]] == (["max", "99.9%"] if HAVE_SJ else [])
        for sj in res["spikingjelly"]:
            assert sorted(int(t) for t in sj["curve"]) == [1, 3, 7]
        (row,) = res["ours"]
        assert row["bits"] == 2 and row["T"] == 3 and 0 <= row["quant_ann"] <= 100
        for v in fidelity.VARIANTS:
            curve = {int(t): a for t, a in row["curves"][v].items()}
            assert sorted(curve) == [1, 2, 3] and row["at_T"][v] == curve[3]
            assert all(0 <= a <= 100 and (a * 48 / 100) == pytest.approx(round(a * 48 / 100)) for a in curve.values())
        assert len(row["finetune_layers"]) == {"vgg11": 7, "resnet20": 18}[res["model"]]
        st = row["stats"]["signed_ft"]
        assert 0 < st["spike_rate"] < 1 and st["sops"] > 0 and st["ann_macs"] > st["first_layer_macs"] > 0
        assert st["energy_ratio"] == pytest.approx(
            (st["first_layer_macs"] * 4.6 + st["sops"] * 0.9) / (st["ann_macs"] * 4.6)
        )


def test_the_first_step_of_a_signed_and_an_unsigned_snn_agree(run):
    # at t = 1 no neuron can have fired a spike to take back: signed == unsigned
    for res in run[1]["results"]:
        (row,) = res["ours"]
        assert row["curves"]["signed"][1] == row["curves"]["unsigned"][1]


def test_summary_smallest_t_follows_from_the_curves(run):
    result = run[1]
    for r in result["summary"]:
        curve = {int(t): a for t, a in r["curve"].items()}
        ok = [t for t in sorted(curve) if curve[t] >= r["own_ann"] - 1.0]
        assert r["t_within_own"] == (ok[0] if ok else None)
    assert len(result["summary"]) == 2 * (3 + (2 if HAVE_SJ else 0))


def test_smallest_t():
    curve = {1: 10.0, 3: 95.0, 7: 98.5, 15: 99.0}
    assert fidelity.smallest_t(curve, 99.0) == 7
    assert fidelity.smallest_t(curve, 96.0) == 3
    assert fidelity.smallest_t(curve, 100.0) == 15
    assert fidelity.smallest_t(curve, 100.5) is None


def test_runs_without_spikingjelly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_utils, "spikingjelly_version", lambda: None)
    result = run_script(
        fidelity.main,
        [
            "--models",
            "vgg11",
            "--width-scale",
            "0.25",
            "--subset",
            "24",
            "--fp-epochs",
            "0",
            "--q-epochs",
            "0",
            "--bits",
            "2",
            "--our-timesteps",
            "1",
            "3",
            "--our-max-t",
            "3",
            "--stats-images",
            "4",
            "--no-validate",
            "--no-compile",
            "--out-dir",
            str(tmp_path),
        ],
    )
    assert "SpikingJelly not installed: skipped" in capsys.readouterr().err
    assert result["spikingjelly_skipped"] and result["results"][0]["spikingjelly"] == []
    assert (tmp_path / "fidelity.md").exists()


def test_digits_defaults_are_unchanged():
    args = fidelity.parse_args([])
    assert args.data == "digits" and args.name == "fidelity" and args.weight_bits == "none"
    assert (args.fp_epochs, args.q_epochs, args.bits, args.our_max_t) == (20, 8, [2, 3, 4], 63)
    assert args.widths == {"vgg11": 0.25, "resnet20": 1.0} and args.epochs_per_layer == {"vgg11": 1, "resnet20": 4}
    assert args.sj_timesteps == [1, 3, 7, 15, 31, 63, 127, 255] and args.sj_images is None
    assert not args.stbif and not args.plot and args.ft_images is None and args.train_images is None
    quick = fidelity.parse_args(["--data", "fashion_mnist", "--quick"])
    assert quick.name == "fidelity_fashion_mnist_quick" and quick.weight_bits == "same" and quick.stbif
    assert (quick.train_images, quick.val_images, quick.test_images, quick.ft_images) == (3000, 500, 1000, 512)
    assert fidelity.weight_bits_for(2, "same") == 2 and fidelity.weight_bits_for(4, "none") is None


def test_float_clip_trains_learned_clips_and_refuses_rate_coding(capsys):
    from fastsnn.quantizers import QuantReLU

    args = fidelity.parse_args(["--float-clip", "--sj-modes"])
    clipped = [m for m in fidelity.float_net("resnet20", 0.25, args).modules() if isinstance(m, QuantReLU)]
    assert clipped and all(m.bits is None and m.alpha.requires_grad for m in clipped)
    plain = fidelity.float_net("resnet20", 0.25, fidelity.parse_args(["--sj-modes"]))
    assert not any(isinstance(m, QuantReLU) for m in plain.modules())
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--float-clip"])  # rate coding (on by default) needs plain ReLUs
    assert "--float-clip" in capsys.readouterr().err


# --------------------------------------------------------------------------- Fashion-MNIST on idx fixtures


def _write_fashion_idx(folder, n_train: int = 40, n_test: int = 20) -> None:
    """The four gzipped idx files with random images; never the real data set."""
    import gzip
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) * 3 % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        header = struct.pack(">I", 0x800 + a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
        (folder / f"{name}.gz").write_bytes(gzip.compress(header + a.astype(np.uint8).tobytes()))


FASHION_TINY = [
    "--data",
    "fashion_mnist",
    "--models",
    "resnet20",
    "--width-scale",
    "0.25",
    "--val-size",
    "10",
    "--train-images",
    "24",
    "--val-images",
    "8",
    "--test-images",
    "16",
    "--ft-images",
    "16",
    "--sj-images",
    "12",
    "--fp-epochs",
    "1",
    "--q-epochs",
    "1",
    "--bits",
    "2",
    "--sj-timesteps",
    "1",
    "3",
    "--our-timesteps",
    "1",
    "2",
    "3",
    "5",
    "--our-max-t",
    "5",
    "--stats-images",
    "4",
    "--no-compile",
]


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fashion_data")
    _write_fashion_idx(root)
    out = tmp_path_factory.mktemp("fidelity_fashion")
    return root, out, run_script(fidelity.main, [*FASHION_TINY, "--data-root", str(root), "--out-dir", str(out)])


def test_fashion_mnist_reads_the_idx_files_and_writes_its_own_results(fashion_run):
    root, out, result = fashion_run
    saved = json.loads((out / "fidelity_fashion_mnist.json").read_text())
    md = (out / "fidelity_fashion_mnist.md").read_text()
    assert saved["data"] == "fashion_mnist" and saved["data_source"]["folder"] == str(root)
    assert saved["splits"] == {"train": 24, "val": 8, "test": 16}
    assert "Fashion-MNIST" in md and "Device:" in md and "load average" in md
    load = saved["load"]
    assert load["samples"] and load["start"] == load["samples"][0] and load["end"] == load["samples"][-1]
    (res,) = saved["results"]
    assert res["width"] == pytest.approx(0.5 * 0.25)  # ResNet-20 at Fashion-MNIST's width 0.5, scaled
    (row,) = res["ours"]
    assert row["weight_bits"] == 2  # weights quantized as in the paper's CIFAR recipes
    assert all(m.startswith("resnet20: ") for m in (t["target"] for t in saved["targets"]))
    assert {t["met"] for t in saved["targets"] if "RateCoding" in t["target"]} <= {None}
    if HAVE_SJ:
        assert res["sj_test_images"] == 12 and 0 <= res["float_ann_sj_images"] <= 100
        assert all(sorted(int(t) for t in sj["curve"]) == [1, 3] for sj in res["spikingjelly"])


def test_fashion_mnist_targets_follow_from_the_numbers(fashion_run):
    result = fashion_run[2]
    res = result["results"][0]
    (row,) = res["ours"]
    by_name = {t["target"]: t for t in result["targets"]}
    q = by_name["resnet20: 2-bit quantized ANN within 1.5 points of the float ANN"]
    assert q["value"] == pytest.approx(res["float_ann"] - row["quant_ann"]) and q["met"] == (q["value"] <= 1.5)
    ft = by_name["resnet20: signed + fine-tuned SNN within 0.5 points of the 2-bit ANN at T = 3"]
    assert ft["value"] == pytest.approx(row["quant_ann"] - row["at_T"]["signed_ft"])
    assert ft["met"] == (ft["value"] <= 0.5)


@pytest.mark.skipif(not HAVE_SJ, reason="SpikingJelly not installed")
def test_fashion_mnist_stbif_curve_is_our_signed_curve_up_to_t_3(fashion_run):
    (row,) = fashion_run[2]["results"][0]["ours"]
    assert row["at_T"]["stbif"] == row["curves"]["stbif"][3]
    for t in (1, 2, 3):
        assert row["curves"]["stbif"][t] == row["curves"]["signed"][t]
    assert sorted(row["curves"]["stbif"]) == [1, 2, 3, 5]


def test_fashion_mnist_writes_the_figure(fashion_run):
    pytest.importorskip("matplotlib")
    _, out, result = fashion_run
    png = out / "fidelity_fashion_mnist.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and result["figure"] == str(png)
    assert f"Figure: `{png}`" in (out / "fidelity_fashion_mnist.md").read_text()


def test_merge_combines_per_model_runs(run, tmp_path):
    out, result = run
    merged = run_script(
        fidelity.main,
        ["--merge", str(out / "fidelity.json"), str(out / "fidelity.json"), "--name", "m", "--out-dir", str(tmp_path)],
    )
    assert [r["model"] for r in merged["results"]] == ["vgg11", "resnet20"] * 2
    assert len(merged["summary"]) == 2 * len(result["summary"]) and len(merged["targets"]) == 2 * len(result["targets"])
    assert merged["seconds"] == result["seconds"] and len(merged["merged_from"]) == 2
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["config"]["models"] == ["vgg11", "resnet20"] * 2 and (tmp_path / "m.md").exists()
