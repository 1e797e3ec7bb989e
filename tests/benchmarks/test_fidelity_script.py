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
