"""What a run reports when stages are left out or fail, and where it says what it used instead."""

import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger

from fastsnn import QuantConv2d, QuantReLU
from tasks import pipeline
from tasks.finetune_stage import FineTuningStage
from tasks.pipeline import build, evaluate, run
from tasks.results import check_optimized_metric, optimized_value, record_snn
from tasks.settings import SettingsError


class RecordingLogger(Logger):
    """A logger that remembers the status it was closed with."""

    def __init__(self):
        super().__init__()
        self.status = None

    name, version = "recording", "0"

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def finalize(self, status):
        self.status = status


def test_per_step_keys_are_dropped_but_top5_is_kept():
    metrics = {"snn/test_acc": 0.9, "snn/test_acc_top5": 1.0, "snn/spike_rate": 0.2}
    metrics.update({f"snn/test_acc_t{t:02d}": t / 10 for t in (1, 2, 3)})
    results = {}
    record_snn(results, "snn", metrics, "acc", timesteps=3)
    assert results["snn_metrics"] == {"snn/test_acc": 0.9, "snn/test_acc_top5": 1.0, "snn/spike_rate": 0.2}
    assert results["snn_per_step"] == [0.1, 0.2, 0.3] and results["snn"] == 0.9 and results["spike_rate"] == 0.2


def test_each_snn_pass_keeps_its_own_per_step_curve():
    results = {}
    for label, scale in (("snn", 1), ("snn_finetuned", 2)):
        metrics = {
            f"{label}/test_acc": 0.3 * scale,
            **{f"{label}/test_acc_t{t:02d}": t * scale / 10 for t in (1, 2, 3)},
        }
        record_snn(results, label, metrics, "acc", timesteps=3)
    assert results["snn_per_step"] == [0.1, 0.2, 0.3]  # the converted SNN's, not overwritten
    assert results["snn_finetuned_per_step"] == [0.2, 0.4, 0.6]


def test_the_sweepers_metric_falls_back_to_the_last_stage_that_ran(caplog):
    trained_only = {"stages": ["train"], "ann": 0.8, "ann_metrics": {"ann/test_acc": 0.8}}
    assert optimized_value(trained_only, "ann/test_acc") == 0.8 and not caplog.records
    with caplog.at_level(logging.WARNING):
        assert optimized_value(trained_only, "snn_finetuned") == 0.8
    assert "optimized_metric=snn_finetuned was not produced by stages=['train']; returning ann=0.8000" in caplog.text
    converted = {**trained_only, "snn": 0.7}
    assert optimized_value(converted, "snn_finetuned") == 0.7  # the last stage that ran


def test_a_misspelt_optimized_metric_is_refused_before_any_work(make_config):
    check_optimized_metric("snn_finetuned/test_acc")
    with pytest.raises(SettingsError, match="optimized_metric='snn_finetund' is neither"):
        run(make_config("optimized_metric=snn_finetund"))


@pytest.mark.parametrize("failing_stage", [None, "convert", "finetune"])
def test_loggers_are_closed_as_failed_when_any_stage_fails(make_config, monkeypatch, failing_stage):
    logger = RecordingLogger()
    monkeypatch.setattr(pipeline, "make_loggers", lambda cfg: [logger])
    if failing_stage:

        def crash(exp, results):
            raise RuntimeError(f"{failing_stage} crashed")

        monkeypatch.setattr(pipeline, failing_stage, crash)
        with pytest.raises(RuntimeError, match="crashed"):
            run(make_config())
    else:
        run(make_config())
    assert logger.status == ("failed" if failing_stage else "success")


def test_a_failed_test_pass_leaves_the_module_in_ann_mode(make_config, monkeypatch):
    exp = build(make_config())

    def crash(*args, **kwargs):
        raise RuntimeError("test pass crashed")

    monkeypatch.setattr(exp.trainer, "test", crash)
    with pytest.raises(RuntimeError, match="test pass crashed"):
        evaluate(exp, "snn")
    assert exp.module.eval_label == "ann"


@pytest.mark.parametrize("checkpointing", ["callbacks.model_checkpoint=null", "+trainer.enable_checkpointing=false"])
def test_final_weights_are_announced(make_config, caplog, checkpointing):
    caplog.set_level(logging.WARNING)
    no_monitor = checkpointing.startswith("callbacks")  # Lightning then adds its own unranked ModelCheckpoint
    overrides = ["callbacks.model_checkpoint=null", checkpointing]
    results = run(make_config(*dict.fromkeys(overrides), "stages=[train,convert]"))
    assert results["snn"] is not None and ("checkpoint" in results) == no_monitor
    expected = "monitors no metric" if no_monitor else "checkpointing is off"
    assert expected in caplog.text and "use the final weights, not the best ones" in caplog.text


def test_a_run_that_converts_without_the_conversion_callback_stops_before_any_work(make_config, monkeypatch):
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(SettingsError, match="callbacks.snn_conversion is null"):
        run(make_config("callbacks.snn_conversion=null", "stages=[train,convert]"))
    # a run without the convert stage does not need it
    assert build(make_config("callbacks.snn_conversion=null", "stages=[train]")).conversion is None


def test_explicit_weight_bits_at_full_precision_are_announced(make_config, caplog):
    with caplog.at_level(logging.WARNING):
        net = build(make_config("bits=32", "stages=[train]", "quant.weight_bits=4")).net
    assert any(r.getMessage().startswith("quant.weight_bits=4 is ignored at bits=32") for r in caplog.records)
    assert any(isinstance(m, QuantReLU) for m in net.modules())
    assert not any(isinstance(m, QuantConv2d) for m in net.modules())


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_the_finetuning_stage_moves_the_whole_module_to_its_device(make_config, monkeypatch, device):
    exp = build(make_config("stages=[train,convert]"))
    results = {"time_s": {}}
    pipeline.train(exp, results)
    pipeline.evaluate_ann(exp, results)
    pipeline.convert(exp, results)  # Lightning's teardown leaves the module on the CPU after the test pass
    moved_to, to = [], exp.module.to
    monkeypatch.setattr(exp.module, "to", lambda d: (moved_to.append(torch.device(d)), to(d))[1])
    scored_on = []
    score = exp.module.score
    monkeypatch.setattr(
        exp.module,
        "score",
        lambda model, loader, n=None: (scored_on.append(exp.module.device), score(model, loader, n))[1],
    )
    stage = FineTuningStage(device=device, limit_batches=1, limit_val_batches=1, measure_batches=1, progress=False)
    reports = stage.run(exp.module, exp.datamodule)
    assert reports and moved_to == [torch.device(device)]
    assert scored_on and all(d.type == device for d in scored_on)  # validation batches go where the models are
    assert exp.module.device.type == device
    assert all(p.device.type == device for p in exp.module.snn.parameters())
