"""Where the carried values live (``layerwise_finetune(cache=...)``): memory, disk or recomputed.

The three give the same weights; ``auto`` picks by the sizes it measured and says so in the plan
line; a cache directory that cannot be written, or has no room, stops before the first layer
with the path and the bytes needed; a write that fails half-way stops with the same.
"""

import errno
import logging
from types import SimpleNamespace

import pytest
import torch

import fastsnn
from fastsnn.convert import trace
from fastsnn.finetune import graph, sources, store
from fastsnn.finetune.store import CacheWriteError
from tests.core.test_finetune_linear import Concat, Residual, batches, converted, same_weights, tune

pytestmark = pytest.mark.usefixtures("one_thread")


def plan_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "fine-tuning plan" in r.getMessage()]


@pytest.mark.parametrize("make", [Residual, Concat], ids=["residual", "concat"])
def test_memory_disk_and_recomputed_give_the_same_weights(make, tmp_path, caplog):
    ann, snn = converted(make)
    data = batches()
    off, off_snn = tune(ann, snn, data, cache="off")
    memory, memory_snn = tune(ann, snn, data, cache="memory")
    with caplog.at_level(logging.INFO, logger="fastsnn.finetune"):
        disk, disk_snn = tune(ann, snn, data, cache="disk", cache_dir=str(tmp_path / "cache"))
    assert off == memory == disk
    assert same_weights(memory_snn, off_snn) and same_weights(disk_snn, off_snn)
    assert not same_weights(disk_snn, snn)
    (line,) = plan_lines(caplog)
    assert "on disk" in line and str(tmp_path / "cache") in line
    assert not (tmp_path / "cache").exists()  # its files are removed at the end


def test_the_disk_holds_the_spike_trains_as_int8_files(tmp_path):
    ann, snn = converted(Residual)
    tunables = graph._tunable_layers(snn)
    ann_gm = trace(ann)
    disk = store._OnDisk(tmp_path / "cache", ann_gm, torch.device("cpu"), need=0)
    frontier = sources._Frontier(snn, ann_gm, tunables, [x for x, _ in batches(n=2)], 1, None, disk)
    frontier.advance(tunables[0])
    files = sorted(disk.root.iterdir())
    assert [f.name for f in files] == ["batch_0000000.pt", "batch_0000001.pt"]
    state = torch.load(files[0], weights_only=True)
    assert state["values"] and all(v["codes"].dtype == torch.int8 for v in state["values"].values())
    assert state["ann"]["done"] > 0  # the ANN's paused run, past the first layer's target
    frontier.close()
    assert not (tmp_path / "cache").exists()


def test_auto_takes_memory_then_disk_then_recomputation_and_says_why(tmp_path, caplog):
    ann, snn = converted(Residual)
    data = batches()
    with caplog.at_level(logging.INFO, logger="fastsnn.finetune"):
        tune(ann, snn, data, cache_dir=str(tmp_path))
        tune(ann, snn, data, cache_budget=1, cache_dir=str(tmp_path))
        tune(ann, snn, data, cache_budget=1)
    memory, disk, off = plan_lines(caplog)
    assert "in memory" in memory and "on disk" in disk and "recomputed for every layer" in off
    assert "no cache_dir" in off and "cache_budget" in off
    layers = len(graph._tunable_layers(snn))
    assert f"{layers} layers x 1 epoch(s) on {len(data)} batches (24 samples) per process, 1 process(es)" in memory
    assert "SNN passes" in memory
    levels = [r.levelno for r in caplog.records if "fine-tuning plan" in r.getMessage()]
    assert levels == [logging.INFO, logging.INFO, logging.WARNING]  # recomputing was not asked for


def test_a_cache_dir_that_cannot_be_written_stops_before_the_first_layer(tmp_path):
    ann, snn = converted(Residual)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    tuned, ended = snn, []
    before = {k: v.clone() for k, v in snn.state_dict().items()}
    with pytest.raises(CacheWriteError, match=f"{blocker / 'cache'} cannot be written.*GiB"):
        fastsnn.layerwise_finetune(
            ann, tuned, batches(), cache="disk", cache_dir=str(blocker / "cache"), on_layer_end=ended.append
        )
    assert ended == [] and all(torch.equal(v, tuned.state_dict()[k]) for k, v in before.items())


