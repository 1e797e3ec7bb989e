"""A training run killed with SIGKILL and resumed from its last checkpoint ends where an uninterrupted
run ends: the data order and every random draw are functions of (seed, epoch, sample / batch)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler

from tasks.classification.data import DigitsDataModule
from tasks.classification.module import ClassificationModule
from tasks.common.data import EpochSampler, SeededSamples, make_loader

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------ the order


def _order(sampler, epoch: int) -> list:
    sampler.set_epoch(epoch)  # as Lightning's fit loop does at each epoch start
    return list(sampler)


def test_the_order_is_a_function_of_seed_and_epoch():
    first = _order(EpochSampler(50, seed=3), 4)
    assert first == _order(EpochSampler(50, seed=3), 4)  # a new sampler, as in a resumed run
    assert sorted(i for _, i in first) == list(range(50)) and {e for e, _ in first} == {4}
    assert [i for _, i in first] != [i for _, i in _order(EpochSampler(50, seed=3), 5)]
    assert [i for _, i in first] != [i for _, i in _order(EpochSampler(50, seed=4), 4)]


def test_every_rank_gets_a_disjoint_shard_of_a_new_order_each_epoch():
    for size in (40, 41):  # 41: one index padded, as DistributedSampler does, so that ranks have equal shares
        for epoch in (0, 1):
            shards = [_order(EpochSampler(size, seed=3, rank=rank, replicas=2), epoch) for rank in (0, 1)]
            assert len(shards[0]) == len(shards[1]) == len(EpochSampler(size, seed=3, replicas=2)) == 20 + size % 2
            assert {e for shard in shards for e, _ in shard} == {epoch}
            indices = [i for shard in shards for _, i in shard]
            assert sorted(set(indices)) == list(range(size)) and len(indices) - len(set(indices)) == size % 2
        assert _order(EpochSampler(size, 3, rank=0, replicas=2), 0) != _order(
            EpochSampler(size, 3, rank=0, replicas=2), 1
        )
    # Lightning wraps a training sampler in one of its own under DDP unless it is a DistributedSampler
    assert isinstance(EpochSampler(4, seed=3), DistributedSampler)


def test_the_training_loader_starts_at_the_epoch_the_fit_loop_runs_next():
    """Lightning makes a resumed run's first iterator before it calls set_epoch."""
    dm = DigitsDataModule(image_size=16)
    progress = SimpleNamespace(current=SimpleNamespace(processed=2))
    dm.trainer = SimpleNamespace(fit_loop=SimpleNamespace(epoch_progress=progress), global_rank=1, world_size=2)
    sampler = dm.train_dataloader().sampler
    assert (sampler.epoch, sampler.rank, sampler.num_replicas, sampler.seed) == (2, 1, 2, dm.seed)
    assert list(sampler) == _order(EpochSampler(len(dm.train_dataset), dm.seed, rank=1, replicas=2), 2)


# ------------------------------------------------------------------------------ the samples


