"""What every data module shares: the base class with the loaders, and clear data errors.

Nothing in this project downloads data. Every data module checks its on-disk layout up front and
raises :class:`DataError` explaining what is missing, the layout it expects and where to get it.

:class:`DataModule` is the one base of the data modules of every task: a subclass says how to
build the dataset of a split (``_dataset(split)``) and, if not torch's default, how to batch it
(``collate_fn(split)``); the base builds each split once, on first use, and makes the loaders
with the same settings everywhere (``batch_size``, ``eval_batch_size``, ``num_workers``,
``pin_memory``; persistent workers).

Training data is drawn so that a run resumed from a checkpoint sees what the uninterrupted run saw
(:mod:`tasks.common.seeding`): :class:`EpochSampler` orders each epoch by (seed, epoch), and
:class:`SeededSamples` seeds the random generators from (seed, epoch, index) before a sample is
read and augmented, in whichever process, so ``num_workers`` does not change the numbers either.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tasks.common.seeding import ORDER, SAMPLE, derived_seed, seed_all

__all__ = [
    "DataError",
    "DataModule",
    "EpochSampler",
    "SPLITS",
    "SeededSamples",
    "data_error",
    "flip_probability",
    "make_loader",
    "require_paths",
]


class DataError(RuntimeError):
    """Raised when a data set is missing or malformed; the message says how to fix it."""


def data_error(
    dataset_name: str,
    problem: str,
    *,
    root: str | os.PathLike,
    layout: str,
    source: str,
) -> DataError:
    """Build a :class:`DataError` with the problem, the expected layout under ``root`` and the source."""
    indented = "\n".join("    " + line for line in layout.strip("\n").splitlines())
    message = (
        f"{dataset_name}: {problem}\n"
        f"  Expected layout under {root}:\n{indented}\n"
        f"  Source: {source}\n"
        f"  Nothing is downloaded automatically; obtain the data from the source above and "
        f"arrange it as shown."
    )
    return DataError(message)


def require_paths(
    root: str | os.PathLike,
    relative_paths: Iterable[str],
    dataset_name: str,
    layout: str,
    source: str,
) -> list[Path]:
    """Check that every ``root/<relative path>`` exists; raise :class:`DataError` for the first missing one.

    Returns the resolved paths in the given order.
    """
    root = Path(root).expanduser()
    paths = []
    for rel in relative_paths:
        path = root / rel
        if not path.exists():
            problem = f"required path not found: {path}"
            if not root.exists():
                problem += f" (the root directory {root} does not exist)"
            raise data_error(dataset_name, problem, root=root, layout=layout, source=source)
        paths.append(path)
    return paths


class EpochSampler(DistributedSampler):
    """This rank's share of a data set's indices, in an order that is a function of (seed, epoch).

    Yields ``(epoch, index)`` pairs for :class:`SeededSamples`: a loader worker cannot see the
    sampler's epoch, so each sample carries it. Lightning's fit loop calls :meth:`set_epoch` at
    each epoch start. It shards by rank as ``DistributedSampler`` does (the order padded to a
    multiple of ``replicas``, then every ``replicas``-th index from ``rank``); being one, Lightning
    uses it as it is under DDP instead of wrapping it in a sampler whose own epoch could not be set
    before a resumed run's first iterator (:meth:`DataModule._training_position`).
    """

    def __init__(self, size: int, seed: int, epoch: int = 0, rank: int = 0, replicas: int = 1) -> None:
        super().__init__(range(size), num_replicas=replicas, rank=rank, shuffle=True, seed=seed)
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derived_seed(ORDER, self.seed, self.epoch))
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        order = (order * math.ceil(self.total_size / max(len(order), 1)))[: self.total_size]
        return ((self.epoch, i) for i in order[self.rank :: self.num_replicas])


class SeededSamples(Dataset):
    """``dataset[index]`` for an ``(epoch, index)`` key, read with torch's (CPU), numpy's and
    ``random``'s generators seeded from (seed, epoch, index): a sample's augmentation is the same
    in the main process and in any worker, and in a resumed run. A collate function that draws
    (multi-scale batches) draws from the state the batch's last sample left, the same everywhere.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed_all(SAMPLE, self.seed, epoch, index)
        return self.dataset[index]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    sampler: EpochSampler | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    collate_fn=None,
) -> DataLoader:
    """DataLoader with the project's conventions (persistent workers when ``num_workers > 0``).

    ``sampler``: for training, the order of each epoch; the samples are then read through
    :class:`SeededSamples`. ``None``: the samples in order, as evaluation reads them.
    """
    if sampler is not None:
        dataset = SeededSamples(dataset, sampler.seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        collate_fn=collate_fn,  # None: torch's default
        # Re-spawning workers every epoch is slow for small epochs (CIFAR, digits).
        persistent_workers=num_workers > 0,
    )