def test_bad_cache_settings_are_refused_before_the_first_layer():
    ann, snn = converted(Residual)
    with pytest.raises(ValueError, match="cache must be one of"):
        fastsnn.layerwise_finetune(ann, snn, batches(), cache=True)
    with pytest.raises(ValueError, match="cache='disk' needs cache_dir"):
        fastsnn.layerwise_finetune(ann, snn, batches(), cache="disk")


def test_a_disk_without_room_stops_before_the_first_layer(tmp_path, monkeypatch):
    ann, snn = converted(Residual)
    monkeypatch.setattr(store.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 10})())
    ended = []
    with pytest.raises(CacheWriteError, match=f"need about .* in {tmp_path}, 10 B are free there"):
        fastsnn.layerwise_finetune(
            ann, snn, batches(), cache="disk", cache_dir=str(tmp_path), on_layer_end=ended.append
        )
    assert ended == []


def test_a_write_that_fails_names_the_file_and_the_bytes_needed(tmp_path, monkeypatch):
    ann, snn = converted(Residual)
    writes, real_save = [], torch.save

    def full_disk(obj, path):
        writes.append(path)
        if len(writes) > len(batches()):  # the first layer's advance
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(store.torch, "save", full_disk)
    ended = []
    with pytest.raises(CacheWriteError, match=r"batch_0000000\.pt failed .*No space left.*need about") as info:
        fastsnn.layerwise_finetune(
            ann, snn, batches(), cache="disk", cache_dir=str(tmp_path), on_layer_end=ended.append
        )
    assert info.value.errno == errno.ENOSPC
    assert ended == [] and list(tmp_path.iterdir()) == []  # the first layer was not finished; no files left


def test_the_stage_says_how_to_go_on_when_its_cache_cannot_be_written(tmp_path, monkeypatch):
    from tasks.finetune_stage import FineTuningStage
    from tests.helpers import StageData, StageTask

    ann, snn = converted(Residual)
    data = StageData(batches())
    full_disk = {"writes": 0}
    real_save = torch.save

    def save(obj, path):  # the disk fills up while the third layer's values are written
        full_disk["writes"] += 1
        if full_disk["writes"] > 2 * len(data.batches):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(store, "torch", SimpleNamespace(**vars(torch) | {"save": save}))
    kwargs = {"device": "cpu", "progress": False, "lr": 0.01, "cache": "disk", "cache_dir": str(tmp_path / "cache")}
    stage = FineTuningStage(checkpoint_dir=str(tmp_path / "ckpt"), **kwargs)
    with pytest.raises(
        CacheWriteError, match="finetune.cache_dir or finetune.cache=off.*finetune.resume=.*finetune_last"
    ):
        stage.run(StageTask(ann, snn), data)
    monkeypatch.setattr(store, "torch", torch)
    last = tmp_path / "ckpt" / "finetune_last.pt"
    assert torch.load(last, weights_only=True)["next_layer"] == 1  # the first layer was finished
    resumed = StageTask(ann, snn)
    FineTuningStage(resume=str(last), **kwargs).run(resumed, data)
    uninterrupted = StageTask(ann, snn)
    FineTuningStage(**kwargs).run(uninterrupted, data)
    assert same_weights(resumed.snn, uninterrupted.snn)


def test_a_cache_dir_removed_by_another_process_in_between_is_made_again(tmp_path, monkeypatch):
    """Processes share cache_dir: one may remove the directory it made (its check done) between
    another's mkdir and its own directory's creation."""
    real_mkdtemp, calls = store.tempfile.mkdtemp, []

    def racing_mkdtemp(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            (tmp_path / "cache").rmdir()  # the other process's cleanup
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        return real_mkdtemp(**kwargs)

    monkeypatch.setattr(store.tempfile, "mkdtemp", racing_mkdtemp)
    root, made = store._own_directory(tmp_path / "cache", need=0)
    assert root.parent == tmp_path / "cache" and root.is_dir() and made and len(calls) == 2
