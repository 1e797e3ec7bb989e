"""The stages, run in-process on the real config (digits, tiny VGG-11, a few batches)."""

import json
import logging
from pathlib import Path

import pytest
import torch

from tasks.pipeline import run
from tasks.settings import SettingsError

RESULT_KEYS = {
    "task",
    "model",
    "data",
    "bits",
    "timesteps",
    "signed",
    "metric",
    "ann",
    "snn",
    "snn_finetuned",
    "snn_per_step",
    "snn_finetuned_per_step",
    "seed",
    "overrides",
    "spike_rate",
    "sops",
    "energy_ratio",
}


def test_default_run_trains_converts_finetunes_and_writes_results(make_config):
    cfg = make_config()
    results = run(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert RESULT_KEYS <= saved.keys()
    assert saved["task"] == "classification" and saved["model"] == "vgg11" and saved["data"] == "digits"
    assert saved["metric"] == "acc" and saved["bits"] == 2 and saved["timesteps"] == 3 and saved["signed"] is True
    # each SNN pass keeps its own curve: the converted SNN's is not overwritten by the fine-tuned one's
    assert len(saved["snn_per_step"]) == 3 and saved["snn_per_step"][-1] == pytest.approx(saved["snn"])
    assert len(saved["snn_finetuned_per_step"]) == 3
    assert saved["snn_finetuned_per_step"][-1] == pytest.approx(saved["snn_finetuned"])
    assert saved["seed"] == cfg.seed and "debug=tiny" in saved["overrides"]
    for key in ("ann", "snn", "snn_finetuned", "spike_rate"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["sops"] > 0 and 0 < saved["energy_ratio"]
    assert saved["finetune_layers"] and all("mse_before" in layer for layer in saved["finetune_layers"])
    assert Path(saved["snn_checkpoint"]).is_file() and Path(saved["checkpoint"]).is_file()
    assert results["ann"] == saved["ann"]
    # the fine-tuning stage checkpoints after every layer, so an interrupted stage resumes
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints/finetune/finetune_last.pt", weights_only=False)
    assert state["next_layer"] == len(saved["finetune_layers"])


def test_stage_hand_over_train_then_convert_and_finetune_from_its_checkpoint(make_config):
    first = run(make_config("stages=[train]", name="train"))
    assert "snn" not in first and Path(first["checkpoint"]).is_file()
    second = run(make_config("stages=[convert,finetune]", f"ckpt_path={first['checkpoint']}", name="convert"))
    # the bit width comes from the checkpoint; the same weights give the same ANN metric
    assert second["bits"] == 2 and second["timesteps"] == 3
    assert second["ann"] == pytest.approx(first["ann"])
    assert second["snn"] is not None and second["snn_finetuned"] is not None


def test_a_checkpoint_can_be_evaluated_at_another_T(make_config):
    first = run(make_config("stages=[train]", "bits=2", name="train"))
    later = run(make_config("stages=[convert]", "timesteps=7", f"ckpt_path={first['checkpoint']}", name="t7"))
    assert later["bits"] == 2 and later["timesteps"] == 7 and len(later["snn_per_step"]) == 7


def test_training_resumes_from_a_checkpoint(make_config):
    first = run(make_config("stages=[train]", name="one"))
    last = Path(first["checkpoint"]).parent / "last.ckpt"
    resumed = run(make_config("stages=[train]", "trainer.max_epochs=2", f"ckpt_path={last}", name="two"))
    final = torch.load(Path(resumed["output_dir"]) / "checkpoints/last.ckpt", weights_only=False)
    assert final["epoch"] == 1 and final["global_step"] == 6  # 3 steps of epoch 0 restored + 3 new


def test_timesteps_alone_selects_bits_and_inconsistent_values_fail_before_training(make_config):
    results = run(make_config("timesteps=7", "stages=[train,convert]"))
    assert results["bits"] == 3 and results["timesteps"] == 7 and len(results["snn_per_step"]) == 7
    with pytest.raises(SettingsError, match="bits=3 gives T=7"):
        run(make_config("bits=3", "timesteps=15", name="bad"))
    assert not (Path(make_config(name="bad").paths.output_dir) / "results.json").exists()


def test_convert_without_a_checkpoint_is_a_clear_error(make_config):
    with pytest.raises(SettingsError, match="give ckpt_path"):
        run(make_config("stages=[convert]"))
    with pytest.raises(SettingsError, match="does not exist"):
        run(make_config("stages=[convert]", "ckpt_path=/nonexistent.ckpt"))


def test_progressive_training_starts_from_another_bit_width(make_config, caplog):
    full = run(make_config("bits=32", "stages=[train]", name="fp"))
    assert full["bits"] == 32  # full precision, as the user wrote it
    caplog.set_level(logging.INFO)
    quant = run(make_config("bits=4", f"init_from={full['checkpoint']}", "stages=[train,convert]", name="q4"))
    assert quant["bits"] == 4 and quant["timesteps"] == 15
    # the float model has no weight-quantizer clips: they keep their initial values
    assert "weight_quantizer.alpha" in caplog.text


def test_seeded_runs_are_reproducible_on_cpu(make_config):
    a = run(make_config(name="a"))
    b = run(make_config(name="b"))
    for key in ("ann", "snn", "snn_finetuned", "spike_rate", "sops"):
        assert a[key] == b[key], key
    assert a["snn_per_step"] == b["snn_per_step"]


def test_wandb_logs_offline_without_credentials(make_config, monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    caplog.set_level(logging.WARNING)
    cfg = make_config("logger=wandb", "stages=[train,convert]")
    results = run(cfg)
    assert "wandb sync" in caplog.text
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    assert results["snn"] is not None
    # the CSV logger of the wandb config logged the same metric names
    metrics = (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "snn/test_acc" in metrics and "ann/test_acc" in metrics


def test_quant_settings_reach_the_quantized_modules(make_config):
    from hydra.utils import instantiate
    from torch import nn

    from fastsnn import QuantConv2d, QuantReLU

    cfg = make_config("quant.alpha_init=1.5", "quant.fused=true")
    assert cfg.quant.weight_bits == "same"  # model=vgg11 chooses quant=quantized_weights
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    net = instantiate(cfg.quant)(net, bits=3)
    relus = [m for m in net.modules() if isinstance(m, QuantReLU)]
    assert relus and all(m.fused and m.bits == 3 and m.alpha.item() == 1.5 for m in relus)
    assert isinstance(net[2], QuantConv2d) and net[2].weight_quantizer.bits == 3  # "same" as the activations