def flip_probability(flip) -> float:
    """``flip``, the probability of a random horizontal flip, checked to be a number in [0, 1].

    A boolean is refused rather than read as 0 or 1: ``flip: true`` would mean "always flip".
    """
    if isinstance(flip, bool) or not isinstance(flip, (int, float)) or not 0.0 <= flip <= 1.0:
        raise ValueError(
            f"flip is the probability of a random horizontal flip, a number in [0, 1] "
            f"(0.5: the usual augmentation, 0: no flips); got {flip!r}"
        )
    return float(flip)


SPLITS = ("train", "val", "test")
# The splits a Lightning stage needs (any other stage, or None: all of them).
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class DataModule(L.LightningDataModule):
    """The base of every data module: one dataset per split, built on first use, and its loaders.

    Subclasses implement :meth:`_dataset` (``"train"``, ``"val"`` or ``"test"``; it may return
    ``self.dataset(other)`` to serve one split with another's data, e.g. validation on the test
    set) and override :meth:`collate_fn` when batches are not torch's default stacking. They set
    ``num_classes``, ``in_channels`` and ``image_size`` in ``__init__``, so that models can be
    built before ``setup``.

    Args:
        batch_size: training batch size; training batches are shuffled.
        eval_batch_size: validation / test batch size (``None``: ``batch_size``).
        num_workers: loader worker processes; with more than 0 they are persistent (kept across
            epochs). The numbers do not depend on it (:class:`SeededSamples`).
        pin_memory: page-locked batches, for faster copies to a GPU.

    ``seed`` (an attribute, 0 unless set; :func:`tasks.pipeline.build` sets the run's): the
    training order of each epoch and every sample's augmentation are functions of it.

    ``drop_last_train = True`` (a class attribute) drops the last incomplete training batch when
    the split holds more than one batch.
    """

    drop_last_train = False
    seed = 0

    def __init__(
        self, batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0, pin_memory: bool = False
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = bool(pin_memory)
        self.datasets: dict[str, Dataset] = {}

    # -- subclass hooks
    def _dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` (``"train"``, ``"val"`` or ``"test"``), with its transforms."""
        raise NotImplementedError

    def collate_fn(self, split: str):
        """How the loader of ``split`` makes a batch from samples; ``None``: torch's default."""
        return None

    # -- datasets
    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split``, built on first use and kept."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if split not in self.datasets:
            self.datasets[split] = self._dataset(split)
        return self.datasets[split]

    @property
    def train_dataset(self) -> Dataset | None:
        """The training dataset once built (by ``setup`` or a loader), else ``None``."""
        return self.datasets.get("train")

    @property
    def val_dataset(self) -> Dataset | None:
        return self.datasets.get("val")

    @property
    def test_dataset(self) -> Dataset | None:
        return self.datasets.get("test")

    def setup(self, stage: str | None = None) -> None:
        for split in _STAGE_SPLITS.get(stage, SPLITS):
            self.dataset(split)

    # -- loaders
    def _loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        train = split == "train"
        return make_loader(
            dataset,
            self.batch_size if train else self.eval_batch_size,
            sampler=EpochSampler(len(dataset), self.seed, *self._training_position()) if train else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=train and self.drop_last_train and len(dataset) > self.batch_size,
            collate_fn=self.collate_fn(split),
        )

    def _training_position(self) -> tuple[int, int, int]:
        """The epoch the trainer's fit loop runs next, this process's rank and the number of ranks.

        The epoch, because Lightning makes the first epoch's iterator (with workers: sends out its
        first indices) before it calls ``set_epoch``, and in a resumed run that epoch is not 0; it
        is the value Lightning then passes to ``set_epoch``. Without a trainer: (0, 0, 1).
        """
        trainer = self.trainer
        if trainer is None:
            return 0, 0, 1
        return trainer.fit_loop.epoch_progress.current.processed, trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