class _Draws(Dataset):
    """Sample ``i``: ``[i, a torch draw, a numpy draw, a random draw]`` (the kinds of augmentation)."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.tensor([float(i), torch.rand(()).item(), np.random.rand(), random.random()])


def _epochs(loader, epochs=(0, 1)) -> list:
    """The batches of ``epochs``, one epoch after the other."""
    batches = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        batches += list(loader)
    return batches


def test_a_sample_draws_the_same_in_the_main_process_and_in_workers():
    in_main, in_workers = (
        _epochs(make_loader(_Draws(), 4, sampler=EpochSampler(12, 5), num_workers=n)) for n in (0, 2)
    )
    assert all(torch.equal(a, b) for a, b in zip(in_main, in_workers, strict=True))
    rows = [{int(row[0]): row[1:] for row in torch.cat(in_main[e * 3 : e * 3 + 3])} for e in (0, 1)]
    assert all(not torch.equal(rows[0][i], rows[1][i]) for i in range(12))  # each epoch draws anew


def _collate_with_draw(samples):
    return torch.stack(samples), torch.tensor(random.random())  # as multi-scale batches draw a size


def test_a_collate_function_draws_the_same_in_the_main_process_and_in_workers():
    def draws(workers):
        loader = make_loader(
            _Draws(), 4, sampler=EpochSampler(12, 5), num_workers=workers, collate_fn=_collate_with_draw
        )
        return [draw for _, draw in _epochs(loader)]

    assert draws(0) == draws(2) and len(set(draws(0))) == 6


def test_digits_augmentation_does_not_depend_on_num_workers():
    def batches(workers):
        dm = DigitsDataModule(image_size=16, batch_size=100, augment=True, num_workers=workers)
        dm.seed = 11
        dm.setup("fit")
        return _epochs(dm.train_dataloader(), epochs=(2,))

    for (x0, y0), (x2, y2) in zip(batches(0), batches(2), strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_seeded_samples_redraw_a_sample_from_its_key():
    dm = DigitsDataModule(image_size=16, augment=True)
    dm.setup("fit")
    samples = SeededSamples(dm.train_dataset, seed=11)
    assert torch.equal(samples[3, 9][0], samples[3, 9][0])
    assert any(not torch.equal(samples[3, 9][0], samples[e, 9][0]) for e in range(4, 8))  # shifted anew


# ------------------------------------------------------------------------------ the training steps


def test_a_training_step_draws_from_seed_epoch_and_batch():
    module = ClassificationModule(torch.nn.Linear(2, 3), num_classes=3)
    module.run_meta = {"seed": 42}

    def draw(batch_idx):
        module.on_train_batch_start(None, batch_idx)
        return torch.rand(5)

    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    module.run_meta = {}  # no run seed: the global stream goes on
    torch.manual_seed(0)
    expected = torch.rand(10)[5:]
    torch.manual_seed(0)
    torch.rand(5)
    assert torch.equal(draw(3), expected)


# ------------------------------------------------------------------------------ end to end

KILLED_AT = (2, 1)  # (epoch, batch): after the checkpoints of epochs 0 and 1, in the middle of epoch 2
EPOCHS = ["trainer.max_epochs=4", "trainer.limit_train_batches=8"]  # enough to learn: accuracies apart from chance
COMPARED = ("ann", "snn", "snn_finetuned", "snn_per_step", "snn_finetuned_per_step")


class SigkillAt(L.Callback):
    """Kills its own process with SIGKILL (no clean-up, as ``kill -9``) at the start of one training batch."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGKILL)


def _start(tmp_path: Path, out: Path, tiny: list[str], *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "FASTSNN_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # four epochs, the digits shifted at random: the shuffling and the augmentation both matter
    args = [*tiny, *EPOCHS, "data.augment=true", f"hydra.run.dir={out}", *overrides]
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output


@pytest.mark.slow
def test_a_killed_and_resumed_run_ends_where_an_uninterrupted_run_ends(tmp_path, tiny):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    epoch, batch = KILLED_AT
    kill = [
        "+callbacks.sigkill._target_=tests.framework.test_resume.SigkillAt",
        f"+callbacks.sigkill.epoch={epoch}",
        f"+callbacks.sigkill.batch={batch}",
    ]
    uninterrupted, interrupted = _start(tmp_path, whole, tiny), _start(tmp_path, killed, tiny, *kill)
    code, output = _finish(interrupted)
    assert code == -signal.SIGKILL, output[-3000:]
    assert not (killed / "results.json").exists()
    last = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == epoch - 1  # what the resumed run starts from
    code, output = _finish(uninterrupted)
    assert code == 0, output[-3000:]

    # resumed in the killed run's directory, so that its ModelCheckpoint keeps the best score so far;
    # with loader workers, which must not change the numbers either
    resumed = _start(tmp_path, killed, tiny, f"ckpt_path={killed / 'checkpoints' / 'last.ckpt'}", "data.num_workers=2")
    code, output = _finish(resumed)
    assert code == 0, output[-3000:]
    expected, got = (json.loads((d / "results.json").read_text()) for d in (whole, killed))
    assert {k: got[k] for k in COMPARED} == {k: expected[k] for k in COMPARED}
    assert Path(got["checkpoint"]).name == Path(expected["checkpoint"]).name  # the same best epoch
