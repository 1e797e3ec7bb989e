"""The fine-tuning stage's phases: layer-wise, then the network-level output phase (docs/method.md §4.1).

``finetune.phases`` picks them; the output phase's settings are ``finetune.output.*``; each
phase's time goes to results (``time_s.finetune_<phase>``, the validation gate's share as
``time_s.finetune_gate``, via ``FineTuningStage.record``); a
stage killed inside the output phase resumes from its checkpoint and ends with the weights of an
uninterrupted one; bad phases or keys are refused when the stage is made.
"""

import pytest
import torch

import tasks.finetune_stage as stage_module
from tasks.finetune_stage import FineTuningStage
from tasks.pipeline import run
from tests.core.test_finetune_linear import Residual, batches, converted, same_weights
from tests.helpers import StageData, StageTask

pytestmark = pytest.mark.usefixtures("one_thread")


OUTPUT = {"epochs": 2, "lr": 0.01, "checkpoint_every": 2}


def stage(tmp_path, **kwargs) -> FineTuningStage:
    kwargs = {"phases": ["layerwise", "output"], "output": OUTPUT, "measure_batches": 2, "lr": 0.01, **kwargs}
    return FineTuningStage(device="cpu", progress=False, checkpoint_dir=str(tmp_path), **kwargs)


def test_the_output_phase_runs_after_the_layers_and_its_time_is_recorded(tmp_path):
    ann, snn = converted(Residual)
    task, data = StageTask(ann, snn), StageData(batches(n=5))
    layers_only = StageTask(ann, snn)
    s = stage(tmp_path / "both")
    reports = s.run(task, data)
    FineTuningStage(device="cpu", progress=False, measure_batches=2, lr=0.01).run(layers_only, data)
    assert len(reports) >= 4 and len(s.output_reports) == 2
    assert not same_weights(task.snn, layers_only.snn)  # the output phase changed the weights further
    results = {"time_s": {"finetune": 1.0}}
    s.record(results)
    times = results["time_s"]
    assert times.keys() == {"finetune", "finetune_layerwise", "finetune_output", "finetune_gate"}
    assert 0 < times["finetune_gate"] < times["finetune_layerwise"] + times["finetune_output"]
    assert [r["epoch"] for r in results["finetune_output"]] == [0, 1]
    state = torch.load(tmp_path / "both" / "finetune_last.pt", weights_only=True)
    assert state["next_layer"] == len(reports) and state["output"]["epoch"] == 2


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", [1, 3, 4], ids=["inside-epoch-1", "between-epochs", "inside-epoch-2"])
def test_a_stage_killed_in_the_output_phase_resumes_where_it_was(tmp_path, monkeypatch, kill_at):
    ann, snn = converted(Residual)
    data = StageData(batches(n=5))
    full = StageTask(ann, snn)
    stage(tmp_path / "full").run(full, data)

    saves, save = [], stage_module._atomic_save

    def dying_save(obj, path):
        save(obj, path)
        saves.append(obj["output"] is not None)
        if sum(saves) == kill_at:  # the kill_at-th checkpoint of the output phase is on disk
            raise Killed

    monkeypatch.setattr(stage_module, "_atomic_save", dying_save)
    with pytest.raises(Killed):
        stage(tmp_path / "killed").run(StageTask(ann, snn), data)
    monkeypatch.setattr(stage_module, "_atomic_save", save)
    resumed = StageTask(ann, snn)
    s = stage(tmp_path / "resumed", resume=str(tmp_path / "killed" / "finetune_last.pt"))
    s.run(resumed, data)
    assert "layerwise" not in s.times  # the layers were done: not tuned again
    assert same_weights(resumed.snn, full.snn)
    assert len(s.output_reports) == 2


def test_the_output_phase_may_take_fewer_batches_than_the_layers(tmp_path):
    ann, snn = converted(Residual)
    seen = []

    def progress(iterable, description):
        items = list(iterable)
        seen.append((description.split(" ")[0], len(items)))
        return items

    s = stage(tmp_path, limit_batches=4, output={**OUTPUT, "limit_batches": 2})
    s._progress = progress
    s.run(StageTask(ann, snn), StageData(batches(n=5)))
    assert {n for phase, n in seen if phase == "layer"} == {4} and [n for p, n in seen if p == "network"] == [2, 2]


def test_bad_phases_and_output_keys_are_refused():
    with pytest.raises(ValueError, match="the phases are"):
        FineTuningStage(phases=["layerwise", "network"])
    with pytest.raises(ValueError, match="the output keys"):
        FineTuningStage(output={"learning_rate": 0.1})
    assert FineTuningStage(phases=["output", "layerwise"]).phases == ["layerwise", "output"]


@pytest.mark.slow
def test_a_run_with_the_output_phase(make_config):
    results = run(make_config("finetune.phases=[layerwise,output]", "finetune.output.loss=task"))
    assert results["snn_finetuned"] is not None and results["finetune_layers"]
    assert len(results["finetune_output"]) == 1 and results["time_s"]["finetune_output"] > 0
